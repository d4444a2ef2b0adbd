"""The ``roost`` command line, run as a real subprocess on a registry in a temporary ROOST_HOME."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from cli_testing import as_json, failed_cleanly, ok, roost
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings

FEATURES = ["a", "b", "c", "d"]
INFER_BODY = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
}












@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "roost"


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "linear.onnx"
    path.write_bytes(make_linear_onnx(seed=3))
    return path


def test_register_list_transition_deploy_and_audit(home: Path, onnx_file: Path) -> None:
    out = ok(roost(home, "register", str(onnx_file), "--model", "m", "--feature-names",
                   "a,b,c,d", "--metric", "auc=0.9", "--tag", "team=x"))
    assert out.startswith("registered m version 1 (sha256:")

    assert as_json(roost(home, "models", "--json")) == [
        {"name": "m", "description": "", "versions": 1, "production_version": None}
    ]
    [listed] = as_json(roost(home, "versions", "m", "--json"))
    assert listed["version"] == 1 and listed["state"] == "REGISTERED"
    assert listed["metrics"] == {"auc": 0.9}
    assert listed["tags"] == {"team": "x"}
    assert listed["signature"]["feature_names"] == FEATURES
    assert listed["signature"]["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert listed["lineage"] == {"source_path": str(onnx_file.resolve())}

    shown = as_json(roost(home, "show", "m", "1"))
    assert shown == listed

    # Deploying a version that is not VALIDATED fails cleanly.
    err = failed_cleanly(roost(home, "deploy", "m", "1"))
    assert "REGISTERED" in err and "only a VALIDATED version" in err

    assert ok(roost(home, "transition", "m", "1", "validating", "--reason", "x")) == (
        "m version 1 is now VALIDATING\n"
    )
    assert ok(roost(home, "transition", "m", "1", "VALIDATED", "--reason", "x")) == (
        "m version 1 is now VALIDATED\n"
    )
    err = failed_cleanly(roost(home, "transition", "m", "1", "production", "--reason", "x"))
    assert err.startswith("error: transition VALIDATED -> PRODUCTION is not allowed")
    assert "allowed from VALIDATED: STAGING" in err

    assert ok(roost(home, "deploy", "m", "1")) == "m: production version is 1\n"

    out = ok(roost(home, "audit", "verify"))
    assert out.startswith("audit trail intact:")

    # Tamper with one record directly in the database: verify names it and exits 1.
    with sqlite3.connect(home / "registry.db") as db:
        (record_id,) = db.execute("select id from audit_log where action = 'deploy'").fetchone()
        db.execute(
            "update audit_log set details = ? where id = ?",
            (json.dumps({"previous": None, "reason": "forged"}), record_id),
        )
    db.close()
    done = roost(home, "audit", "verify")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"record {record_id} was modified" in done.stderr
    assert "TAMPERED" in done.stderr


def test_bad_input_fails_cleanly(home: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an ONNX model")
    err = failed_cleanly(roost(home, "register", str(junk), "--model", "m"))
    assert err.startswith("error: artifact")
    assert "ONNX" in err

    err = failed_cleanly(roost(home, "versions", "nosuch"))
    assert err == "error: unknown model 'nosuch'\n"


def test_sql_over_the_prediction_log_of_a_live_gateway(home: Path) -> None:
    settings = RoostSettings(home=home, log_flush_interval_s=0.2)
    reg = Registry.from_settings(settings)
    try:
        deploy_model(reg, "m", make_linear_onnx(seed=3), feature_names=FEATURES)
    finally:
        reg.close()

    sent = 3
    with running_gateway(settings) as base, httpx.Client(base_url=base, timeout=10) as client:
        for _ in range(sent):
            response = client.post("/v2/models/m/infer", json=INFER_BODY)
            assert response.status_code == 200, response.text

        query = "select model, count(*) as n from predictions group by model"
        deadline = time.monotonic() + 10
        while True:
            rows = as_json(roost(home, "sql", query, "--json"))
            if rows == [{"model": "m", "n": sent}] or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert rows == [{"model": "m", "n": sent}]

    # Only read-only queries are accepted.
    err = failed_cleanly(roost(home, "sql", "delete from predictions"))
    assert err == "error: query must be a read-only statement (SELECT), got DELETE\n"


def test_config_sets_serving_knobs(home: Path, onnx_file: Path) -> None:
    ok(roost(home, "register", str(onnx_file), "--model", "m"))
    shown = as_json(
        roost(
            home, "config", "m", "1", "--set", "max_batch_size=8",
            "--set", "preferred_batch_sizes=[4, 8]", "--set", "max_queue_delay_ms=2",
        )
    )
    assert shown["stored"] == {
        "max_batch_size": 8, "preferred_batch_sizes": [4, 8], "max_queue_delay_ms": 2,
    }
    assert shown["effective"]["max_queue_size"] == 1024
    unset = as_json(roost(home, "config", "m", "1", "--unset", "max_queue_delay_ms"))
    assert "max_queue_delay_ms" not in unset["stored"]
    assert "preferred_batch_sizes: each must be <= max_batch_size" in failed_cleanly(
        roost(home, "config", "m", "1", "--set", "preferred_batch_sizes=[16]")
    )
    usage = roost(home, "config", "m", "1", "--set", "batch=3")  # a usage error: exit 2
    assert usage.returncode == 2 and "unknown knob 'batch'" in usage.stderr
