"""``roost promote``, ``roost rollout ...``, ``roost rollback`` and ``roost transition --force``,
run as real subprocesses on a temporary ROOST_HOME (the registry is set up and checked
in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_testing import as_json, failed_cleanly, ok, roost
from roost_testing import deploy_model, make_linear_onnx

from registry import Registry, RoostSettings, State


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """``m``: v1 PRODUCTION, v2 and v3 VALIDATED."""
    home = tmp_path / "roost"
    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        deploy_model(registry, "m", make_linear_onnx(seed=1))
        for seed in (2, 3):
            v = registry.register_version("m", make_linear_onnx(seed=seed)).version
            registry.transition("m", v, State.VALIDATING, reason="t")
            registry.transition("m", v, State.VALIDATED, reason="t")
    finally:
        registry.close()
    return home


def states(home: Path) -> dict[int, str]:
    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        return {v.version: v.state.value for v in registry.list_versions("m")}
    finally:
        registry.close()


def walk_to_canary(home: Path) -> None:
    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        registry.staging_passed("m", 2, evidence={"replayed": 200}, actor="dagster")
        registry.begin_canary("m", 2, actor="dagster")
    finally:
        registry.close()


def test_promote_status_pause_resume_cancel(home: Path) -> None:
    out = ok(roost(home, "promote", "m", "2", "--schedule", "2,20,100", "--actor", "alice",
                   "--no-staging-tests"))
    assert out.startswith("m: rollout of version 2 is STAGING") and "2%, 20%, 100%" in out
    refused = failed_cleanly(roost(home, "promote", "m", "3", "--no-staging-tests"))
    assert "already has an active rollout: version 2 is STAGING" in refused
    walk_to_canary(home)
    table = ok(roost(home, "rollout", "status", "m"))
    assert "CANARY" in table and "1 of 3" in table and "next           20%" in table
    assert "PAUSED" in ok(roost(home, "rollout", "pause", "m", "--reason", "dashboards"))
    status = as_json(roost(home, "rollout", "status", "m", "--json"))
    assert (status["phase"], status["paused"], status["percent"]) == ("CANARY", True, 2.0)
    assert status["schedule"] == [2.0, 20.0, 100.0] and status["reason"] == "dashboards"
    assert "PAUSED" not in ok(roost(home, "rollout", "resume", "m"))
    assert "step 2 of 3 at 20%" in ok(roost(home, "rollout", "advance", "m"))
    assert "CANCELLED" in ok(roost(home, "rollout", "cancel", "m", "--reason", "not today"))
    assert states(home)[2] == "ROLLBACK"
    again = failed_cleanly(roost(home, "rollout", "pause", "m"))
    assert "is CANCELLED, not" in again


def test_bad_schedule_and_unknown_model(home: Path) -> None:
    bad = failed_cleanly(roost(home, "promote", "m", "2", "--schedule", "5,1,100"))
    assert "schedule[1]: expected percents in increasing order" in bad
    assert "unknown model 'nope'" in failed_cleanly(roost(home, "rollout", "status", "nope"))
    assert as_json(roost(home, "rollout", "status", "m", "--json")) is None


def test_rollback_and_rollback_to(home: Path) -> None:
    for version in ("2", "3"):
        ok(roost(home, "deploy", "m", version))
    assert states(home) == {1: "DEPRECATED", 2: "DEPRECATED", 3: "PRODUCTION"}
    out = ok(roost(home, "rollback", "m", "--reason", "p99 up", "--actor", "bob"))
    assert out == "m: production version is 2 again (was 3)\n"
    assert ok(roost(home, "rollback", "m", "--to", "1")).startswith("m: production version is 1")
    assert states(home) == {1: "PRODUCTION", 2: "DEPRECATED", 3: "DEPRECATED"}
    refused = failed_cleanly(roost(home, "rollback", "m", "--to", "1"))
    assert "already the production version" in refused
    by_hand = failed_cleanly(roost(home, "transition", "m", "2", "PRODUCTION", "--reason", "x"))
    assert "only allowed as a rollback: use `roost rollback" in by_hand


def test_transition_force(home: Path) -> None:
    refused = failed_cleanly(roost(home, "transition", "m", "1", "DEPRECATED", "--reason", "x"))
    assert "roost rollback m" in refused and "--force" in refused
    assert states(home)[1] == "PRODUCTION"
    out = ok(roost(home, "transition", "m", "1", "DEPRECATED", "--reason", "retire", "--force"))
    assert out == "m version 1 is now DEPRECATED\n"
