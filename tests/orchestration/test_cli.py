"""The ``roost`` command line, run as a real subprocess on a registry in a temporary ROOST_HOME."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cli_testing import as_json, failed_cleanly, ok, roost, roost_executable
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


# -- issue 16: the home the CLI works on, and registering bytes it already has ------------------


def _roost_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``roost`` run in ``cwd`` without ROOST_HOME (plus ``env``), as in a fresh shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    return subprocess.run(
        [roost_executable(), *args],
        capture_output=True, text=True, env={**clean, **env}, cwd=cwd, timeout=120,
    )


READ_ONLY = [
    ["models"],
    ["versions", "m"],
    ["show", "m", "1"],
    ["audit", "log"],
    ["audit", "verify"],
    ["sql", "select count(*) from predictions"],
    ["traffic", "show", "m"],
    ["keys", "list"],
    ["config", "m", "1"],
]


def test_read_only_commands_never_create_a_registry(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in READ_ONLY:
        err = failed_cleanly(_roost_in(elsewhere, *args))
        assert err.startswith(
            f"error: no Roost registry at {elsewhere}/.roost/registry.db (ROOST_HOME is not set "
            f"and no .roost/registry.db exists in {elsewhere} or its parents); "
            "point the CLI at one with `export ROOST_HOME=/path/to/.roost`"
        ), (args, err)
    missing = tmp_path / "missing-home"
    err = failed_cleanly(_roost_in(elsewhere, "models", ROOST_HOME=str(missing)))
    assert f"no Roost registry at {missing}/registry.db (ROOST_HOME={missing})" in err
    assert sorted(p.name for p in elsewhere.iterdir()) == [] and not missing.exists()


def test_the_cli_finds_the_home_above_the_current_directory(
    tmp_path: Path, onnx_file: Path
) -> None:
    project = tmp_path / "project"
    deeper = project / "src" / "deeper"
    deeper.mkdir(parents=True)
    done = _roost_in(project, "register", str(onnx_file), "--model", "m")
    assert ok(done).startswith("registered m version 1")
    assert f"created a new registry in {project}/.roost" in done.stderr
    assert (project / ".roost" / "registry.db").is_file()

    assert [m["name"] for m in as_json(_roost_in(deeper, "models", "--json"))] == ["m"]
    assert ok(_roost_in(deeper, "sql", "select count(*) as n from predictions")) == "N\n0\n"

    shell = (
        f'eval "$({roost_executable()} env)"; echo $ROOST_HOME $ROOST_HTTP $ROOST_GRPC '
        '$DAGSTER_UI'
    )
    printed = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, cwd=deeper, timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ROOST_")},
             "ROOST_HTTP_PORT": "9123", "ROOST_GRPC_PORT": "9124", "ROOST_DAGSTER_PORT": "9125"},
    )
    assert printed.stdout == (
        f"{project}/.roost http://127.0.0.1:9123 127.0.0.1:9124 http://127.0.0.1:9125\n"
    ), printed.stderr
    # ROOST_HOME wins over discovery
    other = tmp_path / "other-home"
    ok(roost(other, "register", str(onnx_file), "--model", "n"))
    assert [m["name"] for m in as_json(_roost_in(deeper, "models", "--json",
                                                 ROOST_HOME=str(other)))] == ["n"]


def test_registering_bytes_it_already_has_names_the_version_and_state(
    home: Path, tmp_path: Path
) -> None:
    first, second = make_linear_onnx(seed=11), make_linear_onnx(seed=12)
    reg = Registry.from_settings(RoostSettings(home=home))
    try:
        deploy_model(reg, "churn", first)
        deploy_model(reg, "churn", second)  # version 1 -> DEPRECATED
    finally:
        reg.close()
    path = tmp_path / "churn.onnx"
    path.write_bytes(first)

    err = failed_cleanly(roost(home, "register", str(path), "--model", "churn"))
    assert err.startswith(
        f"error: {path} is already churn version 1 (state DEPRECATED, sha256:"
    ), err
    assert "nothing registered. Pass --reuse to use that version" in err
    assert ok(roost(home, "register", str(path), "--model", "churn", "--reuse")).startswith(
        "reusing churn version 1 (state DEPRECATED, sha256:"
    )
    shown = as_json(roost(home, "register", str(path), "--model", "churn", "--reuse", "--json"))
    assert (shown["version"], shown["state"], shown["created"]) == (1, "DEPRECATED", False)
    assert [v["version"] for v in as_json(roost(home, "versions", "churn", "--json"))] == [1, 2]


def test_register_a_zipmap_export_says_what_it_rewrote(home: Path, tmp_path: Path) -> None:
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    path = tmp_path / "iris.onnx"
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    out = ok(roost(home, "register", str(path), "--model", "iris"))
    assert out.splitlines()[1].startswith(
        "  zipmap -> probability tensor: output 'output_probability' is FP32 [N, 3], one column "
        "per class in this order: 0, 1, 2"
    )
