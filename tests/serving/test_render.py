"""The prediction log's rendering of a request's inputs (serving/protocol/render.py)."""

from __future__ import annotations

import base64
import hashlib
import struct
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson
import pytest

from serving.protocol import InferRequest, RequestInput, decode_infer_request
from serving.protocol.render import MAX_RENDERED_CHARS, MAX_RENDERED_ELEMENTS, render_inputs


def request(*tensors: tuple[str, str, Any]) -> InferRequest:
    inputs = []
    for name, datatype, data in tensors:
        array = np.asarray(data, dtype=object if datatype == "BYTES" else None)
        inputs.append(RequestInput(name, datatype, array.shape, array, {}))
    return InferRequest(None, inputs, None, {})


def rendered(req: InferRequest, features: Any = None) -> dict[str, Any]:
    text = render_inputs(req, features)
    value = orjson.loads(text)
    assert isinstance(value, dict)
    return value


def test_a_tabular_row_is_compact_structured_json() -> None:
    row = (np.arange(30, dtype=np.float32) * 0.5).reshape(1, 30)
    text = render_inputs(request(("input", "FP32", row)))
    assert text == (
        '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,30],"data":['
        + ",".join(str(v * 0.5) for v in range(30))
        + "]}]}"
    )
    # what the JSON decoder made of a request renders as its own data again
    body = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30],
                                     "data": row.tolist()}]})
    assert render_inputs(decode_infer_request(body)) == text


def test_features_follow_the_inputs() -> None:
    req = request(("x", "INT64", [[1, 2]]))
    features = MappingProxyType({"customer_id": 42, "spend": np.float32(1.5), "missing": None})
    assert rendered(req, features) == {
        "inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]}],
        "features": {"customer_id": 42, "spend": 1.5, "missing": None},
    }
    assert "features" not in rendered(req)


def test_every_datatype_renders_its_values() -> None:
    values: dict[str, Any] = {
        "BOOL": np.array([True, False]), "INT8": np.array([-128, 127], dtype=np.int8),
        "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "FP16": np.array([1.5, -0.25], dtype=np.float16),
        "FP64": np.array([0.1, -2.5], dtype=">f8"),  # big-endian in memory
    }
    out = rendered(request(*[(dt, dt, array) for dt, array in values.items()]))
    assert [t["data"] for t in out["inputs"]] == [
        [True, False], [-128, 127], [0, 2**64 - 1], [1.5, -0.25], [0.1, -2.5]
    ]


def test_non_finite_floats_are_spelled_out() -> None:
    out = rendered(request(("x", "FP32", np.array([np.nan, np.inf, -np.inf, 1.0], "f4"))))
    assert out["inputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 1.0]


def test_bytes_as_text_or_base64() -> None:
    out = rendered(request(("s", "BYTES", [b"caf\xc3\xa9", b""])))
    assert out["inputs"][0]["data"] == ["café", ""] and "encoding" not in out["inputs"][0]
    out = rendered(request(("b", "BYTES", [b"\xff\x00", b"ok"])))
    entry = out["inputs"][0]
    assert entry["encoding"] == "base64"
    assert [base64.b64decode(v) for v in entry["data"]] == [b"\xff\x00", b"ok"]


def test_a_large_tensor_is_summarized_by_digest_and_statistics() -> None:
    at_limit = np.zeros(MAX_RENDERED_ELEMENTS, dtype=np.int16)
    assert "data" in rendered(request(("x", "INT16", at_limit)))["inputs"][0]
    big = np.arange(MAX_RENDERED_ELEMENTS + 1, dtype=">i4").reshape(1, -1)
    entry = rendered(request(("x", "INT32", big)))["inputs"][0]
    little = big.astype("<i4").tobytes()
    assert entry == {
        "name": "x", "datatype": "INT32", "shape": [1, MAX_RENDERED_ELEMENTS + 1],
        "summary": {"elements": MAX_RENDERED_ELEMENTS + 1,
                    "sha256": hashlib.sha256(little).hexdigest(),
                    "min": 0, "max": MAX_RENDERED_ELEMENTS,
                    "mean": MAX_RENDERED_ELEMENTS / 2},
    }
    flags = np.ones(MAX_RENDERED_ELEMENTS + 2, dtype=bool)
    flags[0] = False
    summary = rendered(request(("f", "BOOL", flags)))["inputs"][0]["summary"]
    assert summary["true"] == MAX_RENDERED_ELEMENTS + 1 and "mean" not in summary
    words = [b"w"] * (MAX_RENDERED_ELEMENTS + 1)
    summary = rendered(request(("w", "BYTES", words)))["inputs"][0]["summary"]
    wire = b"".join(struct.pack("<I", 1) + w for w in words)
    assert summary == {"elements": len(words), "sha256": hashlib.sha256(wire).hexdigest()}
    floats = np.full(MAX_RENDERED_ELEMENTS + 1, np.nan)
    summary = rendered(request(("n", "FP64", floats)))["inputs"][0]["summary"]
    assert summary["min"] == summary["mean"] == "NaN"


@pytest.mark.parametrize("count", [1, 3, 40])
def test_the_whole_text_stays_within_its_budget(count: int) -> None:
    # each tensor is listed (at the element threshold), but together they are too long
    tensors = [(f"t{i}", "FP64", np.random.default_rng(i).random(MAX_RENDERED_ELEMENTS))
               for i in range(count)]
    text = render_inputs(request(*tensors))
    assert len(text) <= MAX_RENDERED_CHARS
    out = orjson.loads(text)
    assert [t["name"] for t in out["inputs"]] == [name for name, _, _ in tensors]
    assert all("summary" in t for t in out["inputs"])
    small = render_inputs(request(("a", "INT8", [1, 2]), *tensors[:1]))
    assert orjson.loads(small)["inputs"][0]["data"] == [1, 2]  # the small one stays listed
