"""``ROOST_GRPC_PROCESSES``: gRPC served by processes of its own sharing the port, over a real
gateway on loopback with NVIDIA's ``tritonclient.grpc`` as the client."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from pydantic import SecretStr
from roost_testing import deploy_model, make_linear_onnx, running_gateway_with_grpc

from registry import Registry, RoostSettings
from registry.keys import create_key
from serving.grpc_processes import check_port_free, settings_payload
from serving.grpc_server import GrpcBindError
from warehouse import run_query

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

CHILD = "serving.grpc_processes"


def grpc_children() -> list[psutil.Process]:
    """This test process's gRPC child processes (started by the embedded gateway)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:  # a child killed a moment ago is a zombie until reaped: its cmdline() raises
            if CHILD in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def listens_on(proc: psutil.Process, port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port
        for c in proc.net_connections(kind="tcp")
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("grpc-processes")
    settings = RoostSettings(
        home=home, poll_interval_s=0.2, log_flush_interval_s=0.2, auth_required=True,
        grpc_processes=2, drain_grace_s=2.0,
    )
    reg = Registry.from_settings(settings)
    deploy_model(reg, "linear", make_linear_onnx(seed=1), feature_names=["a", "b", "c", "d"])
    key, _ = create_key(reg, "app", ["predict", "read"], models=["linear"])
    reg.close()
    with running_gateway_with_grpc(settings) as (url, address):
        yield {"settings": settings, "url": url, "address": address, "key": key}
    deadline = time.monotonic() + 30
    while grpc_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not grpc_children(), "the gateway's stop left gRPC processes running"


@pytest.fixture
def client(served: dict[str, Any]) -> Iterator[Any]:
    c = tritonclient_grpc.InferenceServerClient(url=served["address"])
    try:
        yield c
    finally:
        c.close()


def linear_input() -> Any:
    inp = tritonclient_grpc.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    return inp


def test_children_share_the_port_and_answer_with_auth(
    served: dict[str, Any], client: Any
) -> None:
    port = int(served["address"].rsplit(":", 1)[1])
    children = grpc_children()
    assert len(children) == 2
    assert all(listens_on(child, port) for child in children)
    headers = {"x-api-key": served["key"]}
    assert client.is_server_live()
    assert client.is_model_ready("linear", headers=headers)
    assert client.get_model_metadata("linear", headers=headers).name == "linear"
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("linear", [linear_input()])
    answer = client.infer(
        "linear", [linear_input()],
        headers={**headers, "roost-user": "bob", "x-request-id": "proc-1"},
    )
    assert answer.get_response().id == "proc-1"
    assert answer.as_numpy("probabilities").shape == (1, 2)


def test_children_log_their_predictions(served: dict[str, Any], client: Any) -> None:
    client.infer(
        "linear", [linear_input()],
        headers={"x-api-key": served["key"], "roost-user": "carol", "x-request-id": "proc-log"},
    )
    query = "select user_id, status from predictions where request_id = 'proc-log'"
    deadline = time.monotonic() + 15
    rows: list[Any] = []
    while not rows:
        try:
            rows = run_query(served["settings"].logs_dir, query)[1]
        except Exception:  # no log file written yet
            rows = []
        assert rows or time.monotonic() < deadline, "the gRPC process did not log"
        time.sleep(0.1)
    assert [tuple(r) for r in rows] == [("carol", 200)]


def test_a_child_that_dies_is_started_again(served: dict[str, Any], client: Any) -> None:
    before = grpc_children()
    victim = before[0]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        now = grpc_children()
        if len(now) == 2 and victim.pid not in {p.pid for p in now}:
            break
        assert time.monotonic() < deadline, f"not restarted: {now}"
        time.sleep(0.2)
    for _ in range(4):  # whichever process takes the connection answers
        with tritonclient_grpc.InferenceServerClient(url=served["address"]) as fresh:
            fresh.infer("linear", [linear_input()], headers={"x-api-key": served["key"]})


def test_a_busy_port_fails_clearly() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(GrpcBindError, match=f"127.0.0.1:{port}.*in use"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again


def test_settings_reach_the_children_secrets_included(tmp_path: Path) -> None:
    import json

    settings = RoostSettings(
        home=tmp_path, grpc_processes=3, user_id_key=SecretStr("k3y"), serve_models=["a", "b"]
    )
    again = RoostSettings(**json.loads(settings_payload(settings)))
    assert again == settings
    assert again.user_id_key is not None and again.user_id_key.get_secret_value() == "k3y"
