"""Differential tests of the protocol core's adapters: JSON, binary extension, gRPC.

The same request, written in each encoding (gRPC both with typed ``contents`` and with
``raw_input_contents``), must decode to the same :class:`InferRequest`; the same malformed
request must fail with the same 400 in every encoding that can express it; and the same outputs,
encoded by each adapter, must read back equal (with tritonclient's own response readers).

The only wording an encoding may add to a shared message is where raw bytes came from: the
binary extension's ``binary_data_size N`` and gRPC's ``raw_input_contents of N bytes``.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb

from registry.errors import InvalidRequest
from registry.signature import OIP_TO_NUMPY
from serving.protocol import (
    DecodeLimits,
    InferRequest,
    decode_binary_request,
    decode_infer_request,
    decode_model_infer_request,
    encode_binary_response,
    encode_infer_response,
    encode_model_infer_response,
)

LIMITS = DecodeLimits(max_tensor_elements=1000, max_json_depth=16)

CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat; BYTES as str
    raw: bytes | None = None  # raw bytes to send instead of the values' (malformed cases)


@dataclass
class Request:
    inputs: list[Tensor]
    outputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


# --------------------------------------------------------------------------------------------
# encoders


def raw_of(tensor: Tensor) -> bytes:
    if tensor.raw is not None:
        return tensor.raw
    if tensor.datatype == "BYTES":
        items = [v.encode("utf-8") for v in tensor.values]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    dtype = OIP_TO_NUMPY.get(tensor.datatype, np.dtype(np.uint8))
    return np.array(tensor.values, dtype=dtype).astype(dtype.newbyteorder("<")).tobytes()


def json_body(request: Request) -> bytes:
    body: dict[str, Any] = {"inputs": [
        {"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.values}
        for t in request.inputs
    ]}
    if request.id is not None:
        body["id"] = request.id
    if request.outputs:
        body["outputs"] = [{"name": n, "parameters": p} for n, p in request.outputs]
    if request.parameters:
        body["parameters"] = request.parameters
    return orjson.dumps(body)


def decode_json(request: Request) -> InferRequest:
    return decode_infer_request(json_body(request), LIMITS)


def decode_binary(request: Request) -> InferRequest:
    header = orjson.loads(json_body(request))
    blobs = [raw_of(t) for t in request.inputs]
    for item, blob in zip(header["inputs"], blobs, strict=True):
        del item["data"]
        item["parameters"] = {"binary_data_size": len(blob)}
    text = orjson.dumps(header)
    return decode_binary_request(text + b"".join(blobs), len(text), LIMITS)


def grpc_message(request: Request) -> Any:
    message = pb.ModelInferRequest(model_name="m", id=request.id or "")
    for name, value in request.parameters.items():
        kind = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
        setattr(message.parameters[name], kind, value)
    for name, parameters in request.outputs:
        output = message.outputs.add(name=name)
        for key, value in parameters.items():
            output.parameters[key].string_param = value
    for tensor in request.inputs:
        message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    return message


def decode_grpc_typed(request: Request) -> InferRequest:
    message = grpc_message(request)
    for item, tensor in zip(message.inputs, request.inputs, strict=True):
        values = tensor.values
        if tensor.datatype == "BYTES":
            values = [v.encode("utf-8") for v in values]
        getattr(item.contents, CONTENTS.get(tensor.datatype, "fp32_contents")).extend(values)
    return decode_model_infer_request(message, LIMITS)


def decode_grpc_raw(request: Request) -> InferRequest:
    message = grpc_message(request)
    message.raw_input_contents.extend(raw_of(t) for t in request.inputs)
    return decode_model_infer_request(message, LIMITS)


Decoder = Callable[[Request], InferRequest]
DECODERS: dict[str, Decoder] = {
    "json": decode_json, "binary": decode_binary,
    "grpc-typed": decode_grpc_typed, "grpc-raw": decode_grpc_raw,
}
ALL = tuple(DECODERS)
RAW = ("binary", "grpc-raw")
VALUES = ("json", "grpc-typed")


# --------------------------------------------------------------------------------------------
# the same tensors, every encoding

SAMPLES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, True, False, False],
    "INT8": [-128, 127, 0, -1, 5, 6], "INT16": [-32768, 32767, 0, 1, 2, 3],
    "INT32": [-(2**31), 2**31 - 1, 0, 7, 8, 9], "INT64": [-(2**63), 2**63 - 1, 0, 1, 2, 3],
    "UINT8": [0, 255, 1, 2, 3, 4], "UINT16": [0, 65535, 1, 2, 3, 4],
    "UINT32": [0, 2**32 - 1, 1, 2, 3, 4], "UINT64": [0, 2**64 - 1, 1, 2, 3, 4],
    "FP16": [0.5, -1.25, 65504.0, 0.0, -0.0, 3.0],
    "FP32": [0.5, -1.25, 2.0**127, 2.0**-126, 0.0, 2.0],
    "FP64": [0.1, -2.5, 1e308, 5e-324, 0.0, 1.0],
    "BYTES": ["a", "", "é€", "x y", "0", "\u0000z"],
}


def valid_requests() -> list[Any]:
    cases = [
        pytest.param(Request([Tensor("x", dt, [2, 3], values)]), id=dt)
        for dt, values in SAMPLES.items()
    ]
    cases.append(pytest.param(Request([
        Tensor("cube", "FP32", [2, 2, 2], [float(i) for i in range(8)]),
        Tensor("empty", "INT64", [0, 3], []),
        Tensor("flags", "BOOL", [1, 1, 1, 2], [True, False]),
        Tensor("words", "BYTES", [1, 2], ["hello", "wörld"]),
        Tensor("half", "FP16", [2, 1], [1.5, -2.0]),
    ], outputs=[("label", {"tag": "a"}), ("probabilities", {})],
        parameters={"note": "x", "timeout": 2500, "flag": True}, id="r-1"), id="mixed"))
    return cases


def assert_same(got: InferRequest, want: InferRequest) -> None:
    assert got.id == want.id and got.parameters == want.parameters
    assert [(o.name, o.parameters) for o in got.outputs or []] == [
        (o.name, o.parameters) for o in want.outputs or []
    ]
    assert [(t.name, t.datatype, t.shape) for t in got.inputs] == [
        (t.name, t.datatype, t.shape) for t in want.inputs
    ]
    for mine, theirs in zip(got.inputs, want.inputs, strict=True):
        assert mine.data.dtype == theirs.data.dtype and mine.data.shape == theirs.data.shape
        if mine.datatype == "BYTES":
            assert mine.data.tolist() == theirs.data.tolist()
        else:
            np.testing.assert_array_equal(mine.data, theirs.data, strict=True)
            assert mine.data.tobytes() == theirs.data.tobytes()  # -0.0 stays -0.0


@pytest.mark.parametrize("request_", valid_requests())
def test_every_encoding_decodes_to_the_same_request(request_: Request) -> None:
    want = decode_json(request_)
    expected = {t.name: t for t in request_.inputs}
    for tensor in want.inputs:
        source = expected[tensor.name]
        assert tensor.data.shape == tuple(source.shape)
        assert tensor.data.dtype == OIP_TO_NUMPY[source.datatype]
        values = [v.encode() for v in source.values] if source.datatype == "BYTES" else (
            source.values)
        assert tensor.data.ravel().tolist() == values
    for encoding in ("binary", "grpc-raw", "grpc-typed"):
        if encoding == "grpc-typed" and any(t.datatype == "FP16" for t in request_.inputs):
            continue  # FP16 has no typed contents field: raw only
        assert_same(DECODERS[encoding](request_), want)


# --------------------------------------------------------------------------------------------
# the same error, every encoding that can express it

# A raw-data source is the one part of a message an encoding names its own way.
_SOURCE = re.compile(r"binary_data_size \d+|raw_input_contents of \d+ bytes")


def canonical(message: str) -> str:
    return _SOURCE.sub("<raw data>", message)


def x(datatype: str = "FP32", shape: list[int] | None = None, values: list[Any] | None = None,
      name: str = "x", raw: bytes | None = None) -> Tensor:
    return Tensor(name, datatype, [2] if shape is None else shape,
                  [1.0, 2.0] if values is None else values, raw)


NEEDS = "input 'x': shape [2, 2] needs 4 values, got 3"
SIZE = "input 'x': <raw data> does not match shape [2, 2] of FP32 (4 elements x 4 bytes = 16 bytes)"
MALFORMED: list[tuple[str, Request, tuple[str, ...], str]] = [
    ("count-for-shape", Request([x(shape=[2, 2], values=[1.0, 2.0, 3.0])]), VALUES, NEEDS),
    ("count-for-shape-raw", Request([x(shape=[2, 2], values=[1.0, 2.0, 3.0])]), RAW, SIZE),
    ("raw-size", Request([x("INT64", [3], [1, 2, 3], raw=b"\0" * 20)]), RAW,
     "input 'x': <raw data> does not match shape [3] of INT64 (3 elements x 8 bytes = 24 bytes)"),
    ("unknown-datatype", Request([x("FP8")]), ALL,
     "input 'x': 'datatype' must be one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, "
     'INT32, INT64, FP16, FP32, FP64, BYTES, got "FP8"'),
    ("negative-dim", Request([x(shape=[-1, 2])]), ALL,
     "input 'x': 'shape' must be a list of non-negative integers, got [-1,2]"),
    ("duplicate-input", Request([x(), x()]), ALL, "input 'x' appears more than once"),
    ("empty-name", Request([x(name="")]), ALL,
     "inputs[0]: 'name' must be a non-empty string, got \"\""),
    ("too-many-elements", Request([x(shape=[100, 100], values=[])]), ALL,
     "input 'x': shape [100,100] has 10000 elements, more than the limit of 1000 per tensor "
     "(max_tensor_elements)"),
    ("dimension-over-limit", Request([x(shape=[5000, 0], values=[])]), ALL,
     "input 'x': dimension 5000 of shape [5000,0] exceeds the limit of 1000 elements per "
     "tensor (max_tensor_elements)"),
    ("rank", Request([x(shape=[1] * 33, values=[1.0])]), ALL,
     "input 'x': 'shape' has 33 dimensions; at most 32 are allowed"),
    ("no-inputs", Request([]), ALL,
     "'inputs' must be a non-empty list of tensors, got an empty list"),
    ("bytes-past-end", Request([x("BYTES", [2], ["a", "b"], raw=struct.pack("<I", 1) + b"a"
                                  + struct.pack("<I", 99) + b"abc")]),
     RAW, "input 'x': BYTES element 1 declares 99 bytes but only 3 are left in <raw data>"),
    ("bytes-prefix-cut", Request([x("BYTES", [2], ["a", "b"],
                                   raw=struct.pack("<I", 1) + b"a" + b"\x05\x00")]),
     RAW, "input 'x': BYTES element 1 has a truncated length prefix (2 of 4 bytes left in "
     "<raw data>)"),
    ("bytes-left-over", Request([x("BYTES", [1], ["a"], raw=struct.pack("<I", 1) + b"abc")]),
     RAW, "input 'x': <raw data> has 2 bytes left over after its 1 BYTES elements"),
    ("bool-octet", Request([x("BOOL", [2], [True, False], raw=b"\x01\x07")]), RAW,
     "input 'x': BOOL bytes must be 0 or 1, got 7 at index 1"),
    ("int8-range", Request([x("INT8", [2], [1, 300])]), VALUES,
     "input 'x': value 300 out of range for INT8 (-128 to 127) at index 1"),
    ("duplicate-output", Request([x()], outputs=[("o", {}), ("o", {})]), ALL,
     "output 'o' is requested more than once"),
    ("empty-output-name", Request([x()], outputs=[("", {})]), ALL,
     "outputs[0]: 'name' must be a non-empty string, got \"\""),
]


@pytest.mark.parametrize(
    ("request_", "encodings", "message"),
    [pytest.param(r, e, m, id=i) for i, r, e, m in MALFORMED],
)
def test_every_encoding_gives_the_same_error(
    request_: Request, encodings: tuple[str, ...], message: str
) -> None:
    got: dict[str, str] = {}
    for encoding in encodings:
        with pytest.raises(InvalidRequest) as info:
            DECODERS[encoding](request_)
        assert info.value.status_code == 400
        got[encoding] = canonical(info.value.message)
    assert got == dict.fromkeys(encodings, message)


def test_raw_sources_are_named_per_encoding() -> None:
    request = Request([x(shape=[2, 2], values=[1.0, 2.0, 3.0])])
    with pytest.raises(InvalidRequest, match=r"^input 'x': binary_data_size 12 does not"):
        decode_binary(request)
    with pytest.raises(InvalidRequest, match=r"^input 'x': raw_input_contents of 12 bytes does"):
        decode_grpc_raw(request)


# --------------------------------------------------------------------------------------------
# the same outputs, every encoder

OUTPUTS: list[tuple[str, np.ndarray]] = [
    ("f32", np.array([[0.5, -1.25, 3.0]], dtype=np.float32)),
    ("f64be", np.array([1e308, -0.0], dtype=">f8")),
    ("f16", np.array([[1.5], [65504.0]], dtype=np.float16)),
    ("i64", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
    ("u64", np.array([2**64 - 1, 0], dtype=np.uint64)),
    ("i8", np.array([[[-128, 127]]], dtype=np.int8)),
    ("flags", np.array([True, False, True])),
    ("words", np.array([b"a", "é".encode(), b""], dtype=np.object_)),
    ("text", np.array(["x", "yz"])),
    ("empty", np.zeros((0, 2), dtype=np.float32)),
]


def expected_output(array: np.ndarray) -> tuple[str, list[int], list[Any]]:
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
        return "BYTES", list(array.shape), values
    datatype = {np.dtype(v): k for k, v in OIP_TO_NUMPY.items()}[array.dtype.newbyteorder("=")]
    return datatype, list(array.shape), array.ravel().tolist()


def read_json(body: bytes) -> dict[str, tuple[str, list[int], list[Any]]]:
    outputs = orjson.loads(body)["outputs"]
    return {
        o["name"]: (o["datatype"], o["shape"], [v.encode() for v in o["data"]]
                    if o["datatype"] == "BYTES" else o["data"])
        for o in outputs
    }


def read_triton(result: Any, datatypes: dict[str, str]) -> dict[str, Any]:
    read = {}
    for name, datatype in datatypes.items():
        array = result.as_numpy(name)
        values = array.ravel().tolist()
        if datatype == "BYTES":  # tritonclient reads JSON BYTES as str
            values = [v.encode() if isinstance(v, str) else v for v in values]
        read[name] = (datatype, list(array.shape), values)
    return read


def test_every_encoder_writes_the_same_outputs() -> None:
    want = {name: expected_output(array) for name, array in OUTPUTS}
    datatypes = {name: value[0] for name, value in want.items()}
    got_json = read_json(encode_infer_response("m", "1", "r", OUTPUTS))
    assert got_json == want
    for flags in ([True] * len(OUTPUTS), [i % 2 == 0 for i in range(len(OUTPUTS))]):
        body, length = encode_binary_response("m", "1", "r", OUTPUTS, flags)
        result = triton_http.InferResult.from_response_body(body, header_length=length)
        assert read_triton(result, datatypes) == want
        assert [o["datatype"] for o in result.get_response()["outputs"]] == list(
            datatypes.values())
    response = encode_model_infer_response("m", 1, "r", OUTPUTS)
    assert [o.datatype for o in response.outputs] == list(datatypes.values())
    assert read_triton(triton_grpc.InferResult(response), datatypes) == want
    # the non-finite floats JSON cannot carry still survive the raw encoders
    special = [("s", np.array([math.inf, -math.inf], dtype=np.float32))]
    body, length = encode_binary_response("m", "1", None, special, [True])
    read = triton_http.InferResult.from_response_body(body, header_length=length).as_numpy("s")
    grpc_read = triton_grpc.InferResult(encode_model_infer_response("m", 1, "", special))
    assert read.tolist() == grpc_read.as_numpy("s").tolist() == [math.inf, -math.inf]
