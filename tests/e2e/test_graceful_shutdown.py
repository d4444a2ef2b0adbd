"""SIGTERM drains a real gateway: not ready at once, new requests refused, in-flight ones answered,
every answered request logged, exit status 0."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from roost_testing import GatewayProcess, deploy_model, make_mlp_onnx

from registry import Registry, RoostSettings
from warehouse import WAL_DIR, run_query

pytestmark = pytest.mark.slow

SLOW_ROWS = 6000  # one request of this many rows keeps the MLP busy for a few hundred ms
IN_FLIGHT = 6


def _body(request_id: str, rows: int) -> dict[str, Any]:
    data = np.random.default_rng(0).random((rows, 4), dtype=np.float32)
    return {
        "id": request_id,
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": data.ravel().tolist()}
        ],
    }


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.from_settings(RoostSettings(home=home))
    # max_batch_size 0: every request runs alone, so the in-flight ones queue behind each other
    deploy_model(
        registry, "slow", make_mlp_onnx(hidden=768, layers=6), config={"max_batch_size": 0}
    )
    registry.close()
    gateway = GatewayProcess(
        home,
        env={"ROOST_DRAIN_DELAY_S": "3.0", "ROOST_DRAIN_GRACE_S": "30"},
        log_path=tmp_path / "gateway.log",
    ).start()
    url, grpc_address = gateway.url, gateway.grpc_address
    assert grpc_address is not None
    try:
        gateway.wait_ready(60)
        started = time.perf_counter()
        assert httpx.post(f"{url}/v2/models/slow/infer", json=_body("warm", SLOW_ROWS)).is_success
        one_request_s = time.perf_counter() - started

        results: dict[str, int] = {}
        finished: dict[str, float] = {}
        lock = threading.Lock()

        def send(request_id: str) -> None:
            try:
                resp = httpx.post(
                    f"{url}/v2/models/slow/infer", json=_body(request_id, SLOW_ROWS), timeout=60
                )
                status = resp.status_code
                if status == 200:
                    assert resp.json()["id"] == request_id
            except httpx.TransportError:
                status = -1
            with lock:
                results[request_id] = status
                finished[request_id] = time.perf_counter()

        ids = [f"inflight-{i}" for i in range(IN_FLIGHT)]
        senders = [threading.Thread(target=send, args=(r,)) for r in ids]
        for thread in senders:
            thread.start()
        # SIGTERM once the gateway holds them all (the first running, the rest queued): on a
        # busy machine the senders may need longer than one request to build and send bodies
        _wait_until_queued(url, "slow", IN_FLIGHT - 1, timeout_s=30)
        gateway.send_signal(signal.SIGTERM)
        sigterm_at = time.perf_counter()

        # during the drain delay: not ready (with the reason), new inference refused, still live
        time.sleep(0.15)
        ready = httpx.get(f"{url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reasons": ["draining"]}
        refused = httpx.post(f"{url}/v2/models/slow/infer", json=_body("late", 1), timeout=5)
        assert refused.status_code == 503 and "draining" in refused.json()["error"]
        v1 = httpx.post(f"{url}/v1/models/slow:predict", json={"instances": [[1, 2, 3, 4]]})
        assert v1.status_code == 503
        assert httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200
        _check_grpc_refused(grpc_address)

        for thread in senders:
            thread.join(timeout=60)
        exit_code = gateway.wait(60)
        output = gateway.output()
        assert exit_code == 0, output[-3000:]
        assert results == dict.fromkeys(ids, 200), results
        # the drain waited for them: some were answered after SIGTERM (and after the delay)
        late = [t - sigterm_at for t in finished.values() if t > sigterm_at]
        print(
            f"\none request {one_request_s:.3f}s; {len(late)}/{IN_FLIGHT} answered after SIGTERM, "
            f"the last {max(late, default=0):.2f}s after; exit {exit_code}"
        )
        assert late
        assert "Traceback" not in output, output[-3000:]

        # the log was sealed on the way out: every answered request is in Parquet, once
        _, rows = run_query(
            home / "logs", "select request_id, count(*) from predictions group by 1 order by 1"
        )
        assert rows == sorted([(r, 1) for r in ids] + [("warm", 1)])
        assert not list((home / "logs" / WAL_DIR).glob("*/seg-*.arrow"))
    finally:
        gateway.kill()


def _wait_until_queued(url: str, model: str, depth: int, timeout_s: float) -> None:
    """Poll /metrics until ``model``'s queue holds ``depth`` requests."""
    pattern = re.compile(rf'^roost_queue_depth{{[^}}]*model="{model}"[^}}]*}} (\S+)$', re.M)
    deadline = time.monotonic() + timeout_s
    seen = 0.0
    while time.monotonic() < deadline:
        match = pattern.search(httpx.get(f"{url}/metrics", timeout=5).text)
        seen = float(match.group(1)) if match else 0.0
        if seen >= depth:
            return
        time.sleep(0.01)
    raise AssertionError(f"{model}'s queue reached {seen:g} requests, not {depth}, in {timeout_s}s")


def _check_grpc_refused(address: str) -> None:
    """A new gRPC inference call during the drain ends UNAVAILABLE."""
    grpc = pytest.importorskip("grpc")
    service = pytest.importorskip("tritonclient.grpc.service_pb2")
    stubs = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
    request = service.ModelInferRequest(model_name="slow", id="late-grpc")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    with grpc.insecure_channel(address) as channel:
        stub = stubs.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.ModelInfer(request, timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
