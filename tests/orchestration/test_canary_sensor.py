"""The canary sensor against a real registry and real Parquet prediction/feedback logs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from canary_testing import Arm, every, lognormal, write_log
from dagster import (
    AssetObservation,
    DagsterInstance,
    SensorDefinition,
    SensorResult,
    build_sensor_context,
)
from roost_testing import deploy_model, make_linear_onnx

from assets.resources import RegistryResource
from assets.spec import ModelSpec, parse_spec
from orchestration.alert_events import read_alerts
from orchestration.canary_sensor import (
    ACTOR,
    REPORT_JOB,
    canary_rollback_report,
    evaluate_rollout,
    load_cursor,
    make_canary_sensor,
)
from registry import Registry, RoostSettings, State
from registry.rollout import RolloutPhase, RolloutStatus
from warehouse import run_query

MODEL = "churn"
DWELL_S = 60.0
EPSILON = timedelta(milliseconds=1)


@pytest.fixture
def spec() -> ModelSpec:
    return parse_spec({
        "name": MODEL, "held_out": {"demo": "fraud"},
        "canary": {"schedule": [5, 50, 100], "step_interval_s": DWELL_S, "alpha": 0.05,
                   "min_requests": 200},
    })


@pytest.fixture
def canary(registry: Registry, spec: ModelSpec) -> RolloutStatus:
    """``churn``: v1 in production, v2 a canary at 5 % (step 1 of 3)."""
    deploy_model(registry, MODEL, make_linear_onnx(seed=1))
    info = registry.register_version(MODEL, make_linear_onnx(seed=2))
    registry.transition(MODEL, info.version, State.VALIDATING, reason="t")
    registry.transition(MODEL, info.version, State.VALIDATED, reason="t")
    registry.start_rollout(MODEL, 2, schedule=spec.canary.schedule, actor="ops", reason="v2")
    registry.staging_passed(MODEL, 2, evidence={}, actor="dagster")
    return registry.begin_canary(MODEL, 2, actor="dagster")


class Clock:
    """A frozen clock the tests set: just past the current step's dwell time by default."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    def __call__(self) -> datetime:
        assert self.now is not None
        return self.now

    def after_dwell(self, status: RolloutStatus) -> None:
        assert status.step_started_at is not None
        self.now = status.step_started_at + timedelta(seconds=DWELL_S) + EPSILON


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sensor(spec: ModelSpec, clock: Clock) -> SensorDefinition:
    return make_canary_sensor([spec], interval_s=5, clock=clock)


def tick(sensor: SensorDefinition, settings: RoostSettings, cursor: str | None) -> SensorResult:
    context = build_sensor_context(
        instance=DagsterInstance.ephemeral(), cursor=cursor,
        resources={"registry": RegistryResource(home=str(settings.home))},
    )
    result = sensor(context)
    assert isinstance(result, SensorResult)
    return result


def traffic(settings: RoostSettings, status: RolloutStatus, *, canary_n: int = 1000,
            canary_status: Any = None) -> None:
    """Production (0.5 % errors) and canary requests inside the current step's window."""
    assert status.step_started_at is not None
    write_log(
        settings.logs_dir, status.step_started_at,
        Arm("production", 1, "production", 4000, status=every(200, 500)),
        Arm("canary", 2, "canary", canary_n, status=canary_status or every(200, 500),
            latency=lognormal(20, 2)),
        model=MODEL, tag=f"s{status.step}-",
    )


def observations(result: SensorResult) -> list[AssetObservation]:
    return [e for e in result.asset_events if isinstance(e, AssetObservation)]


def test_healthy_canary_steps_through_the_schedule_and_is_promoted(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, sensor: SensorDefinition,
    clock: Clock,
) -> None:
    status, cursor = canary, None
    for expected in (50.0, 100.0, None):
        traffic(settings, status)
        clock.after_dwell(status)
        result = tick(sensor, settings, cursor)
        cursor = result.cursor
        after = registry.get_rollout(MODEL)
        assert after is not None and result.run_requests == []
        (event,) = observations(result)
        assert event.asset_key.path == [f"{MODEL}_canary_deployment"]
        assert event.metadata["decision"].value == "advance"
        assert "Canary analysis" in str(event.metadata["analysis"].value)
        if expected is None:
            assert after.phase is RolloutPhase.PROMOTED
            assert event.metadata["action"].value == "promoted"
        else:
            assert (after.phase, after.percent) == (RolloutPhase.CANARY, expected)
            assert registry.get_policy(MODEL).canary.percent == expected  # type: ignore[union-attr]
        status = after
    assert registry.get_version(MODEL, 2).state is State.PRODUCTION
    assert registry.get_version(MODEL, 1).state is State.DEPRECATED
    assert load_cursor(cursor)["models"][MODEL]["action"] == "promoted"
    idle = tick(sensor, settings, cursor)
    assert "no running canary" in str(idle.skip_reason)
    assert load_cursor(idle.cursor) == {"models": {}}  # the finished rollout is forgotten


def test_degraded_canary_is_rolled_back_in_one_tick_with_an_alert_and_a_run(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, sensor: SensorDefinition,
    clock: Clock,
) -> None:
    traffic(settings, canary, canary_status=every(20, 500))  # 5 % errors against 0.5 %
    assert canary.step_started_at is not None
    clock.now = canary.step_started_at + timedelta(seconds=5)  # no need to wait for the dwell
    result = tick(sensor, settings, None)
    after = registry.get_rollout(MODEL)
    assert after is not None and after.phase is RolloutPhase.ROLLED_BACK
    assert after.decision == "rollback" and "error_rate" in after.reason
    assert registry.get_version(MODEL, 2).state is State.ROLLBACK
    assert registry.get_policy(MODEL).canary is None
    (record,) = [r for r in registry.audit_records(MODEL) if r.action == "rollout_rollback"]
    assert record.actor == ACTOR and "error_rate" in record.details["reason"]
    (alert,) = read_alerts(settings.logs_dir)
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": "CanaryRollback", "model": MODEL, "version": "2",
                               "severity": "critical", "rollout": str(canary.id)}
    assert "error_rate" in alert["annotations"]["description"]
    columns, rows = run_query(settings.logs_dir,
                              "select status, alertname, model, version, labels->>'rollout', "
                              "starts_at = $$" + clock().isoformat() + "$$::timestamptz "
                              "from alerts")
    assert rows == [("firing", "CanaryRollback", MODEL, "2", str(canary.id), True)]
    (event,) = observations(result)
    assert event.metadata["decision"].value == "rollback"
    (run,) = result.run_requests
    assert run.job_name == REPORT_JOB and run.tags["roost/decision"] == "rollback"
    assert run.run_key == f"{MODEL}/rollout-{canary.id}/rollback"
    report = canary_rollback_report.execute_in_process(
        run_config=run.run_config, instance=DagsterInstance.ephemeral(), tags=run.tags
    )
    assert report.success
    (output,) = [e for e in report.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert "error_rate" in str(output.event_specific_data.metadata["reason"].value)  # type: ignore[union-attr]
    again = tick(sensor, settings, result.cursor)  # the rollout is over: nothing more to do
    assert again.run_requests == [] and len(read_alerts(settings.logs_dir)) == 1


def test_too_few_canary_requests_hold_once_per_revision(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, sensor: SensorDefinition,
    clock: Clock,
) -> None:
    traffic(settings, canary, canary_n=100)
    clock.after_dwell(canary)
    first = tick(sensor, settings, None)
    held = registry.get_rollout(MODEL)
    assert held is not None and (held.step, held.decision) == (0, "hold")
    assert held.revision == canary.revision + 1
    assert held.last_analysis is not None and held.last_analysis["decision"] == "hold"
    (event,) = observations(first)
    assert "not enough data" in str(event.metadata["reason"].value)
    second = tick(sensor, settings, first.cursor)
    assert second.skip_reason is not None and "holding" in str(second.skip_reason)
    assert registry.get_rollout(MODEL).revision == held.revision  # type: ignore[union-attr]
    entry = json.loads(second.cursor or "{}")["models"][MODEL]
    assert (entry["rollout"], entry["revision"], entry["decision"]) == (
        canary.id, held.revision, "hold")


def test_alerts_view_is_empty_without_events(settings: RoostSettings) -> None:
    assert run_query(settings.logs_dir, "select count(*) from alerts")[1] == [(0,)]


def test_paused_rollout_is_left_alone(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, sensor: SensorDefinition,
    clock: Clock,
) -> None:
    traffic(settings, canary, canary_status=every(20, 500))
    paused = registry.pause_rollout(MODEL, actor="ops", reason="investigating")
    clock.after_dwell(canary)
    result = tick(sensor, settings, None)
    assert "paused at 5%" in str(result.skip_reason)
    assert registry.get_rollout(MODEL) == paused
    assert read_alerts(settings.logs_dir) == []


def test_advance_waits_for_the_dwell_time(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, sensor: SensorDefinition,
    clock: Clock,
) -> None:
    traffic(settings, canary)
    assert canary.step_started_at is not None
    clock.now = canary.step_started_at + timedelta(seconds=DWELL_S / 2)
    result = tick(sensor, settings, None)
    assert "waiting" in str(result.skip_reason) and "of 60s" in str(result.skip_reason)
    assert registry.get_rollout(MODEL) == canary


def test_two_ticks_with_the_same_cursor_step_once(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, sensor: SensorDefinition,
    clock: Clock,
) -> None:
    traffic(settings, canary)
    clock.after_dwell(canary)
    first = tick(sensor, settings, None)
    second = tick(sensor, settings, None)  # e.g. the daemon restarted before storing the cursor
    after = registry.get_rollout(MODEL)
    assert after is not None and (after.step, after.percent) == (1, 50.0)
    assert len(observations(first)) == 1 and observations(second) == []
    assert [r.action for r in registry.audit_records(MODEL)].count("rollout_advance") == 1


def test_stale_revision_is_skipped(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, spec: ModelSpec,
    clock: Clock,
) -> None:
    traffic(settings, canary)
    clock.after_dwell(canary)
    moved = registry.advance_rollout(MODEL, expected_revision=canary.revision, analysis={},
                                     actor="someone-else")
    outcome = evaluate_rollout(registry, canary, spec, settings.logs_dir, clock())
    assert outcome.action == "stale" and "revision" in outcome.reason
    assert registry.get_rollout(MODEL) == moved


def test_degraded_canary_on_a_stale_read_is_not_rolled_back_twice(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, spec: ModelSpec,
    clock: Clock,
) -> None:
    traffic(settings, canary, canary_status=every(20, 500))
    clock.after_dwell(canary)
    first = evaluate_rollout(registry, canary, spec, settings.logs_dir, clock())
    second = evaluate_rollout(registry, canary, spec, settings.logs_dir, clock())
    assert (first.action, second.action) == ("rolled_back", "stale")
    actions = [r.action for r in registry.audit_records(MODEL)]
    assert actions.count("rollout_rollback") == 1


def test_sensor_interval_comes_from_the_setting(
    spec: ModelSpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ROOST_CANARY_TICK_S", "7")
    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    assert make_canary_sensor([spec]).minimum_interval_seconds == 7
    assert make_canary_sensor([spec], interval_s=3).minimum_interval_seconds == 3


def test_required_labels_hold_a_canary_that_has_no_feedback_yet(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, clock: Clock,
) -> None:
    """``require_labels``: error-free traffic alone does not advance until each arm has
    ``min_labelled`` labels (the canary's 1,000 labelled answers are below 5,000 here)."""
    strict = parse_spec({
        "name": MODEL, "held_out": {"demo": "fraud"},
        "canary": {"schedule": [5, 50, 100], "step_interval_s": DWELL_S, "alpha": 0.05,
                   "min_requests": 200, "min_labelled": 5000, "require_labels": True},
    })
    traffic(settings, canary)  # plenty of requests, too few labels
    clock.after_dwell(canary)
    outcome = evaluate_rollout(registry, canary, strict, settings.logs_dir, clock())
    assert outcome.action == "held", outcome.reason
    assert outcome.analysis is not None and outcome.analysis.decision == "hold"
    after = registry.get_rollout(MODEL)
    assert after is not None and (after.step, after.percent) == (canary.step, canary.percent)



def test_one_models_failed_analysis_does_not_stop_another_models_canary(
    registry: Registry, settings: RoostSettings, canary: RolloutStatus, spec: ModelSpec,
    clock: Clock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two canaries; reading ``fraud``'s log fails (an injected OSError, as from an object store
    that is down for one prefix). The tick still rolls ``churn``'s degraded canary back and
    reports ``fraud``'s failure in its skip notes instead of raising."""
    from orchestration import canary_sensor

    other = parse_spec({"name": "fraud", "held_out": {"demo": "fraud"},
                        "canary": {"schedule": [5, 50, 100], "step_interval_s": DWELL_S}})
    deploy_model(registry, "fraud", make_linear_onnx(seed=3))
    info = registry.register_version("fraud", make_linear_onnx(seed=4))
    registry.transition("fraud", info.version, State.VALIDATING, reason="t")
    registry.transition("fraud", info.version, State.VALIDATED, reason="t")
    registry.start_rollout("fraud", 2, schedule=other.canary.schedule, actor="ops", reason="v2")
    registry.staging_passed("fraud", 2, evidence={}, actor="dagster")
    registry.begin_canary("fraud", 2, actor="dagster")
    real = canary_sensor.read_canary

    def failing_for_fraud(logs_dir: Path, model: str, *args: Any, **kwargs: Any) -> Any:
        if model == "fraud":
            raise OSError("logs/predictions/model=fraud: connection reset")
        return real(logs_dir, model, *args, **kwargs)

    monkeypatch.setattr(canary_sensor, "read_canary", failing_for_fraud)
    traffic(settings, canary, canary_status=every(20, 500))  # churn: 5 % errors against 0.5 %
    assert canary.step_started_at is not None
    clock.now = canary.step_started_at + timedelta(seconds=5)
    result = tick(make_canary_sensor([spec, other], interval_s=5, clock=clock), settings, None)
    after = registry.get_rollout(MODEL)
    assert after is not None and after.phase is RolloutPhase.ROLLED_BACK
    fraud = registry.get_rollout("fraud")
    assert fraud is not None and fraud.phase is RolloutPhase.CANARY and fraud.percent == 5
    assert [r.job_name for r in result.run_requests] == [REPORT_JOB]
    quiet = tick(make_canary_sensor([spec, other], interval_s=5, clock=clock), settings,
                 result.cursor)
    assert quiet.skip_reason is not None
    assert "fraud v2: analysis failed, left at 5% (OSError: " in str(quiet.skip_reason.skip_message)
