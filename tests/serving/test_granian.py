"""``roost serve`` under Granian (``ROOST_HTTP_SERVER=granian``), a real process on loopback.

Two parts:

- what the HTTP server itself decides, on one gateway process under Granian: the lifespan
  (models loaded before ready), gRPC on the same event loop, HTTP/1.1 keep-alive and pipelined
  requests on one socket, the body limit and a bad input's error, ``--workers 2`` (metrics of
  both merged) and SIGTERM (exit 0, every answered request in the sealed prediction log);
- the REST suites (``SUITES``: end to end, Triton's binary extension through ``tritonclient``)
  run again in a child pytest that loads this file as a plugin
  (``-p test_granian``): its ``pytest_configure`` points ``roost_testing.running_gateway``, the
  in-process uvicorn server those suites start, at a ``roost serve`` process under Granian with
  the same settings, so every one of their requests goes through Granian.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from gateway_process import REPO_ROOT, GatewayProcess, gateway_process
from roost_testing import deploy_model, make_linear_onnx
from tritonclient.grpc import service_pb2 as pb

from registry import Registry, RoostSettings

pytest.importorskip("granian")

GRANIAN = {"ROOST_HTTP_SERVER": "granian"}
SUITES = [
    "tests/serving/test_gateway_rest.py",  # end to end: OIP v2 and KServe v1 over REST
    "tests/serving/test_binary_http.py",  # conformance: Triton's binary extension, tritonclient
]
UNDER_GRANIAN_ENV = "ROOST_TEST_UNDER_GRANIAN"
FAST = {"ROOST_POLL_INTERVAL_S": "0.2", "ROOST_LOG_FLUSH_INTERVAL_S": "0.2"}
ROW = [0.1, 0.2, 0.3, 0.4]


def infer_body(rows: int = 1) -> bytes:
    return json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": ROW * rows}]
    }).encode()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("granian")
    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "linear", make_linear_onnx(seed=1), feature_names=list("abcd"))
    registry.close()
    return home


@pytest.fixture(scope="module")
def gateway(home: Path) -> Iterator[GatewayProcess]:
    env = {**GRANIAN, **FAST, "ROOST_MAX_REQUEST_BYTES": str(1 << 20)}
    with gateway_process(home, env=env, name="granian") as process:
        yield process


def test_lifespan_loads_models_and_grpc_answers_on_the_same_loop(
    gateway: GatewayProcess,
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        ready = client.get("/v2/models/linear/ready")
        assert ready.status_code == 200
        assert client.get("/v2/health/ready").headers.get("server") == "granian"
        rest = client.post("/v2/models/linear/infer", content=infer_body())
    assert rest.status_code == 200, rest.text
    assert gateway.grpc_address is not None
    request = pb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        ROW
    )
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        answer = call(request, timeout=10)
    by_name = {o["name"]: o["data"] for o in rest.json()["outputs"]}
    index = [o.name for o in answer.outputs].index("probabilities")
    grpc_values = (
        np.frombuffer(answer.raw_output_contents[index], "<f4").tolist()
        if answer.raw_output_contents
        else list(answer.outputs[index].contents.fp32_contents)
    )
    assert grpc_values == pytest.approx(by_name["probabilities"])


def raw_exchange(port: int, payload: bytes, answers: int) -> list[bytes]:
    """Send ``payload`` on one connection; read ``answers`` HTTP/1.1 responses (by length)."""
    out: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        buffer = b""
        while len(out) < answers:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(out)} answers"
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            headers = dict(
                line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
            )
            length = int({k.strip().lower(): v for k, v in headers.items()}[b"content-length"])
            while len(buffer) < length:
                buffer += sock.recv(65536)
            out.append(head.split(b"\r\n")[0] + b" " + buffer[:length])
            buffer = buffer[length:]
    return out


def request_bytes(body: bytes) -> bytes:
    return (
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


def test_keep_alive_and_pipelined_requests_on_one_socket(gateway: GatewayProcess) -> None:
    body = infer_body()
    answers = raw_exchange(gateway.port, request_bytes(body) * 3, 3)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    assert len({a.split(b" ", 3)[3] for a in answers}) == 3  # three answers, three request ids


def test_body_over_the_limit_is_413_and_bad_input_names_the_field(
    gateway: GatewayProcess,
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        huge = client.post(
            "/v2/models/linear/infer", content=b"{" + b" " * (2 << 20) + b"}",
            headers={"Content-Type": "application/json"},
        )
        bad = client.post("/v2/models/linear/infer", content=b'{"inputs": [{"name": "input"}]}')
    assert huge.status_code == 413, huge.text
    assert bad.status_code == 400
    assert "datatype" in bad.json()["error"] or "shape" in bad.json()["error"]


def test_two_workers_answer_and_sigterm_stops_them_with_every_answer_logged(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "linear", make_linear_onnx(seed=1), feature_names=list("abcd"))
    registry.close()
    process = GatewayProcess(home, env={**GRANIAN, **FAST}, workers=2, name="granian-w2")
    process.start()
    try:
        process.wait_ready()
        workers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _child_of(p, process)]
        with httpx.Client(base_url=process.url, timeout=10) as client:
            statuses = [
                client.post("/v2/models/linear/infer", content=infer_body()).status_code
                for _ in range(25)
            ]
            metrics = client.get("/metrics").text
    finally:
        status = process.stop(30, signal.SIGTERM)
    assert statuses == [200] * 25
    assert len(workers) >= 2  # Granian's two worker processes (and multiprocessing's helper)
    assert 'roost_requests_total{' in metrics  # every worker's metrics, merged
    assert status == 0, process.tail()
    assert "Traceback" not in process.output()
    import pyarrow.parquet as pq

    files = list((home / "logs" / "predictions").rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == 25


def _child_of(entry: Path, process: GatewayProcess) -> bool:
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = (entry / "stat").read_text()
        return process.proc is not None and int(stat[stat.rindex(")") + 2:].split()[1]) == (
            process.proc.pid
        )
    return False


def test_rest_suites_pass_with_granian_serving(tmp_path: Path) -> None:
    env = {
        **os.environ,
        UNDER_GRANIAN_ENV: "1",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "test_granian", "-x",
         "--basetemp", str(tmp_path / "suites"), *SUITES],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    started = re.search(r"gateways started under Granian: (\d+)", done.stdout)
    assert started and int(started.group(1)) >= len(SUITES), done.stdout[-2000:]


# ------------------------------------------------------------------------------------------
# the plugin (loaded by the child pytest above with -p test_granian)


def settings_env(settings: Any) -> dict[str, str]:
    """``ROOST_*`` variables for every field set on ``settings`` (what the process reads)."""
    from pydantic import SecretStr

    env = {}
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float | Path):
            text = str(value)
        elif name == "serve_models":
            text = ",".join(value)
        else:
            text = json.dumps(value, default=str)
        env[f"ROOST_{name.upper()}"] = text
    return env


@contextlib.contextmanager
def granian_gateway(settings: Any, grpc: bool = False) -> Iterator[Any]:
    """``running_gateway``'s contract, served by ``roost serve`` under Granian in a process."""
    from roost_testing import GatewayURL

    env = {**settings_env(settings), **GRANIAN}
    env.pop("ROOST_GRPC_PORT", None)
    with gateway_process(settings.home, env=env, grpc=grpc, name="granian-suite") as process:
        STARTED[0] += 1
        url = GatewayURL(process.url)
        url.grpc_address = process.grpc_address
        yield url


STARTED = [0]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(UNDER_GRANIAN_ENV) != "1":
        return
    import roost_testing

    roost_testing.running_gateway = granian_gateway  # type: ignore[assignment]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if os.environ.get(UNDER_GRANIAN_ENV) == "1":
        terminalreporter.write_line(f"gateways started under Granian: {STARTED[0]}")
