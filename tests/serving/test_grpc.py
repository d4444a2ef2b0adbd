"""The Open Inference Protocol v2 gRPC service over a real gateway on loopback, with NVIDIA's
``tritonclient.grpc`` (and the raw stub) as the client."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from roost_testing import (
    ECHO_TYPES,
    deploy_model,
    make_echo_onnx,
    make_failing_onnx,
    make_linear_onnx,
    running_gateway_with_grpc,
)

from registry import InvalidRequest, Registry, RoostSettings
from serving import create_app
from serving.grpc_server import GrpcBindError, decode_model_infer_request
from warehouse import run_query

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

FEATURES = ["a", "b", "c", "d"]
FAILING = {"warmup_runs": 0, "breaker_failures": 1, "breaker_reset_ms": 600_000}


@pytest.fixture(scope="module", params=["grpcio", "grpclib"])
def module_settings(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> RoostSettings:
    """Every test of the service runs on both implementations (ROOST_GRPC_SERVER)."""
    home: Path = tmp_path_factory.mktemp("grpc")
    return RoostSettings(
        home=home, poll_interval_s=0.2, log_flush_interval_s=0.2, grpc_server=request.param
    )


@pytest.fixture(scope="module")
def gateway(module_settings: RoostSettings) -> Iterator[tuple[str, str]]:
    reg = Registry.from_settings(module_settings)
    deploy_model(reg, "linear", make_linear_onnx(seed=1), feature_names=FEATURES)
    deploy_model(reg, "echo", make_echo_onnx(), config={"max_batch_size": 0})
    deploy_model(reg, "bad", make_failing_onnx(), config=FAILING)
    reg.close()
    with running_gateway_with_grpc(module_settings) as addresses:
        yield addresses


@pytest.fixture
def client(gateway: tuple[str, str]) -> Iterator[Any]:
    c = tritonclient_grpc.InferenceServerClient(url=gateway[1])
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def stub(gateway: tuple[str, str]) -> Iterator[Any]:
    with grpc.insecure_channel(gateway[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(make_linear_onnx(seed=1), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    return {"label": label, "probabilities": proba}


def linear_input(x: np.ndarray, datatype: str = "FP32") -> Any:
    inp = tritonclient_grpc.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def grpc_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# -- health and metadata ---------------------------------------------------------------------


def test_server_live_ready_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "roost" and meta.version


def test_model_ready_and_metadata(client: Any) -> None:
    assert client.is_model_ready("linear")
    assert client.is_model_ready("linear", model_version="1")
    assert not client.is_model_ready("linear", model_version="7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("linear", as_json=True)
    assert meta["name"] == "linear" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    pinned = client.get_model_metadata("linear", model_version="1")
    assert list(pinned.inputs[0].shape) == [-1, 4]
    error = grpc_error(lambda: client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND" and "nope" in error.message()


def test_triton_only_rpcs_are_unimplemented(client: Any, stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="linear")
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ModelStreamInfer(iter([request]), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    for call in (
        lambda: client.get_model_config("linear"),
        lambda: client.get_inference_statistics("linear"),
        lambda: client.get_model_repository_index(),
    ):
        error = grpc_error(call)
        assert error.status() == "StatusCode.UNIMPLEMENTED"
        assert "not supported" in error.message()


# -- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 5])
def test_infer_matches_onnxruntime(client: Any, rows: int) -> None:
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    expected = reference(x)
    result = client.infer("linear", [linear_input(x)], request_id=f"grpc-{rows}")
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"])
    response = result.get_response()
    assert response.model_name == "linear" and response.model_version == "1"
    assert response.id == f"grpc-{rows}"
    outputs = {o.name: (o.datatype, list(o.shape)) for o in response.outputs}
    assert outputs == {"label": ("INT64", [rows]), "probabilities": ("FP32", [rows, 2])}


def test_requested_outputs_subset(client: Any) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    wanted = [tritonclient_grpc.InferRequestedOutput("probabilities")]
    result = client.infer("linear", [linear_input(x)], outputs=wanted, model_version="1")
    assert [o.name for o in result.get_response().outputs] == ["probabilities"]
    assert result.as_numpy("label") is None
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(x)["probabilities"])
    error = grpc_error(
        lambda: client.infer(
            "linear", [linear_input(x)], outputs=[tritonclient_grpc.InferRequestedOutput("zz")]
        )
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'zz'" in error.message()


def echo_values() -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for datatype in ECHO_TYPES:
        if datatype == "BOOL":
            values[datatype] = np.array([[True, False], [False, True], [True, True]])
        elif datatype == "BYTES":
            values[datatype] = np.array(
                [[b"", b"plain"], ["h\u00e9\u00e9".encode(), b"with\x00nul"], [b"x", b"y" * 300]],
                dtype=np.object_,
            )
        else:
            dtype = np.dtype(datatype.lower().replace("fp", "float"))
            if dtype.kind == "f":
                values[datatype] = np.array([[0.5, -1.25], [65504, -0.0], [1e-3, 3]], dtype=dtype)
            else:
                info = np.iinfo(dtype)
                values[datatype] = np.array(
                    [[info.min, info.max], [0, 1], [info.max - 1, info.min + 1]], dtype=dtype
                )
    return values


def test_every_datatype_round_trips_through_echo(client: Any) -> None:
    values = echo_values()
    inputs = []
    for datatype, array in values.items():
        inp = tritonclient_grpc.InferInput(f"in_{datatype}", list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    result = client.infer("echo", inputs)
    for datatype, array in values.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got is not None, datatype
        assert got.shape == array.shape, datatype
        if datatype == "BYTES":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype, datatype
            np.testing.assert_array_equal(got, array)


def test_typed_contents_via_raw_stub(stub: Any) -> None:
    x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="linear", id="typed-1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = stub.ModelInfer(request, timeout=10)
    assert response.id == "typed-1" and response.model_version == "1"
    names = [o.name for o in response.outputs]
    outputs = dict(zip(names, response.raw_output_contents, strict=True))
    expected = reference(x)
    np.testing.assert_array_equal(
        np.frombuffer(outputs["label"], dtype="<i8"), expected["label"]
    )
    np.testing.assert_allclose(
        np.frombuffer(outputs["probabilities"], dtype="<f4").reshape(3, 2),
        expected["probabilities"],
    )


def test_raw_contents_of_the_wrong_size_are_refused(stub: Any) -> None:
    request = service_pb2.ModelInferRequest(model_name="linear")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the binary extension's message, naming where the bytes came from (serving.protocol.raw)
    assert info.value.details() == (
        "input 'input': raw_input_contents of 12 bytes does not match shape [1, 4] of FP32 "
        "(4 elements x 4 bytes = 16 bytes)"
    )


# -- errors ----------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: Any) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    error = grpc_error(lambda: client.infer("nope", [linear_input(x)]))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "unknown model 'nope'"
    error = grpc_error(lambda: client.infer("linear", [linear_input(x)], model_version="9"))
    assert error.status() == "StatusCode.NOT_FOUND"


def test_wrong_shape_and_dtype_name_the_input(client: Any) -> None:
    error = grpc_error(
        lambda: client.infer("linear", [linear_input(np.ones((1, 3), dtype=np.float32))])
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == "input 'input': expected shape [-1, 4], got [1, 3]"
    error = grpc_error(
        lambda: client.infer("linear", [linear_input(np.ones((1, 4)), datatype="FP64")])
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == "input 'input': expected datatype FP32, got FP64"


def test_missing_input_is_invalid_argument(client: Any) -> None:
    inputs = []
    for datatype, array in echo_values().items():
        if datatype == "INT16":
            continue
        inp = tritonclient_grpc.InferInput(f"in_{datatype}", list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    error = grpc_error(lambda: client.infer("echo", inputs))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message().startswith("missing input 'in_INT16'")


def test_timeout_parameter_reaches_the_data_plane(client: Any) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    result = client.infer("linear", [linear_input(x)], timeout=10_000_000)
    assert result.as_numpy("label") is not None
    error = grpc_error(lambda: client.infer("linear", [linear_input(x)], timeout=-5))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "parameters.timeout" in error.message()


def test_open_breaker_is_unavailable_before_decoding(
    gateway: tuple[str, str], stub: Any
) -> None:
    """A version that would refuse answers UNAVAILABLE with retry-after, as REST's 503, before
    the tensors are decoded (an undecodable request gets it too), unlogged but counted."""
    request = service_pb2.ModelInferRequest(model_name="bad")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(request, timeout=10)
    assert failed.value.code() == grpc.StatusCode.INTERNAL  # it ran, failed, opened the breaker
    undecodable = service_pb2.ModelInferRequest(model_name="bad")
    undecodable.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    undecodable.raw_input_contents.append(b"\x00" * 3)
    for message in (request, undecodable):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(message, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "circuit breaker open" in (refused.value.details() or "")
        trailing = dict(refused.value.trailing_metadata() or ())
        assert int(trailing["retry-after"]) > 500
    metrics = httpx.get(f"{gateway[0]}/metrics", timeout=10).text
    assert any(
        line.startswith("roost_rejected_requests_total{") and 'model="bad"' in line
        and 'reason="breaker_open"' in line and line.endswith(" 2.0")
        for line in metrics.splitlines()
    ), metrics


# -- prediction log --------------------------------------------------------------------------


def test_grpc_predictions_are_logged(
    client: Any, stub: Any, module_settings: RoostSettings
) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    client.infer(
        "linear", [linear_input(x)], headers={"roost-user": "alice", "x-request-id": "log-1"}
    )
    grpc_error(lambda: client.infer("linear", [linear_input(np.ones((1, 3), np.float32))]))
    # a request that does not decode is logged too: its tensor headers and size, no data
    undecodable = service_pb2.ModelInferRequest(model_name="linear", id="log-undecodable")
    undecodable.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    undecodable.raw_input_contents.append(b"\x00" * 12)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(undecodable, timeout=10)
    query = (
        "select request_id, user_id, status, inputs, error from predictions "
        "where protocol = 'v2-grpc' and model = 'linear' order by ts"
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            rows = run_query(module_settings.logs_dir, query)[1]
        except Exception:  # no log file written yet
            rows = []
        ok = [r for r in rows if r[0] == "log-1"]
        failed = [r for r in rows if r[2] == 400 and "expected shape" in (r[4] or "")]
        rejected = [r for r in rows if r[0] == "log-undecodable"]
        if ok and failed and rejected:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    assert ok[0][1] == "alice" and ok[0][2] == 200
    assert ok[0][3] == (
        '{"inputs":[{"name":"input","datatype":"FP32","shape":[2,4],'
        '"data":[0.0,1.0,2.0,3.0,4.0,5.0,6.0,7.0]}]}'
    )
    assert json.loads(failed[-1][3])["inputs"][0]["shape"] == [1, 3]
    assert rejected[0][2] == 400 and "raw_input_contents of 12 bytes" in rejected[0][4]
    assert json.loads(rejected[0][3]) == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4]}],
        "rejected": {"bytes": undecodable.ByteSize()},
    }


def test_an_answer_whose_log_record_cannot_be_made_durable_is_unavailable(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is encoded before its record's fdatasync is awaited (as REST); a failed sync
    still keeps the answer from leaving: UNAVAILABLE, and the next call is served."""
    from warehouse import wal as wal_module

    real, failed = wal_module._sync_data, []

    def failing_once(fd: int) -> None:
        if not failed:
            failed.append(fd)
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(wal_module, "_sync_data", failing_once)
    x = np.ones((1, 4), np.float32)
    error = grpc_error(lambda: client.infer("linear", [linear_input(x)]))
    assert failed and error.status() == "StatusCode.UNAVAILABLE", error
    assert "Input/output error" in error.message()
    result = client.infer("linear", [linear_input(x)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(x)["probabilities"])


# -- decoding (pure) -------------------------------------------------------------------------


def typed_request(datatype: str, shape: list[int], field: str, values: list[Any]) -> Any:
    request = service_pb2.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False]),
        ("INT8", "int_contents", [-128, 127]),
        ("INT16", "int_contents", [-5, 5]),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 255]),
        ("UINT16", "uint_contents", [0, 65535]),
        ("UINT32", "uint_contents", [0, 2**32 - 1]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("FP32", "fp32_contents", [0.5, -2.0]),
        ("FP64", "fp64_contents", [0.1, -2.5]),
        ("BYTES", "bytes_contents", [b"a", b"\xff"]),
    ],
)
def test_decode_typed_contents(datatype: str, field: str, values: list[Any]) -> None:
    decoded = decode_model_infer_request(typed_request(datatype, [1, 2], field, values))
    (tensor,) = decoded.inputs
    assert tensor.shape == (1, 2) and tensor.data.shape == (1, 2)
    assert tensor.data.ravel().tolist() == values
    if datatype != "BYTES":
        assert tensor.data.dtype == np.dtype(datatype.lower().replace("fp", "float"))


@pytest.mark.parametrize(
    ("request_fn", "message"),
    [
        (
            lambda: typed_request("FP32", [2, 2], "fp32_contents", [1.0, 2.0, 3.0]),
            "input 'x': shape [2, 2] needs 4 values, got 3",
        ),
        (
            lambda: typed_request("INT8", [1], "int_contents", [300]),
            "input 'x': value 300 out of range for INT8 (-128 to 127) at index 0",
        ),
        (
            lambda: typed_request("FP32", [1], "fp64_contents", [1.0]),
            "input 'x': FP32 data must be sent in 'fp32_contents', got 'fp64_contents'",
        ),
        (
            lambda: typed_request("FP16", [1], "fp32_contents", [1.0]),
            "input 'x': FP16 data must be sent in raw_input_contents, got 'fp32_contents'",
        ),
        (
            lambda: typed_request("FP8", [1], "fp32_contents", [1.0]),
            "input 'x': 'datatype' must be one of",
        ),
        (
            lambda: typed_request("FP32", [-1], "fp32_contents", [1.0]),
            "input 'x': 'shape' must be a list of non-negative integers, got [-1]",
        ),
    ],
)
def test_decode_errors_name_the_input(request_fn: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_model_infer_request(request_fn())
    assert info.value.message.startswith(message)


def test_decode_raw_bytes_and_parameters() -> None:
    request = service_pb2.ModelInferRequest(model_name="m", id="r")
    request.inputs.add(name="s", datatype="BYTES", shape=[3])
    request.inputs.add(name="h", datatype="FP16", shape=[2])
    request.raw_input_contents.append(
        b"".join(struct.pack("<I", len(v)) + v for v in (b"ab", b"", b"\xe2\x82\xac"))
    )
    request.raw_input_contents.append(np.array([1.5, -2], dtype="<f2").tobytes())
    request.parameters["timeout"].int64_param = 2500
    request.outputs.add(name="o")
    decoded = decode_model_infer_request(request)
    assert decoded.id == "r" and decoded.parameters == {"timeout": 2500}
    assert decoded.inputs[0].data.tolist() == [b"ab", b"", b"\xe2\x82\xac"]
    assert decoded.inputs[1].data.dtype == np.float16
    assert decoded.inputs[1].data.tolist() == [1.5, -2.0]
    assert [o.name for o in decoded.outputs or []] == ["o"]
    request.raw_input_contents[0] = struct.pack("<I", 9) + b"ab"
    with pytest.raises(
        InvalidRequest,
        match="BYTES element 0 declares 9 bytes but only 2 are left in raw_input_contents",
    ):
        decode_model_infer_request(request)


# -- lifecycle -------------------------------------------------------------------------------


def run_lifespan(settings: RoostSettings) -> Any:
    app = create_app(settings)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            return app.state.grpc_server

    return asyncio.run(main())


@pytest.mark.parametrize("server", ["grpcio", "grpclib"])
def test_grpc_port_zero_disables_and_busy_port_fails_clearly(
    settings: RoostSettings, server: str
) -> None:
    settings = settings.model_copy(update={"grpc_server": server})
    assert run_lifespan(settings.model_copy(update={"grpc_port": 0})) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(GrpcBindError, match=f"127.0.0.1:{port}"):
            run_lifespan(settings.model_copy(update={"grpc_port": port}))
