"""`roost serve --workers 2`: two processes on one port, each writing its own log files."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from roost_testing import GatewayProcess, deploy_model, make_linear_onnx

from registry import Registry, RoostSettings
from warehouse import run_query

pytestmark = pytest.mark.slow

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


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
        ids = []
        for i in range(200):
            # a fresh connection each time lets the kernel hand it to either worker
            resp = httpx.post(f"{url}/v2/models/m/infer", json=BODY | {"id": f"req-{i}"})
            assert resp.status_code == 200
            ids.append(resp.json()["id"])
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
        metrics = httpx.get(f"{url}/metrics").text
        served = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("roost_requests_total{") and 'status="200"' in line
        )
        assert served == 200, "metrics must aggregate both workers"
    finally:
        gateway.stop()
