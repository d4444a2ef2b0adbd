"""`roost serve --workers 2`: two processes on one port (one ``SO_REUSEPORT`` socket each, see
serving/workers.py), each writing its own log files, one ``/metrics`` over both
(serving/metrics_share.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from roost_testing import GatewayProcess, deploy_model, free_port, make_linear_onnx

from registry import Registry, RoostSettings
from serving.metrics_share import SNAPSHOT_INTERVAL_S
from warehouse import run_query

pytestmark = pytest.mark.slow

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
REPO = Path(__file__).resolve().parents[2]


def sockets_by_worker(gateway: GatewayProcess, status: str) -> dict[int, int]:
    """TCP sockets on the gateway's port in ``status`` (LISTEN, ESTABLISHED), per process."""
    assert gateway.proc is not None
    found = {}
    for proc in psutil.Process(gateway.proc.pid).children(recursive=True):
        try:
            n = sum(
                1 for c in proc.net_connections("tcp")
                if c.laddr and c.laddr.port == gateway.port and c.status == status
            )
        except psutil.Error:  # gone meanwhile
            continue
        if n:
            found[proc.pid] = n
    return found


def served(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("roost_requests_total{") and 'status="200"' in line
    )


def test_two_workers_share_the_port_and_log_every_request_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    registry.close()
    gateway = GatewayProcess(
        home, workers=2, env={"ROOST_LOG_FLUSH_INTERVAL_S": "0.2"},
        log_path=tmp_path / "gateway.log",
    ).start()
    url = gateway.url
    try:
        gateway.wait_ready(90)
        deadline = time.monotonic() + 60
        while len(sockets_by_worker(gateway, "LISTEN")) < 2:  # each listens once loaded
            assert time.monotonic() < deadline, "the second worker never listened"
            time.sleep(0.2)
        listening = sockets_by_worker(gateway, "LISTEN")
        assert set(listening.values()) == {1}, "one listening socket per worker"

        # A burst of connects, as a load balancer's pool or wrk opens them: the kernel spreads
        # them over the two workers' sockets (all 32 on one: probability 2**-31).
        burst = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(32)]
        try:
            deadline = time.monotonic() + 10
            while sum(sockets_by_worker(gateway, "ESTABLISHED").values()) < 32:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            per_worker = sockets_by_worker(gateway, "ESTABLISHED")
            assert set(per_worker) == set(listening), per_worker
            assert min(per_worker.values()) >= 4, per_worker
        finally:
            for conn in burst:
                conn.close()

        for i in range(200):
            # a fresh connection each time lets the kernel hand it to either worker
            resp = httpx.post(f"{url}/v2/models/m/infer", json=BODY | {"id": f"req-{i}"})
            assert resp.status_code == 200
        query = (
            "select count(*), count(distinct request_id), "
            "count(distinct regexp_extract(filename, 'part-(.*)-[0-9]+-[0-9]+\\.parquet', 1)) "
            f"from read_parquet('{home}/logs/predictions/**/*.parquet', filename=true)"
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                _, rows = run_query(home / "logs", query)
            except Exception:  # no files yet
                rows = [(0, 0, 0)]
            if rows[0][0] >= 200:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        total, distinct, writers = rows[0]
        assert (total, distinct) == (200, 200)
        assert writers == 2, "both workers should have served (and logged) requests"
        assert served(url) == 200, "metrics must aggregate both workers"

        # A killed worker's counts stay in /metrics (its last snapshot), once.
        time.sleep(SNAPSHOT_INTERVAL_S + 0.5)
        os.kill(min(listening), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while min(listening) in sockets_by_worker(gateway, "LISTEN"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert served(url) == 200, "a dead worker's counts must not vanish"
    finally:
        assert gateway.stop() == 0


def test_a_served_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """SO_REUSEPORT would let a second server share the port silently: it is checked first."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [sys.executable, "-m", "orchestration", "serve", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "ROOST_HOME": str(tmp_path / "home"), "ROOST_GRPC_PORT": "0"},
        )
    assert done.returncode == 1
    assert f"--port: cannot serve on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
