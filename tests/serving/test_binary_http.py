"""Triton's binary tensor data extension on the v2 HTTP infer route, driven by NVIDIA's own
``tritonclient.http`` (binary by default) and by hand-built bodies, against a real server."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from roost_testing import (
    ECHO_TYPES,
    deploy_model,
    make_echo_onnx,
    make_linear_onnx,
    running_gateway,
)
from tritonclient.utils import InferenceServerException

from registry import Registry, RoostSettings
from registry.errors import InvalidRequest
from registry.signature import OIP_TO_NUMPY
from serving.protocol import binary_codec as binary
from serving.protocol.render import render_inputs
from warehouse import run_query

FEATURES = ["a", "b", "c", "d"]
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> RoostSettings:
    home: Path = tmp_path_factory.mktemp("binary")
    return RoostSettings(home=home, poll_interval_s=0.2, log_flush_interval_s=0.2)


@pytest.fixture(scope="module")
def base_url(module_settings: RoostSettings) -> Iterator[str]:
    reg = Registry.from_settings(module_settings)
    deploy_model(reg, "linear", make_linear_onnx(seed=1), feature_names=FEATURES)
    deploy_model(reg, "echo", make_echo_onnx(), config={"max_batch_size": 0})
    reg.close()
    with running_gateway(module_settings) as url:
        yield url


@pytest.fixture
def triton_client(base_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=base_url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(make_linear_onnx(seed=1), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    return {"label": label, "probabilities": proba}


def linear_input(x: np.ndarray, binary_data: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_data)
    return tensor


def bytes_blob(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def binary_request(header: dict[str, Any], data: bytes) -> tuple[bytes, int]:
    text = orjson.dumps(header)
    return text + data, len(text)


# --------------------------------------------------------------------------------------------
# tritonclient.http, unchanged


@pytest.mark.parametrize("batch", [1, 7])
def test_tritonclient_binary_matches_onnxruntime(
    triton_client: triton.InferenceServerClient, batch: int
) -> None:
    x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    expected = reference(x)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=True),
        triton.InferRequestedOutput("probabilities", binary_data=True),
    ]
    result = triton_client.infer("linear", [linear_input(x)], outputs=outputs)
    for output in result.get_response()["outputs"]:
        assert "data" not in output and output["parameters"]["binary_data_size"] > 0
    label = result.as_numpy("label")
    proba = result.as_numpy("probabilities")
    assert label.dtype == np.int64 and label.shape == (batch,)
    np.testing.assert_array_equal(label, expected["label"])
    assert proba.dtype == np.float32 and proba.shape == (batch, 2)
    np.testing.assert_array_equal(proba, expected["probabilities"])
    # no outputs named: tritonclient asks for every output in binary (binary_data_output)
    everything = triton_client.infer("linear", [linear_input(x)], model_version="1")
    np.testing.assert_array_equal(everything.as_numpy("probabilities"), expected["probabilities"])
    assert everything.get_response()["model_version"] == "1"


def test_tritonclient_surfaces_the_gateway_errors(
    triton_client: triton.InferenceServerClient,
) -> None:
    x = np.zeros((1, 5), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=r"expected shape \[-1, 4\], got \[1, 5\]"):
        triton_client.infer("linear", [linear_input(x)])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        triton_client.infer("nope", [linear_input(x)])


def test_tritonclient_mixed_binary_and_json_outputs(
    triton_client: triton.InferenceServerClient,
) -> None:
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    expected = reference(x)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("label", binary_data=True),
    ]
    result = triton_client.infer("linear", [linear_input(x)], outputs=outputs, request_id="m-1")
    response = result.get_response()
    assert response["id"] == "m-1"
    proba, label = response["outputs"]
    assert proba["name"] == "probabilities" and "data" in proba and "parameters" not in proba
    assert label["name"] == "label" and "data" not in label
    assert label["parameters"] == {"binary_data_size": 5 * 8}
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-6
    )


def test_json_inputs_with_binary_outputs_and_binary_inputs_with_json_outputs(
    triton_client: triton.InferenceServerClient,
) -> None:
    x = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    expected = reference(x)
    # JSON request body (no header) asking for binary outputs: the response is binary
    result = triton_client.infer("linear", [linear_input(x, binary_data=False)])
    assert all("parameters" in o for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    # binary request asking for JSON outputs: the response is plain JSON
    outputs = [triton.InferRequestedOutput("label", binary_data=False)]
    result = triton_client.infer("linear", [linear_input(x)], outputs=outputs)
    assert result.get_response()["outputs"][0]["data"] == expected["label"].tolist()


ECHO_VALUES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False], [False, True]]),
    "INT8": np.array([[-128, 127], [0, 1]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767], [0, 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [0, 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [0, 1]], dtype=np.int64),
    "UINT8": np.array([[0, 255], [1, 2]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [1, 2]], dtype=np.uint64),
    # binary carries what JSON cannot: infinities, NaN, subnormals
    "FP16": np.array([[0.5, -65504.0], [np.inf, 6e-8]], dtype=np.float16),
    "FP32": np.array([[1.5, -np.inf], [np.nan, 1e-45]], dtype=np.float32),
    "FP64": np.array([[1e-300, -2.5], [np.pi, 5e-324]], dtype=np.float64),
    "BYTES": np.array([["héllo".encode(), b""], [b"a\x00b", b"z" * 300]], dtype=np.object_),
}


def test_every_datatype_round_trips_in_binary(
    triton_client: triton.InferenceServerClient,
) -> None:
    assert set(ECHO_VALUES) == set(ECHO_TYPES)
    inputs = []
    for datatype, values in ECHO_VALUES.items():
        tensor = triton.InferInput(f"in_{datatype}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)  # binary_data=True is tritonclient's default
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(f"out_{dt}") for dt in ECHO_VALUES]
    result = triton_client.infer("echo", inputs, outputs=outputs)
    for datatype, values in ECHO_VALUES.items():
        output = result.get_output(f"out_{datatype}")
        assert output["datatype"] == datatype and output["shape"] == [2, 2]
        assert "data" not in output
        got = result.as_numpy(f"out_{datatype}")
        assert got.shape == (2, 2)
        if datatype != "BYTES":
            assert got.dtype == values.dtype, datatype
        np.testing.assert_array_equal(got, values, err_msg=datatype)


def test_every_datatype_with_empty_and_odd_shapes(
    triton_client: triton.InferenceServerClient,
) -> None:
    inputs = []
    for datatype in ECHO_TYPES:
        dtype = np.object_ if datatype == "BYTES" else OIP_TO_NUMPY[datatype]
        tensor = triton.InferInput(f"in_{datatype}", [0, 2], datatype)
        tensor.set_data_from_numpy(np.empty((0, 2), dtype=dtype))
        inputs.append(tensor)
    result = triton_client.infer("echo", inputs)
    for datatype in ECHO_TYPES:
        output = result.get_output(f"out_{datatype}")
        assert output["shape"] == [0, 2] and output["parameters"] == {"binary_data_size": 0}
        assert result.as_numpy(f"out_{datatype}").shape == (0, 2)


# --------------------------------------------------------------------------------------------
# malformed binary requests, built by hand


def linear_header(size: int, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 4],
              "parameters": {"binary_data_size": size}} | extra
    return {"inputs": [tensor]}


FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()


def echo_bytes_header(size: int) -> dict[str, Any]:
    return {
        "inputs": [{"name": "in_BYTES", "datatype": "BYTES", "shape": [1, 2],
                    "parameters": {"binary_data_size": size}}]
    }


def malformed_cases() -> list[Any]:
    good, good_length = binary_request(linear_header(16), FOUR_FLOATS)
    cases: list[Any] = [
        pytest.param("linear", good, "sixteen", f"{HEADER} must be a non-negative integer",
                     id="header-not-integer"),
        pytest.param("linear", good, "-3", f"{HEADER} must be a non-negative integer",
                     id="header-negative"),
        pytest.param("linear", good, str(len(good) + 1),
                     f"{HEADER} is {len(good) + 1} but the request body has only {len(good)}",
                     id="header-past-body"),
        pytest.param("linear", good, str(good_length - 1), "JSON header", id="header-short"),
    ]
    body, length = binary_request(linear_header(12), FOUR_FLOATS[:12])
    cases.append(pytest.param(
        "linear", body, str(length),
        "input 'input': binary_data_size 12 does not match shape [1, 4] of FP32 "
        "(4 elements x 4 bytes = 16 bytes)", id="size-mismatch"))
    body, length = binary_request(linear_header(16), FOUR_FLOATS[:8])
    cases.append(pytest.param(
        "linear", body, str(length),
        "input 'input': binary_data_size 16 at offset 0 runs past the end of the binary data "
        "(8 bytes follow", id="data-truncated"))
    body, length = binary_request(linear_header(16), FOUR_FLOATS + b"\x00\x01\x02")
    cases.append(pytest.param(
        "linear", body, str(length),
        "3 extra bytes follow the binary data of the last binary input 'input'",
        id="trailing-bytes"))
    body, length = binary_request(linear_header(16, data=[1, 2, 3, 4]), FOUR_FLOATS)
    cases.append(pytest.param(
        "linear", body, str(length),
        "input 'input': has both 'data' and parameters.binary_data_size", id="data-and-binary"))
    header = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                          "data": [1, 2, 3, 4]}]}
    body, length = binary_request(header, b"\x00" * 4)
    cases.append(pytest.param(
        "linear", body, str(length),
        "4 bytes follow the JSON header", id="binary-without-binary-input"))
    body, length = binary_request(linear_header(-16), FOUR_FLOATS)
    cases.append(pytest.param(
        "linear", body, str(length),
        "input 'input': parameters.binary_data_size must be a non-negative integer",
        id="negative-size"))
    # BYTES: element 0 fine (1 byte), element 1's 4-byte length prefix cut after 2 bytes
    blob = bytes_blob([b"x"]) + b"\x05\x00"
    body, length = binary_request(echo_bytes_header(len(blob)), blob)
    cases.append(pytest.param(
        "echo", body, str(length),
        "input 'in_BYTES': BYTES element 1 has a truncated length prefix (2 of 4 bytes left",
        id="bytes-prefix-truncated"))
    blob = bytes_blob([b"x"]) + struct.pack("<I", 99) + b"abc"
    body, length = binary_request(echo_bytes_header(len(blob)), blob)
    cases.append(pytest.param(
        "echo", body, str(length),
        "input 'in_BYTES': BYTES element 1 declares 99 bytes but only 3 are left",
        id="bytes-length-past-end"))
    blob = bytes_blob([b"x", b"y"]) + b"zz"
    body, length = binary_request(echo_bytes_header(len(blob)), blob)
    cases.append(pytest.param(
        "echo", body, str(length),
        "input 'in_BYTES': binary_data_size 12 has 2 bytes left over after its 2 BYTES",
        id="bytes-left-over"))
    header = {"inputs": [{"name": "in_BOOL", "datatype": "BOOL", "shape": [1, 2],
                          "parameters": {"binary_data_size": 2}}]}
    body, length = binary_request(header, b"\x01\x07")
    cases.append(pytest.param(
        "echo", body, str(length),
        "input 'in_BOOL': BOOL bytes must be 0 or 1, got 7 at index 1", id="bool-not-0-or-1"))
    body, length = binary_request(
        linear_header(16) | {"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]},
        FOUR_FLOATS,
    )
    cases.append(pytest.param(
        "linear", body, str(length),
        "output 'label': parameters.binary_data must be true or false, got 1",
        id="binary-data-not-bool"))
    return cases


@pytest.mark.parametrize(("model", "body", "header", "fragment"), malformed_cases())
def test_malformed_binary_requests_get_400(
    client: httpx.Client, model: str, body: bytes, header: str, fragment: str
) -> None:
    resp = client.post(f"/v2/models/{model}/infer", content=body, headers={HEADER: header})
    assert resp.status_code == 400, resp.text
    assert fragment in resp.json()["error"]


def test_binary_request_routing_errors_and_parameter_checks(client: httpx.Client) -> None:
    body, length = binary_request(linear_header(16), FOUR_FLOATS)
    resp = client.post("/v2/models/nope/infer", content=body, headers={HEADER: str(length)})
    assert resp.status_code == 404 and "unknown model 'nope'" in resp.json()["error"]
    # a bad binary_data_output is rejected on the JSON path as well
    json_body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                             "data": [1, 2, 3, 4]}], "parameters": {"binary_data_output": "yes"}}
    resp = client.post("/v2/models/linear/infer", json=json_body)
    assert resp.status_code == 400
    assert "parameters.binary_data_output must be true or false" in resp.json()["error"]
    # a hand-built binary request and response, read without tritonclient
    request = linear_header(16) | {"outputs": [
        {"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}]}
    body, length = binary_request(request, FOUR_FLOATS)
    resp = client.post("/v2/models/linear/infer", content=body, headers={HEADER: str(length)})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    json_length = int(resp.headers[HEADER])
    head = json.loads(resp.content[:json_length])
    proba, label = head["outputs"]
    assert proba["parameters"] == {"binary_data_size": 8} and "data" not in proba
    assert "data" in label and "parameters" not in label
    expected = reference(np.arange(4, dtype=np.float32).reshape(1, 4))["probabilities"]
    got = np.frombuffer(resp.content[json_length:], dtype="<f4").reshape(1, 2)
    np.testing.assert_array_equal(got, expected)
    # the JSON path is untouched: no header in, plain JSON out
    resp = client.post("/v2/models/linear/infer", json={"inputs": json_body["inputs"]})
    assert resp.headers["content-type"] == "application/json" and HEADER not in resp.headers


# --------------------------------------------------------------------------------------------
# prediction log


def test_binary_prediction_logged_as_readable_json(
    triton_client: triton.InferenceServerClient,
    client: httpx.Client,
    module_settings: RoostSettings,
) -> None:
    marker = f"binary-{time.time_ns()}"
    x = np.array([[0.25, -1.5, 3.0, 0.125]], dtype=np.float32)
    triton_client.infer("linear", [linear_input(x)], headers={"roost-user": marker},
                        request_id="logged-1")
    body, length = binary_request(linear_header(12), FOUR_FLOATS[:12])
    bad = client.post("/v2/models/linear/infer", content=body,
                      headers={HEADER: str(length), "roost-user": marker})
    assert bad.status_code == 400
    query = (
        "select status, inputs, outputs, request_id, protocol from predictions "
        f"where user_id = '{marker}' order by status"
    )
    deadline = time.monotonic() + 10
    while True:
        _, rows = run_query(module_settings.logs_dir, query)
        if len(rows) == 2:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    (ok_status, inputs, outputs, request_id, protocol), failed = rows
    assert (ok_status, request_id, protocol) == (200, "logged-1", "v2-rest")
    logged = json.loads(inputs)
    (tensor,) = logged["inputs"]
    assert tensor == {"name": "input", "datatype": "FP32", "shape": [1, 4],
                      "data": x.ravel().tolist()}
    assert logged == {"inputs": [tensor]}  # the one rendering: as JSON and gRPC requests
    assert {o["name"] for o in json.loads(outputs)} == {"label", "probabilities"}
    # a rejected binary request logs its tensor headers and size, not raw bytes
    assert failed[0] == 400 and json.loads(failed[1]) == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}],
        "rejected": {"bytes": len(body)},
    }


# --------------------------------------------------------------------------------------------
# the codec without a server


def test_codec_round_trip_and_log_rendering_is_bounded() -> None:
    big = np.arange(200_000, dtype=np.int32).reshape(-1, 2)
    words = np.array([b"a", "é".encode(), b""], dtype=np.object_)
    header = {"id": "c-1", "inputs": [
        {"name": "big", "datatype": "INT32", "shape": [100_000, 2],
         "parameters": {"binary_data_size": big.nbytes}},
        {"name": "words", "datatype": "BYTES", "shape": [3],
         "parameters": {"binary_data_size": 15, "note": "kept"}},
        {"name": "plain", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]},
    ]}
    body, length = binary_request(header, big.tobytes() + bytes_blob(list(words)))
    request = binary.decode_binary_request(body, length)
    assert [t.name for t in request.inputs] == ["big", "words", "plain"]
    np.testing.assert_array_equal(request.inputs[0].data, big)
    assert request.inputs[1].data.tolist() == list(words)
    assert request.inputs[2].data.tolist() == [1.5, 2.5]
    # the log's rendering summarizes the big tensor and lists the small ones whole
    rendered = json.loads(render_inputs(request))
    big_entry, words_entry, plain_entry = rendered["inputs"]
    assert big_entry["summary"]["elements"] == 200_000 and "data" not in big_entry
    assert big_entry["summary"]["max"] == 199_999
    assert words_entry == {"name": "words", "datatype": "BYTES", "shape": [3],
                           "data": ["a", "é", ""]}
    assert plain_entry["data"] == [1.5, 2.5]
    # responses: binary and JSON outputs side by side, BYTES from str or bytes
    outputs = [("s", np.array(["x", "yz"], dtype=np.object_)),
               ("f", np.array([[1.0, 2.0]], dtype=">f8")), ("j", np.array([7]))]
    encoded, json_length = binary.encode_binary_response("m", "2", None, outputs,
                                                         [True, True, False])
    result = triton.InferResult.from_response_body(encoded, header_length=json_length)
    assert result.as_numpy("s").tolist() == [b"x", b"yz"]
    np.testing.assert_array_equal(result.as_numpy("f"), [[1.0, 2.0]])
    assert result.get_output("j")["data"] == [7]
    with pytest.raises(InvalidRequest, match="the request body has 3 bytes"):
        binary.decode_binary_request(b"{}x", 4)
