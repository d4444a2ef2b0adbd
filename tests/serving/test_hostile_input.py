"""Hostile input against a real gateway: every case gets its exact 4xx with an error naming the
problem, never a 500 or a crash, and the gateway keeps serving afterwards.

The gateway runs with small limits (``max_request_bytes``, ``max_tensor_elements``,
``max_json_depth``) so that the cases stay cheap; the defaults are checked separately.
"""

from __future__ import annotations

import http.client
import inspect
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from roost_testing import (
    deploy_model,
    make_echo_onnx,
    make_linear_onnx,
    running_gateway,
)

from registry import InvalidRequest, Registry, RoostSettings, ServingConfig
from registry.artifacts import ArtifactStore
from registry.service import check_model_name
from registry.signature import Signature, TensorSpec
from serving import protocol as oip
from serving.dataplane import DataPlane
from serving.protocol import binary_codec as binary

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

FEATURES = ["a", "b", "c", "d"]
HEADER = "Inference-Header-Content-Length"
MAX_BYTES = 256 * 1024
MAX_ELEMENTS = 10_000
MAX_DEPTH = 32
ROW = [[0.5, -1.0, 2.0, 0.25]]


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> RoostSettings:
    home: Path = tmp_path_factory.mktemp("hostile")
    return RoostSettings(
        home=home,
        poll_interval_s=0.2,
        log_flush_interval_s=0.2,
        max_request_bytes=MAX_BYTES,
        max_tensor_elements=MAX_ELEMENTS,
        max_json_depth=MAX_DEPTH,
    )


@pytest.fixture(scope="module")
def gateway(module_settings: RoostSettings) -> Iterator[Any]:
    reg = Registry.from_settings(module_settings)
    deploy_model(reg, "linear", make_linear_onnx(seed=1), feature_names=FEATURES)
    deploy_model(
        reg, "strict", make_linear_onnx(seed=2), feature_names=FEATURES,
        config={"nan_policy": "reject"},
    )
    deploy_model(reg, "echo", make_echo_onnx(), config={"max_batch_size": 0})
    reg.close()
    with running_gateway(module_settings, grpc=True) as url:
        yield url


@pytest.fixture
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=10) as c:
        yield c


@pytest.fixture(autouse=True)
def still_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every case that talked to the gateway, a normal request still works."""
    yield
    if "gateway" not in request.fixturenames:
        return
    base: str = request.getfixturevalue("gateway")
    with httpx.Client(base_url=base, timeout=10) as c:
        assert c.get("/v2/health/ready").status_code == 200
        ok = c.post("/v2/models/linear/infer", json=infer_body(ROW, [1, 4]))
        assert ok.status_code == 200, ok.text
        assert ok.json()["outputs"][0]["name"] == "label"


def infer_body(
    data: Any, shape: Any, datatype: str = "FP32", name: str = "input", **extra: Any
) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}], **extra}


def error_of(resp: httpx.Response | http.client.HTTPResponse, status: int) -> str:
    body = resp.read() if isinstance(resp, http.client.HTTPResponse) else resp.content
    code = resp.status if isinstance(resp, http.client.HTTPResponse) else resp.status_code
    assert code == status, (code, body[:300])
    message = orjson.loads(body)["error"]
    assert isinstance(message, str) and message
    return message


def binary_body(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    text = orjson.dumps(header)
    return text + data, {HEADER: str(len(text)), "content-type": "application/octet-stream"}


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def raw_request(base: str, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send ``path`` byte for byte (httpx would normalise dot segments)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if method == "POST":
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# request body size


def test_declared_body_over_the_limit_is_413_on_every_route(gateway: str) -> None:
    host, port = gateway.removeprefix("http://").split(":")
    for path in ("/v2/models/linear/infer", "/v1/models/linear:predict", "/v1/feedback",
                 "/v2/repository/index", "/v2/models/nope/infer"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            # the headers promise more than the limit; the server must not wait for the body
            conn.putrequest("POST", path)
            conn.putheader("Content-Length", str(10 * 1024**3))
            conn.putheader("Content-Type", "application/json")
            conn.endheaders()
            message = error_of(conn.getresponse(), 413)
        finally:
            conn.close()
        assert message == (
            f"request body exceeds the limit of {MAX_BYTES} bytes (Content-Length: "
            f"{10 * 1024**3}); see max_request_bytes"
        ), path


def test_body_over_the_limit_is_413_with_and_without_content_length(
    client: httpx.Client,
) -> None:
    big = orjson.dumps(infer_body([0.0] * 80_000, [20_000, 4]))
    assert len(big) > MAX_BYTES
    for path in ("/v2/models/linear/infer", "/v1/models/linear:predict", "/v1/feedback"):
        method = "POST"
        # Content-Length
        message = error_of(client.request(method, path, content=big), 413)
        assert f"exceeds the limit of {MAX_BYTES} bytes" in message
        # chunked: no Content-Length, counted as it arrives
        chunks = [big[i : i + 65536] for i in range(0, len(big), 65536)]
        message = error_of(client.request(method, path, content=iter(chunks)), 413)
        assert message == (
            f"request body exceeds the limit of {MAX_BYTES} bytes; see max_request_bytes"
        )


def test_bytes_tensor_larger_than_the_body_limit_is_413(client: httpx.Client) -> None:
    element = b"x" * (MAX_BYTES + 1)
    body, headers = binary_body(
        {"inputs": [{"name": "in_BYTES", "datatype": "BYTES", "shape": [1, 1],
                     "parameters": {"binary_data_size": 4 + len(element)}}]},
        struct.pack("<I", len(element)) + element,
    )
    message = error_of(client.post("/v2/models/echo/infer", content=body, headers=headers), 413)
    assert "max_request_bytes" in message
    # JSON BYTES: the same limit
    text = orjson.dumps(infer_body(["y" * (MAX_BYTES + 1)], [1, 1], "BYTES", "in_BYTES"))
    assert error_of(client.post("/v2/models/echo/infer", content=text), 413)


# --------------------------------------------------------------------------------------------
# shapes and element counts


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([-1, 4], "input 'input': 'shape' must be a list of non-negative integers, got [-1,4]"),
        ([1, -4], "input 'input': 'shape' must be a list of non-negative integers, got [1,-4]"),
        ([2**40, 2**40], f"input 'input': dimension {2**40} of shape [{2**40},{2**40}] exceeds "
                         f"the limit of {MAX_ELEMENTS} elements per tensor (max_tensor_elements)"),
        ([0, 2**62], f"input 'input': dimension {2**62} of shape [0,{2**62}] exceeds the limit"),
        ([2**64], "input 'input': 'shape' must be a list of non-negative integers"),  # a float
        ([1.5, 4], "input 'input': 'shape' must be a list of non-negative integers"),
        ("1,4", "input 'input': 'shape' must be a list of non-negative integers"),
        ([101, 100], f"input 'input': shape [101,100] has 10100 elements, more than the limit "
                     f"of {MAX_ELEMENTS} per tensor (max_tensor_elements)"),
        ([1] * 33, "input 'input': 'shape' has 33 dimensions; at most 32 are allowed"),
    ],
)
def test_bad_or_huge_shapes_get_400_before_any_allocation(
    client: httpx.Client, shape: Any, expected: str
) -> None:
    for path in ("/v2/models/linear/infer", "/v2/models/linear/versions/1/infer"):
        body = json.dumps(infer_body([1.0, 2.0, 3.0, 4.0], shape))  # orjson stops at 2**64
        assert error_of(client.post(path, content=body), 400).startswith(expected)


def test_huge_shapes_in_binary_requests_get_400(client: httpx.Client) -> None:
    for datatype, name, size in (("FP32", "in_FP32", 0), ("BYTES", "in_BYTES", 4)):
        body, headers = binary_body(
            {"inputs": [{"name": name, "datatype": datatype, "shape": [2**40, 2**40],
                         "parameters": {"binary_data_size": size}}]},
            b"\0" * size,
        )
        message = error_of(client.post("/v2/models/echo/infer", content=body, headers=headers), 400)
        assert message.startswith(f"input '{name}': dimension {2**40} of shape")
    # within the limit but promising more BYTES elements than the data holds: no allocation
    # for the promise, a clear 400
    body, headers = binary_body(
        {"inputs": [{"name": "in_BYTES", "datatype": "BYTES", "shape": [5000, 2],
                     "parameters": {"binary_data_size": 4}}]},
        struct.pack("<I", 0),
    )
    message = error_of(client.post("/v2/models/echo/infer", content=body, headers=headers), 400)
    assert message == (
        "input 'in_BYTES': BYTES element 1 has a truncated length prefix "
        "(0 of 4 bytes left in binary_data_size 4)"
    )


def test_shape_and_byte_size_must_agree(client: httpx.Client) -> None:
    cases: list[tuple[dict[str, Any], bytes, str]] = [
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                         "parameters": {"binary_data_size": 12}}]},
            b"\0" * 12,
            "input 'input': binary_data_size 12 does not match shape [1, 4] of FP32 "
            "(4 elements x 4 bytes = 16 bytes)",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                         "parameters": {"binary_data_size": 16}}]},
            b"\0" * 8,
            "input 'input': binary_data_size 16 at offset 0 runs past the end of the binary "
            "data (8 bytes follow the JSON header)",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                         "parameters": {"binary_data_size": 16}}]},
            b"\0" * 20,
            "4 extra bytes follow the binary data of the last binary input 'input'",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                         "parameters": {"binary_data_size": -16}}]},
            b"",
            "input 'input': parameters.binary_data_size must be a non-negative integer",
        ),
    ]
    for header, data, expected in cases:
        body, headers = binary_body(header, data)
        resp = client.post("/v2/models/linear/infer", content=body, headers=headers)
        assert error_of(resp, 400).startswith(expected)
    # JSON: values and shape disagree
    resp = client.post("/v2/models/linear/infer", json=infer_body([1.0, 2.0, 3.0], [1, 4]))
    assert error_of(resp, 400) == "input 'input': shape [1, 4] needs 4 values, got 3"
    # the header length runs past the body
    resp = client.post("/v2/models/linear/infer", content=b"{}", headers={HEADER: "99"})
    assert error_of(resp, 400) == f"{HEADER} is 99 but the request body has only 2 bytes"


def test_v1_instances_over_the_element_limit(client: httpx.Client) -> None:
    body = {"instances": [[0.0, 0.0, 0.0, 0.0]] * 2501}
    message = error_of(client.post("/v1/models/linear:predict", json=body), 400)
    assert message == (
        f"input 'input': shape [2501,4] has 10004 elements, more than the limit of "
        f"{MAX_ELEMENTS} per tensor (max_tensor_elements)"
    )


# --------------------------------------------------------------------------------------------
# JSON: depth and encoding


def test_deeply_nested_json_is_400_not_500(client: httpx.Client) -> None:
    deep_parameters = infer_body(ROW, [1, 4], parameters={"x": nested(200)})
    message = error_of(client.post("/v2/models/linear/infer", json=deep_parameters), 400)
    assert message == (
        f"the request JSON nests deeper than {MAX_DEPTH} levels (in 'parameters'; "
        "max_json_depth)"
    )
    # deeper than the JSON parser itself goes (1024)
    text = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    message = error_of(client.post("/v2/models/linear/infer", content=text), 400)
    assert message == f"request body nests deeper than {MAX_DEPTH} levels (max_json_depth)"
    # inside an input's parameters, and inside its data
    body = infer_body(ROW, [1, 4])
    body["inputs"][0]["parameters"] = {"p": nested(100)}
    message = error_of(client.post("/v2/models/linear/infer", json=body), 400)
    assert message.startswith(f"the request JSON nests deeper than {MAX_DEPTH} levels (in "
                              "inputs[0].parameters")
    data_too_deep = (
        f"input 'input': 'data' nests more than {MAX_DEPTH - 3} arrays deep (the request JSON "
        f"may nest at most {MAX_DEPTH} levels; max_json_depth)"
    )
    message = error_of(
        client.post("/v2/models/linear/infer", json=infer_body(nested(40, 1.0), [1])), 400
    )
    assert message == data_too_deep  # regular nesting numpy takes in one go
    text = (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": '
            + b"[" * 900 + b"1.0" + b"]" * 900 + b"}]}")
    message = error_of(client.post("/v2/models/linear/infer", content=text), 400)
    assert message == data_too_deep  # deeper than numpy goes
    # in a binary request's JSON header
    text, headers = binary_body(infer_body(ROW, [1, 4], parameters={"x": nested(100)}), b"")
    message = error_of(client.post("/v2/models/linear/infer", content=text, headers=headers), 400)
    assert message.startswith(f"the request JSON nests deeper than {MAX_DEPTH} levels")
    # KServe v1
    for instances in ([nested(300, 1.0)], [[nested(300, 1.0), 0.0, 0.0, 0.0]],
                      [dict.fromkeys(FEATURES, nested(300, 1.0))]):
        assert error_of(
            client.post("/v1/models/linear:predict", json={"instances": instances}), 400
        )
    message = error_of(
        client.post("/v1/models/linear:predict", json={"instances": ROW, "x": nested(300)}), 400
    )
    assert message.startswith(f"the request JSON nests deeper than {MAX_DEPTH} levels (in 'x'")


@pytest.mark.parametrize("path", ["/v2/models/linear/infer", "/v1/models/linear:predict"])
def test_body_that_is_not_utf8_is_400(client: httpx.Client, path: str) -> None:
    payload = b'{"inputs": [{"name": "\xff\xfe", "datatype": "FP32"}]}'
    message = error_of(client.post(path, content=payload), 400)
    assert message == (
        "request body is not valid UTF-8 (byte 0xff at offset 22); JSON must be UTF-8 encoded"
    )
    # a lone surrogate escaped in JSON
    message = error_of(client.post(path, content=b'{"id": "\\ud800"}'), 400)
    assert message.startswith("request body is not valid JSON: ")


def test_binary_header_that_is_not_utf8_is_400(client: httpx.Client) -> None:
    payload = b'{"id": "\xc3\x28"}'
    resp = client.post(
        "/v2/models/linear/infer", content=payload, headers={HEADER: str(len(payload))}
    )
    assert error_of(resp, 400) == (
        f"the JSON header ({HEADER}: {len(payload)}) is not valid UTF-8 (byte 0xc3 at offset 8); "
        "JSON must be UTF-8 encoded"
    )


def test_wrong_json_types_are_400(client: httpx.Client) -> None:
    cases: list[tuple[Any, str]] = [
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                      "data": ["a", "b", "c", "d"]}]},
         'input \'input\': FP32 data must be numbers, got "a" at index 0'),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                      "data": [{"a": nested(25)}, 1, 2, 3]}]},
         "input 'input': FP32 data must be numbers, got "),
        ({"inputs": [{"name": "in_BYTES", "datatype": "BYTES", "shape": [1, 2],
                      "data": [1, 2]}]},
         "input 'in_BYTES': BYTES data must be strings, got 1 at index 0"),
        ({"inputs": [{"name": "input", "datatype": "FP128", "shape": [1], "data": [1]}]},
         "input 'input': 'datatype' must be one of BOOL, "),
        ({"inputs": "x"}, "'inputs' must be a non-empty list of tensors, got string"),
        ([1, 2], "request body must be a JSON object, got array"),
        ({"id": 7, "inputs": []}, "'id' must be a string, got number"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                      "data": [1e39, 0, 0, 0]}]},
         "input 'input': value 1e+39 out of range for FP32 at index 0"),
    ]
    for body, expected in cases:
        model = "echo" if "in_BYTES" in orjson.dumps(body).decode() else "linear"
        message = error_of(client.post(f"/v2/models/{model}/infer", json=body), 400)
        assert message.startswith(expected), (message, expected)


# --------------------------------------------------------------------------------------------
# NaN / Inf


NAN_WIRED = "nan_policy" in inspect.getsource(DataPlane.validate)


def test_nan_policy_knob_is_checked() -> None:
    assert ServingConfig.from_config({}).nan_policy == "allow"
    assert ServingConfig.from_config({"nan_policy": "reject"}).nan_policy == "reject"
    with pytest.raises(InvalidRequest, match="nan_policy: expected one of allow, reject"):
        ServingConfig.from_config({"nan_policy": "drop"})
    with pytest.raises(InvalidRequest, match="nan_policy: expected a string"):
        ServingConfig.from_config({"nan_policy": 0})


def test_nan_policy_in_validation() -> None:
    signature = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, 2)), TensorSpec("n", "INT64", (-1,))),
        outputs=(TensorSpec("y", "FP32", (-1,)),),
    )
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([[1.0, 2.0], [3.0, bad]], dtype=np.float32)
        request = oip.InferRequest(
            None,
            [oip.RequestInput("x", "FP32", (2, 2), x, {}),
             oip.RequestInput("n", "INT64", (2,), np.array([1, 2]), {})],
            None, {},
        )
        allowed = oip.validate_against_signature(request, signature)  # allow: the default
        assert np.shares_memory(allowed["x"], x)
        with pytest.raises(InvalidRequest) as info:
            oip.validate_against_signature(request, signature, nan_policy="reject")
        assert info.value.message == (
            f"input 'x': value {x[1, 1]} at index 3 is not finite; this model refuses NaN and "
            "Inf inputs (nan_policy: reject)"
        )


def _nan_request(value: float) -> tuple[bytes, dict[str, str]]:
    x = np.array([[0.5, value, 1.0, 2.0]], dtype="<f4")
    return binary_body(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                     "parameters": {"binary_data_size": x.nbytes}}]},
        x.tobytes(),
    )


@pytest.mark.skipif(not NAN_WIRED, reason="the data plane does not pass nan_policy yet")
def test_nan_policy_reject_over_binary_and_grpc(client: httpx.Client, gateway: Any) -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        body, headers = _nan_request(value)
        message = error_of(client.post("/v2/models/strict/infer", content=body, headers=headers),
                           400)
        assert message.startswith(f"input 'input': value {np.float32(value)} at index 1 is "
                                  "not finite")
        assert "nan_policy: reject" in message
        # the same request to a model that allows them
        assert client.post("/v2/models/linear/infer", content=body,
                           headers=headers).status_code == 200
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="strict")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1.0, float("nan"), 0.0, 0.0])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not finite" in (info.value.details() or "")


def test_nan_is_served_where_the_model_allows_it(client: httpx.Client) -> None:
    body, headers = _nan_request(float("nan"))
    resp = client.post("/v2/models/linear/infer", content=body, headers=headers)
    assert resp.status_code == 200, resp.text


# --------------------------------------------------------------------------------------------
# gRPC limits


def test_grpc_limits(gateway: Any) -> None:
    with grpc.insecure_channel(
        gateway.grpc_address, options=[("grpc.max_send_message_length", 8 * MAX_BYTES)]
    ) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        huge = service_pb2.ModelInferRequest(model_name="linear")
        huge.inputs.add(name="input", datatype="FP32", shape=[2**40, 2**40])
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(huge, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (info.value.details() or "").startswith(
            f"input 'input': dimension {2**40} of shape"
        )
        big = service_pb2.ModelInferRequest(model_name="linear")
        big.inputs.add(name="input", datatype="FP32", shape=[MAX_BYTES // 4, 4])
        big.raw_input_contents.append(b"\0" * MAX_BYTES * 4)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(big, timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = service_pb2.ModelInferRequest(model_name="linear")
        tensor = ok.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
        assert stub.ModelInfer(ok, timeout=10).outputs


# --------------------------------------------------------------------------------------------
# names and paths


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
        "/v2/models/..%252F..%252Fetc%252Fpasswd/infer",
        "/v2/models/%2e%2e/infer",
        "/v2/models/../../etc/passwd/infer",
        "/v2/models/linear%00/infer",
        "/v2/models/linear%2500/infer",
        "/v2/models/linear/versions/..%2F1/infer",
        "/v2/models/linear/versions/1%00/infer",
        "/v2/models/" + "9" * 5000 + "/versions/" + "9" * 5000 + "/infer",
        "/v1/models/..%2F..%2Fetc%2Fpasswd:predict",
    ],
)
def test_path_traversal_in_model_names_is_404(gateway: str, path: str) -> None:
    body = orjson.dumps(infer_body(ROW, [1, 4]))
    status, content = raw_request(gateway, "POST", path, body)
    assert status == 404, (status, content[:200])
    assert orjson.loads(content)["error"]
    assert b"root:" not in content
    for meta in (path.removesuffix("/infer"), path.removesuffix("/infer") + "/ready"):
        if ":predict" in meta:
            continue
        status, content = raw_request(gateway, "GET", meta)
        assert status == 404, (meta, status, content[:200])


def test_model_names_and_artifact_digests_cannot_name_paths(tmp_path: Path) -> None:
    for name in ("../x", "..", "a/b", "a\\b", "a\x00b", "", ".hidden", "x" * 129):
        with pytest.raises(InvalidRequest, match="is invalid"):
            check_model_name(name)
    store = ArtifactStore(tmp_path)
    for digest in ("../../etc/passwd", "A" * 64, "0" * 63, "0" * 63 + "/", "../" + "0" * 61):
        with pytest.raises(ValueError, match="not a sha256 hex digest"):
            store.path_for(digest)
    assert store.path_for("ab" * 32) == tmp_path / "sha256" / "ab" / ("ab" * 32)


def test_registering_a_traversal_name_is_refused(module_settings: RoostSettings) -> None:
    reg = Registry.from_settings(module_settings)
    try:
        with pytest.raises(InvalidRequest, match="model name '../x' is invalid"):
            reg.register_version("../x", make_linear_onnx())
    finally:
        reg.close()


# --------------------------------------------------------------------------------------------
# the defaults


def test_default_limits_match_the_settings() -> None:
    settings = RoostSettings()
    limits = oip.DecodeLimits.from_settings(settings)
    assert limits == oip.DecodeLimits() == oip.DEFAULT_LIMITS
    assert settings.max_request_bytes == 64 * 1024 * 1024
    assert limits.max_tensor_elements == 16 * 1024 * 1024 and limits.max_json_depth == 64


def test_codec_limits_without_a_gateway() -> None:
    """The codec functions take their limits explicitly (the defaults when given none) and
    raise only 400s; nothing is held per task."""
    body = orjson.dumps(infer_body([], [0, 2**62]))
    with pytest.raises(InvalidRequest, match="exceeds the limit of 16777216 elements"):
        oip.decode_infer_request(body)
    tight = oip.DecodeLimits(max_tensor_elements=4, max_json_depth=8)
    with pytest.raises(InvalidRequest, match="has 6 elements, more than the limit of 4"):
        oip.decode_infer_request(orjson.dumps(infer_body([1.0] * 6, [2, 3])), tight)
    with pytest.raises(InvalidRequest, match="nests deeper than 8 levels"):
        oip.decode_infer_request(
            orjson.dumps(infer_body([1.0], [1], parameters=nested(8))), tight
        )
    header = orjson.dumps(
        {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3],
                     "parameters": {"binary_data_size": 0}}]}
    )
    with pytest.raises(InvalidRequest, match="truncated length prefix"):
        binary.decode_binary_request(header, len(header), tight)
    assert not hasattr(oip, "using_limits") and not hasattr(oip, "LIMITS")
    assert math.prod([2**40, 2**40]) > oip.DecodeLimits().max_tensor_elements
