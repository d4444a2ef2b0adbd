"""Operator jobs executed in process against a real registry in a temporary ROOST_HOME."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult, JobDefinition
from roost_testing import deploy_model, make_linear_onnx

from assets.resources import RegistryResource
from assets.spec import parse_spec, write_spec
from orchestration.operator_jobs import pause_rollout, promote, resume_rollout, rollback
from registry import Registry, RoostSettings, State
from registry.rollout import RolloutPhase

MODEL = "churn"


@pytest.fixture
def two(registry: Registry) -> Registry:
    """``churn``: v1 in production, v2 VALIDATED."""
    deploy_model(registry, MODEL, make_linear_onnx(seed=1))
    info = registry.register_version(MODEL, make_linear_onnx(seed=2))
    registry.transition(MODEL, info.version, State.VALIDATING, reason="t")
    registry.transition(MODEL, info.version, State.VALIDATED, reason="t")
    return registry


def run(job: JobDefinition, settings: RoostSettings, op: str, config: dict[str, Any],
        instance: DagsterInstance | None = None, **tags: str) -> ExecuteInProcessResult:
    return job.execute_in_process(
        run_config={"ops": {op: {"config": config}}},
        resources={"registry": RegistryResource(home=str(settings.home))},
        instance=instance or DagsterInstance.ephemeral(), tags=tags or None,
        raise_on_error=False,
    )


def test_promote_starts_the_rollout_with_the_run_as_actor(
    two: Registry, settings: RoostSettings
) -> None:
    instance = DagsterInstance.ephemeral()
    result = run(promote, settings, "start_rollout",
                 {"model": MODEL, "version": 2, "schedule": [10, 100],
                  "run_staging_tests": False}, instance)
    assert result.success
    status = two.get_rollout(MODEL)
    assert status is not None and status.phase is RolloutPhase.STAGING
    assert status.schedule == (10.0, 100.0) and status.actor == f"dagster:{result.run_id}"
    assert two.get_version(MODEL, 2).state is State.STAGING
    tags = instance.get_run_by_id(result.run_id).tags  # type: ignore[union-attr]
    assert tags["roost/model"] == MODEL and tags["roost/action"] == "promote"
    assert tags["roost/result"] == "STAGING"


def test_promote_refusal_fails_the_run_with_the_registry_message(
    two: Registry, settings: RoostSettings
) -> None:
    result = run(promote, settings, "start_rollout",
                 {"model": MODEL, "version": 9, "run_staging_tests": False})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "9" in str(failure.event_specific_data)
    assert two.get_rollout(MODEL) is None


def test_pause_and_resume_with_the_launching_user_as_actor(
    two: Registry, settings: RoostSettings
) -> None:
    two.start_rollout(MODEL, 2, actor="ops", reason="v2")
    paused = run(pause_rollout, settings, "pause_rollout_op",
                 {"model": MODEL, "reason": "looks odd"}, user="alice@example.com")
    assert paused.success and paused.output_for_node("pause_rollout_op")["paused"] is True
    status = two.get_rollout(MODEL)
    assert status is not None and status.paused and status.actor == "dagster:alice@example.com"
    assert status.reason == "looks odd"
    resumed = run(resume_rollout, settings, "resume_rollout_op",
                  {"model": MODEL, "reason": "fine after all"})
    assert resumed.success
    assert not two.get_rollout(MODEL).paused  # type: ignore[union-attr]
    actions = [r.action for r in two.audit_records(MODEL)]
    assert "rollout_pause" in actions and "rollout_resume" in actions


def test_rollback_brings_the_replaced_version_back(
    two: Registry, settings: RoostSettings
) -> None:
    two.deploy(MODEL, 2, reason="v2")
    assert two.get_version(MODEL, 1).state is State.DEPRECATED
    result = run(rollback, settings, "rollback_op",
                 {"model": MODEL, "reason": "v2 complaints"}, user="bob")
    assert result.success
    assert result.output_for_node("rollback_op") == {
        "model": MODEL, "production_version": 1, "previous_version": 2}
    assert two.get_version(MODEL, 1).state is State.PRODUCTION
    assert two.get_policy(MODEL).production == 1
    record = [r for r in two.audit_records(MODEL) if r.actor == "dagster:bob"]
    assert record and any("v2 complaints" in str(r.details) for r in record)


def spec_with_held_out_data(settings: RoostSettings, tmp_path: Path, schedule: list[float]) -> None:
    """A spec for MODEL with 40 held-out rows (label: a > 0) and in-process staging tests."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 4)).astype(np.float32),
                         columns=["a", "b", "c", "d"])
    frame["label"] = (frame["a"] > 0).astype(int)
    frame.to_csv(tmp_path / "held.csv", index=False)
    write_spec(settings.home, parse_spec({
        "name": MODEL, "held_out": {"path": str(tmp_path / "held.csv")},
        "staging": {"replay_sample": 20, "gateway": "in_process", "latency_budget_ms": 2000},
        "canary": {"schedule": schedule},
    }))


def test_promote_runs_the_staging_tests_and_starts_the_canary(
    two: Registry, settings: RoostSettings, tmp_path: Path
) -> None:
    spec_with_held_out_data(settings, tmp_path, schedule=[2, 100])
    result = run(promote, settings, "start_rollout", {"model": MODEL, "version": 2})
    assert result.success, result.all_events
    status = two.get_rollout(MODEL)
    assert status is not None and (status.phase, status.percent) == (RolloutPhase.CANARY, 2.0)
    assert status.schedule == (2.0, 100.0)  # the spec's schedule
    materialized = {e.asset_key.path[0] for e in result.get_asset_materialization_events()
                    if e.asset_key is not None}
    assert materialized == {f"{MODEL}_staging_tests", f"{MODEL}_canary_deployment"}


def test_roost_promote_runs_the_staging_tests_and_starts_the_canary(
    two: Registry, settings: RoostSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's `roost promote` does what the `promote` job does."""
    from click.testing import CliRunner

    from orchestration.cli import main

    spec_with_held_out_data(settings, tmp_path, schedule=[5, 100])
    monkeypatch.setenv("ROOST_HOME", str(settings.home))
    out = CliRunner().invoke(main, ["promote", MODEL, "2", "--actor", "carol"])
    assert out.exit_code == 0, out.output
    assert "staging tests passed" in out.output and "canary at 5%" in out.output
    status = two.get_rollout(MODEL)
    assert status is not None and (status.phase, status.percent) == (RolloutPhase.CANARY, 5.0)
    actions = [(r.action, r.actor) for r in two.audit_records(MODEL)]
    for step in ("rollout_start", "rollout_staging_passed", "rollout_canary"):
        assert (step, "carol") in actions, actions
