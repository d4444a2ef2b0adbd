"""Staged rollouts on a real SQLite registry: the whole walk, compare-and-set under races,
pause/resume/cancel, refusals naming what is wrong, and interplay with deploy and rollback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from roost_testing import deploy_model, make_linear_onnx

from registry import Conflict, InvalidRequest, NotFound, Registry, State
from registry.rollout import DEFAULT_SCHEDULE, RolloutPhase, StaleRollout, check_schedule

OPS = "ops"


def validated(registry: Registry, model: str, seed: int) -> int:
    info = registry.register_version(model, make_linear_onnx(seed=seed))
    registry.transition(model, info.version, State.VALIDATING, reason="t")
    registry.transition(model, info.version, State.VALIDATED, reason="t")
    return info.version


@pytest.fixture
def two(registry: Registry) -> Registry:
    """Model ``m``: v1 in production, v2 VALIDATED."""
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    validated(registry, "m", 2)
    return registry


def to_canary(registry: Registry, schedule: tuple[float, ...] | None = None) -> int:
    registry.start_rollout("m", 2, schedule=schedule, actor=OPS, reason="new model")
    registry.staging_passed("m", 2, evidence={"tests": 12}, actor="dagster")
    return registry.begin_canary("m", 2, actor="dagster").revision


def test_whole_walk_to_promotion(two: Registry) -> None:
    registry = two
    gen = registry.generation()
    started = registry.start_rollout("m", 2, schedule=[5, 50, 100], actor=OPS, reason="v2")
    assert (started.phase, started.step, started.percent) == (RolloutPhase.STAGING, -1, 0.0)
    assert started.schedule == (5.0, 50.0, 100.0) and started.actor == OPS
    assert registry.get_version("m", 2).state is State.STAGING
    tested = registry.staging_passed("m", 2, evidence={"p95_ms": 3.1}, actor="dagster")
    assert tested.phase is RolloutPhase.STAGING_TESTED and tested.evidence == {"p95_ms": 3.1}
    canary = registry.begin_canary("m", 2, actor="dagster")
    assert (canary.phase, canary.step, canary.percent) == (RolloutPhase.CANARY, 0, 5.0)
    assert registry.get_policy("m").canary is not None
    assert registry.get_policy("m").canary.percent == 5.0  # type: ignore[union-attr]
    assert registry.generation() > gen
    status = canary
    for percent in (50.0, 100.0):
        status = registry.advance_rollout(
            "m", expected_revision=status.revision, analysis={"errors": 0}, actor="sensor"
        )
        assert (status.phase, status.percent) == (RolloutPhase.CANARY, percent)
        assert registry.get_policy("m").canary.percent == percent  # type: ignore[union-attr]
    assert status.next_percent is None
    done = registry.advance_rollout(
        "m", expected_revision=status.revision, analysis={"errors": 0}, actor="sensor"
    )
    assert done.phase is RolloutPhase.PROMOTED and done.replaced_version == 1
    assert not done.active and done.last_analysis == {"errors": 0}
    assert registry.get_version("m", 2).state is State.PRODUCTION
    assert registry.get_version("m", 1).state is State.DEPRECATED
    policy = registry.get_policy("m")
    assert policy.production == 2 and policy.canary is None
    actions = [r.action for r in registry.audit_records("m")]
    for action in ("rollout_start", "rollout_staging_passed", "rollout_canary",
                   "rollout_advance", "rollout_promote", "deploy"):
        assert action in actions
    assert registry.get_rollout("m") == done
    assert registry.list_rollouts() == [] and registry.list_rollouts(active_only=False) == [done]
    assert done.to_dict()["phase"] == "PROMOTED"


def test_stale_revision_changes_nothing(two: Registry) -> None:
    revision = to_canary(two)
    two.advance_rollout("m", expected_revision=revision, analysis={}, actor="sensor")
    gen = two.generation()
    with pytest.raises(StaleRollout, match=f"revision is {revision + 1}, not {revision}"):
        two.advance_rollout("m", expected_revision=revision, analysis={}, actor="sensor")
    assert two.generation() == gen
    assert two.get_rollout("m").step == 1  # type: ignore[union-attr]
    with pytest.raises(Conflict):
        two.record_rollout_analysis("m", expected_revision=revision, analysis={}, decision="hold")


def test_two_threads_racing_advance_exactly_one_wins(two: Registry) -> None:
    revision = to_canary(two)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def tick() -> None:
        barrier.wait()
        try:
            two.advance_rollout("m", expected_revision=revision, analysis={}, actor="sensor")
            outcomes.append("won")
        except Conflict:
            outcomes.append("stale")

    threads = [threading.Thread(target=tick) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["stale", "won"]
    status = two.get_rollout("m")
    assert status is not None and status.step == 1 and status.percent == DEFAULT_SCHEDULE[1]


def test_record_analysis_does_not_step(two: Registry) -> None:
    revision = to_canary(two)
    gen = two.generation()
    held = two.record_rollout_analysis(
        "m", expected_revision=revision, analysis={"p": 0.4}, decision="hold"
    )
    assert (held.step, held.decision, held.last_analysis) == (0, "hold", {"p": 0.4})
    assert held.revision == revision + 1 and two.generation() == gen


def test_roll_back_takes_traffic_at_once(two: Registry) -> None:
    revision = to_canary(two)
    status = two.roll_back_rollout(
        "m", reason="p99 doubled", analysis={"p99": 2.0}, actor="sensor",
        expected_revision=revision,
    )
    assert (status.phase, status.percent, status.reason) == (
        RolloutPhase.ROLLED_BACK, 0.0, "p99 doubled"
    )
    assert two.get_policy("m").canary is None
    assert two.get_version("m", 2).state is State.ROLLBACK
    record = [r for r in two.audit_records("m") if r.action == "rollout_rollback"][-1]
    assert record.actor == "sensor" and record.details["reason"] == "p99 doubled"
    # a retry is answered with the same record
    assert two.roll_back_rollout("m", reason="again", actor="sensor") == status


def test_pause_blocks_steps_until_resumed(two: Registry) -> None:
    revision = to_canary(two)
    paused = two.pause_rollout("m", actor=OPS, reason="looking at a dashboard")
    assert paused.paused and paused.revision == revision + 1
    with pytest.raises(Conflict, match="paused; resume it"):
        two.advance_rollout("m", expected_revision=paused.revision, analysis={}, actor="sensor")
    by_hand = two.advance_rollout(
        "m", expected_revision=paused.revision, analysis={}, actor=OPS, manual=True
    )
    assert by_hand.step == 1 and by_hand.paused
    resumed = two.resume_rollout("m", actor=OPS, reason="fine")
    assert not resumed.paused
    assert resumed.step_started_at is not None and by_hand.step_started_at is not None
    assert resumed.step_started_at >= by_hand.step_started_at
    stepped = two.advance_rollout(
        "m", expected_revision=resumed.revision, analysis={}, actor="sensor"
    )
    assert stepped.step == 2


def test_cancel_during_canary_and_staging(two: Registry) -> None:
    to_canary(two)
    cancelled = two.cancel_rollout("m", actor=OPS, reason="wrong build")
    assert cancelled.phase is RolloutPhase.CANCELLED
    assert two.get_version("m", 2).state is State.ROLLBACK
    assert two.get_policy("m").canary is None
    v3 = validated(two, "m", 3)
    two.start_rollout("m", v3, actor=OPS, reason="v3")
    assert two.cancel_rollout("m", actor=OPS, reason="later").phase is RolloutPhase.CANCELLED
    assert two.get_version("m", v3).state is State.STAGING  # the table has no other exit


def test_staging_failed_records_why(two: Registry) -> None:
    two.start_rollout("m", 2, actor=OPS, reason="v2")
    failed = two.staging_failed(
        "m", 2, reason="integration test 4 failed", evidence={"failed": [4]}, actor="dagster"
    )
    assert failed.phase is RolloutPhase.FAILED and failed.reason == "integration test 4 failed"
    assert failed.evidence == {"failed": [4]}
    assert two.get_version("m", 2).state is State.STAGING
    with pytest.raises(Conflict, match="is FAILED, not STAGING_TESTED"):
        two.begin_canary("m", 2, actor="dagster")


def test_refusals_name_what_is_wrong(two: Registry) -> None:
    with pytest.raises(Conflict, match="version 1 of 'm' is PRODUCTION; a rollout starts from"):
        two.start_rollout("m", 1, actor=OPS, reason="x")
    with pytest.raises(InvalidRequest, match="reason"):
        two.start_rollout("m", 2, actor=OPS, reason=" ")
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        two.get_rollout("nope")
    with pytest.raises(NotFound, match="has no rollout"):
        two.pause_rollout("m", actor=OPS, reason="x")
    two.start_rollout("m", 2, actor=OPS, reason="v2")
    assert two.start_rollout("m", 2, actor=OPS, reason="retry").revision == 1  # idempotent
    v3 = validated(two, "m", 3)
    with pytest.raises(Conflict, match="active rollout: version 2 is STAGING"):
        two.start_rollout("m", v3, actor=OPS, reason="x")
    with pytest.raises(Conflict, match="active rollout of version 2"):
        two.deploy("m", v3)
    with pytest.raises(Conflict, match="is STAGING, not CANARY"):
        two.advance_rollout("m", expected_revision=1, analysis={}, actor="sensor")
    with pytest.raises(Conflict, match="cancel it with"):
        two.roll_back_rollout("m", reason="x", actor=OPS)
    with pytest.raises(InvalidRequest, match="analysis: expected a JSON object"):
        two.advance_rollout("m", expected_revision=1, analysis=[], actor="s")  # type: ignore[arg-type]


def test_first_version_needs_deploy(registry: Registry) -> None:
    validated(registry, "solo", 1)
    with pytest.raises(Conflict, match="no production version to compare a canary with"):
        registry.start_rollout("solo", 1, actor=OPS, reason="x")


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([], "at least one step"),
        ([1, 5, 50], "last step to be 100, got 50"),
        ([5, 5, 100], r"schedule\[1\]: expected percents in increasing order"),
        ([0, 100], r"schedule\[0\]: expected a percent with 0 < p <= 100"),
        ([1, 150], r"schedule\[1\]"),
        (["a", 100], r"schedule\[0\]: expected a number"),
        ("1,100", "expected a list"),
    ],
)
def test_schedule_checked(schedule: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_schedule(schedule)  # type: ignore[arg-type]


def test_hand_promotion_finishes_the_rollout(two: Registry) -> None:
    to_canary(two)
    two.promote_canary("m", actor=OPS)
    status = two.get_rollout("m")
    assert status is not None and status.phase is RolloutPhase.PROMOTED
    assert status.replaced_version == 1


def test_existing_database_gets_the_table(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect

    from registry.tables import Base, RolloutRow

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = [t for name, t in Base.metadata.tables.items() if name != RolloutRow.__tablename__]
    engine = create_engine(url)
    Base.metadata.create_all(engine, tables=old)
    assert "rollouts" not in inspect(engine).get_table_names()
    engine.dispose()
    reg = Registry(url, tmp_path / "artifacts")
    try:
        deploy_model(reg, "m", make_linear_onnx(seed=1))
        validated(reg, "m", 2)
        assert reg.start_rollout("m", 2, actor=OPS, reason="x").phase is RolloutPhase.STAGING
    finally:
        reg.close()
