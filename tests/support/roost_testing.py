"""Helpers shared by the tests (importable because pytest's ``pythonpath`` names this folder)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import onnx
from gateway_process import GatewayProcess, free_port, gateway_process
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GatewayProcess", "free_port", "gateway_process"]  # re-exported for the tests


def make_linear_onnx(n_features: int = 4, seed: int = 0) -> bytes:
    """A logistic-regression-shaped ONNX model: input [N, F] FP32 -> label INT64 [N],
    probabilities FP32 [N, 2]. Different seeds give different weights (and bytes)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_features, 1)).astype(np.float32)
    bias = np.array([rng.normal()], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "B"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p1"]),
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(bias, "B"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


ECHO_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def make_echo_onnx() -> bytes:
    """One Identity per OIP datatype: input ``in_<DT>`` [-1, 2] -> output ``out_<DT>``."""
    inputs, outputs, nodes = [], [], []
    for name, elem in ECHO_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, [None, 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, [None, 2]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class GatewayURL(str):
    """A running gateway's base URL; ``grpc_address`` is its gRPC ``host:port`` (or None)."""

    grpc_address: str | None = None


@contextlib.contextmanager
def running_gateway(settings: Any, grpc: bool = False) -> Iterator[GatewayURL]:
    """A real uvicorn server with the gateway app on a loopback port; yields its base URL.

    gRPC is off (``grpc_port=0``) unless ``grpc`` is true: then it listens on a free loopback
    port, given by the yielded URL's ``grpc_address`` (see :func:`running_gateway_with_grpc`).
    """
    import threading
    import time

    import httpx
    import uvicorn

    from serving import create_app

    grpc_port = free_port() if grpc else 0
    update: dict[str, Any] = {"grpc_port": grpc_port}
    if grpc:
        update["host"] = "127.0.0.1"
    settings = settings.model_copy(update=update)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning",
        access_log=False, lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = GatewayURL(f"http://127.0.0.1:{port}")
    base.grpc_address = f"127.0.0.1:{grpc_port}" if grpc else None
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/v2/health/live", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def running_gateway_with_grpc(settings: Any) -> Iterator[tuple[str, str]]:
    """:func:`running_gateway` with gRPC on; yields (base URL, gRPC ``host:port``)."""
    with running_gateway(settings, grpc=True) as url:
        assert url.grpc_address is not None
        yield str(url), url.grpc_address


def deploy_model(registry: Any, model: str, data: bytes, **kwargs: Any) -> int:
    """Register, validate and deploy ``data`` as ``model``; returns the version number."""
    from registry import State

    info = registry.register_version(model, data, **kwargs)
    registry.transition(model, info.version, State.VALIDATING, reason="test")
    registry.transition(model, info.version, State.VALIDATED, reason="test")
    registry.deploy(model, info.version, reason="test")
    return int(info.version)


def make_mlp_onnx(n_features: int = 4, hidden: int = 256, layers: int = 4, seed: int = 0) -> bytes:
    """A dense ReLU network whose compute dominates a call: input [N, F] -> probabilities [N, 2]."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    prev, width = "input", n_features
    for i in range(layers):
        w = (rng.normal(size=(width, hidden)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        prev, width = f"r{i}", hidden
    inits.append(numpy_helper.from_array(rng.normal(size=(width, 2)).astype(np.float32), "Wo"))
    nodes.append(helper.make_node("MatMul", [prev, "Wo"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def make_failing_onnx(n_features: int = 4) -> bytes:
    """Loads and has the usual input, but every run fails (a Reshape no input can satisfy)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["probabilities"])],
        "failing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(np.array([7, 3, 11], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@contextlib.asynccontextmanager
async def in_process_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an in-process ``httpx`` client (no sockets)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client
