"""Failover: two real gateway processes, one SIGKILLed under load, a client retrying on the
other; and ``roost serve --workers 2`` replacing a SIGKILLed worker.

The failover run is ``benchmarks/failover.py`` (the figure in benchmarks/RESULTS.md) in
miniature: each request carries a unique id; every acknowledged one must be in the prediction
logs of the two processes (the killed one's write-ahead log is recovered when it is restarted),
read with ``warehouse.run_query`` once both are stopped.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from roost_testing import GatewayProcess, deploy_model, make_linear_onnx

from registry import Registry, RoostSettings
from warehouse import run_query

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def failover_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "roost_failover_bench", REPO / "benchmarks" / "failover.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_sigkill_one_of_two_gateways_under_load(tmp_path: Path) -> None:
    failover = failover_module()
    home = tmp_path / "home"
    failover.deploy(home)
    result = failover.run_failover(
        home, tmp_path, concurrency=6, before_s=2.0, after_s=6.0, restart_after_s=1.5,
        tag="e2e",
    )
    print(
        f"\nfailover: {result.requests} requests, success {result.success_rate:.4%} "
        f"(first try {result.first_try_success_rate:.4%}), retried {result.retried} "
        f"{result.retry_reasons}, outage {result.outage_s:.2f} s, longest gap "
        f"{result.longest_gap_s:.3f} s, capacity back {result.capacity_back_s} s, "
        f"logged {result.logged_acknowledged}/{result.acknowledged} (twice: {result.logged_twice})"
    )
    assert result.requests > 500
    assert result.success_rate >= 0.999, result.failures
    assert result.outage_s < 30
    assert result.longest_gap_s < 2.0
    assert result.retried > 0, "the kill never reached a request: nothing was measured"
    assert result.capacity_back_s is not None and result.capacity_back_s < 30
    assert result.exit_codes == [0, 0]
    # No acknowledged request is lost: read both processes' logs again, independently.
    _, rows = run_query(
        home / "logs",
        "select request_id, count(*) from predictions where request_id like 'e2e-%' "
        "and status = 200 group by request_id",
    )
    logged = {request_id: int(n) for request_id, n in rows}
    missing = [i for i in result.acknowledged_ids if i not in logged]
    assert len(result.acknowledged_ids) == result.ok
    assert not missing, f"{len(missing)} acknowledged request(s) not logged: {missing[:5]}"
    assert result.lost == 0
    # a retried request may be logged by both (the dead gateway logged it, then died before
    # answering): at-least-once, never more than one row per gateway
    assert all(n <= 2 for n in logged.values())


def test_multi_worker_supervisor_replaces_a_killed_worker(tmp_path: Path) -> None:
    """uvicorn's supervisor (``roost serve --workers 2``) notices a SIGKILLed worker within
    about half a second and starts a new one, which serves once it has loaded its models; the
    surviving worker answers meanwhile."""
    home = tmp_path / "home"
    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    registry.close()
    gateway = GatewayProcess(
        home, workers=2, grpc=False, log_path=tmp_path / "gateway.log"
    ).start()
    assert gateway.proc is not None
    proc = gateway.proc
    url = gateway.url
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}

    def workers() -> list[int]:
        found = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        alive = []
        for pid in found:
            try:  # multiprocessing's resource tracker is a child too; a pid may just be gone
                command = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            except OSError:
                continue
            if command and "resource_tracker" not in command:  # a zombie's is empty
                alive.append(int(pid))
        return sorted(alive)

    def serves() -> bool:
        try:  # generous: a replacement worker importing its libraries starves a 2-core machine
            return httpx.post(f"{url}/v2/models/m/infer", json=body, timeout=15).status_code == 200
        except httpx.TransportError:
            return False

    try:
        deadline = time.monotonic() + 60
        while not (len(workers()) == 2 and serves()):
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.2)
        first, second = workers()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while first in workers() or len(workers()) < 2:
            # each worker has its own SO_REUSEPORT socket: a connect the kernel queued on the
            # killed worker's socket in the instant it died is reset (docs/workers.md); the
            # client's retry reaches the survivor
            assert serves() or serves(), "the surviving worker stopped answering"
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.05)
        (replacement,) = set(workers()) - {second}
        # Kill the other original: only the replacement (and, once loaded, the next one) is
        # left to answer, so a 200 now comes from a replacement.
        time.sleep(1.0)
        os.kill(second, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not serves():
            assert time.monotonic() < deadline, "the replacement worker never served"
            time.sleep(0.1)
        assert replacement in workers() and proc.poll() is None
    finally:
        gateway.stop()
