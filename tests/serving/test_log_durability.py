"""The gateway answers only once its prediction-log record is as durable as
``log_durability`` asks, over a real uvicorn server: a record the log cannot sync is not
acknowledged (503), the next one is, at ``fsync`` and ``write``."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

import warehouse.wal as wal_module
from registry import Registry, RoostSettings
from warehouse import run_query

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def test_an_unsynced_record_is_never_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fsync``: the REST answer waits for the record's fdatasync (which overlaps the
    response's encoding); a failed sync answers 503 with ``Retry-After`` and counts a 503."""
    real = wal_module._sync_data
    fail = {"on": False}

    def sync(fd: int) -> None:
        if fail["on"]:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(wal_module, "_sync_data", sync)
    settings = RoostSettings(home=tmp_path, log_flush_interval_s=0.2)
    registry = Registry.from_settings(settings)
    deploy_model(registry, "m", make_linear_onnx(seed=2))
    registry.close()
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        ok = client.post("/v2/models/m/infer", json={**ROW, "id": "before"})
        assert ok.status_code == 200
        fail["on"] = True
        refused = client.post("/v2/models/m/infer", json={**ROW, "id": "refused"})
        fail["on"] = False
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "prediction log" in refused.json()["error"]
        assert "Traceback" not in refused.text
        after = client.post("/v2/models/m/infer", json={**ROW, "id": "after"})
        assert after.status_code == 200
        metrics = client.get("/metrics").text
        assert any(
            line.startswith("roost_requests_total") and 'status="503"' in line
            for line in metrics.splitlines()
        ), "the refused request is counted as a 503"
    _, rows = run_query(settings.logs_dir, "select request_id from predictions order by 1")
    assert [r for (r,) in rows] == ["after", "before"]


def test_write_level_answers_and_logs(tmp_path: Path) -> None:
    settings = RoostSettings(
        home=tmp_path, log_flush_interval_s=0.2, log_durability="write", log_sync_interval_ms=2
    )
    registry = Registry.from_settings(settings)
    deploy_model(registry, "m", make_linear_onnx(seed=2))
    registry.close()
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=10) as client:
        for i in range(5):
            answer = client.post("/v2/models/m/infer", json={**ROW, "id": f"w{i}"})
            assert answer.status_code == 200
    _, rows = run_query(settings.logs_dir, "select request_id from predictions order by 1")
    assert [r for (r,) in rows] == [f"w{i}" for i in range(5)]
