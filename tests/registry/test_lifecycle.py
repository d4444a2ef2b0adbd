"""The state machine, generated from the requirements' table: every legal move passes,
every other is refused with an error naming the allowed transitions. Plus Roost's ONE extension,
shown explicitly: DEPRECATED -> PRODUCTION, only as a rollback (``Registry.rollback``)."""

from __future__ import annotations

import itertools

import pytest
from roost_testing import deploy_model, make_linear_onnx

from registry import (
    TRANSITIONS,
    Conflict,
    InvalidTransition,
    Registry,
    State,
    check_transition,
)
from registry.lifecycle import ROLLBACK_TRANSITIONS

# The requirements' table, written out independently of the implementation.
REQUIRED = {
    "REGISTERED": {"VALIDATING"},
    "VALIDATING": {"VALIDATED", "FAILED"},
    "VALIDATED": {"STAGING"},
    "STAGING": {"STAGING_TESTED"},
    "STAGING_TESTED": {"CANARY"},
    "CANARY": {"PRODUCTION", "ROLLBACK"},
    "PRODUCTION": {"DEPRECATED"},
    "DEPRECATED": {"ARCHIVED"},
    "ARCHIVED": set(),
    "FAILED": {"REGISTERED"},
    "ROLLBACK": {"VALIDATED"},
}

ALL_PAIRS = list(itertools.product(State, State))


def test_table_matches_requirements() -> None:
    assert {s.value: {t.value for t in ts} for s, ts in TRANSITIONS.items()} == REQUIRED


@pytest.mark.parametrize(
    ("src", "dst"), [(s, d) for s, d in ALL_PAIRS if d.value in REQUIRED[s.value]]
)
def test_legal_transition_passes(src: State, dst: State) -> None:
    check_transition(src, dst)


@pytest.mark.parametrize(
    ("src", "dst"), [(s, d) for s, d in ALL_PAIRS if d.value not in REQUIRED[s.value]]
)
def test_illegal_transition_refused(src: State, dst: State) -> None:
    with pytest.raises(InvalidTransition) as err:
        check_transition(src, dst)
    message = str(err.value)
    assert f"{src.value} -> {dst.value}" in message
    if REQUIRED[src.value]:
        for allowed in REQUIRED[src.value]:
            assert allowed in message
    else:
        assert "terminal" in message


# -- Roost's one extension: DEPRECATED -> PRODUCTION, only as a rollback ------------------------


def test_the_one_extension_is_rollback_only() -> None:
    assert ROLLBACK_TRANSITIONS == {State.DEPRECATED: frozenset({State.PRODUCTION})}
    check_transition(State.DEPRECATED, State.PRODUCTION, rollback=True)
    with pytest.raises(InvalidTransition, match="only allowed as a rollback: use `roost rollback"):
        check_transition(State.DEPRECATED, State.PRODUCTION)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (s, d)
        for s, d in ALL_PAIRS
        if d.value not in REQUIRED[s.value] and (s, d) != (State.DEPRECATED, State.PRODUCTION)
    ],
)
def test_rollback_flag_opens_nothing_else(src: State, dst: State) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(src, dst, rollback=True)


def add_validated(registry: Registry, seed: int) -> int:
    info = registry.register_version("m", make_linear_onnx(seed=seed))
    registry.transition("m", info.version, State.VALIDATING, reason="t")
    registry.transition("m", info.version, State.VALIDATED, reason="t")
    return info.version


@pytest.fixture
def promoted(registry: Registry) -> Registry:
    """v1 deployed, then v2 deployed: v2 PRODUCTION, v1 DEPRECATED."""
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    registry.deploy("m", add_validated(registry, 2))
    return registry


def states(registry: Registry) -> dict[int, State]:
    return {v.version: v.state for v in registry.list_versions("m")}


def test_by_hand_deprecated_to_production_points_at_rollback(promoted: Registry) -> None:
    with pytest.raises(InvalidTransition, match="roost rollback"):
        promoted.transition("m", 1, State.PRODUCTION, reason="bring it back")


def test_rollback_returns_previous_and_second_rollback_goes_back_again(
    promoted: Registry,
) -> None:
    gen = promoted.generation()
    back = promoted.rollback("m", reason="v2 misbehaves", actor="alice")
    assert back.version == 1 and back.state is State.PRODUCTION
    assert states(promoted) == {1: State.PRODUCTION, 2: State.DEPRECATED}
    assert promoted.get_policy("m").production == 1 and promoted.generation() > gen
    record = [r for r in promoted.audit_records("m") if r.action == "rollback"][-1]
    assert (record.actor, record.details) == (
        "alice", {"from": 2, "to": 1, "reason": "v2 misbehaves"}
    )
    moves = [r.details for r in promoted.audit_records("m") if r.action == "transition"][-2:]
    assert [(m["from"], m["to"]) for m in moves] == [
        ("PRODUCTION", "DEPRECATED"), ("DEPRECATED", "PRODUCTION")
    ]
    # a second rollback undoes the first: back to the version it replaced
    again = promoted.rollback("m", reason="false alarm", actor="alice")
    assert again.version == 2
    assert states(promoted) == {1: State.DEPRECATED, 2: State.PRODUCTION}
    assert promoted.audit_verify().ok


def test_rollback_to_a_chosen_version(promoted: Registry) -> None:
    promoted.deploy("m", add_validated(promoted, 3))
    assert states(promoted) == {1: State.DEPRECATED, 2: State.DEPRECATED, 3: State.PRODUCTION}
    assert promoted.rollback("m", reason="default", actor="a").version == 2
    assert promoted.rollback("m", to_version=1, reason="older", actor="a").version == 1
    assert states(promoted) == {1: State.PRODUCTION, 2: State.DEPRECATED, 3: State.DEPRECATED}


def test_rollback_refusals(registry: Registry) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    with pytest.raises(Conflict, match="no previous production version"):
        registry.rollback("m", reason="x", actor="a")
    with pytest.raises(Conflict, match="already the production version"):
        registry.rollback("m", to_version=1, reason="x", actor="a")
    v2 = add_validated(registry, 2)
    with pytest.raises(Conflict, match=f"version {v2} of 'm' is VALIDATED; a rollback brings"):
        registry.rollback("m", to_version=v2, reason="x", actor="a")
    with pytest.raises(Exception, match="reason"):
        registry.rollback("m", reason=" ", actor="a")


def test_rollback_cancels_a_running_rollout(promoted: Registry) -> None:
    v3 = add_validated(promoted, 3)
    promoted.start_rollout("m", v3, actor="ops", reason="v3")
    promoted.staging_passed("m", v3, evidence={}, actor="ops")
    promoted.begin_canary("m", v3, actor="ops")
    promoted.rollback("m", reason="incident", actor="ops")
    rollout = promoted.get_rollout("m")
    assert rollout is not None and rollout.phase.value == "CANCELLED"
    assert states(promoted)[v3] is State.ROLLBACK
    policy = promoted.get_policy("m")
    assert policy.production == 1 and policy.canary is None


# -- issue 16: never leave a model without production by accident -----------------------------


def test_taking_the_only_production_version_offline_is_refused(registry: Registry) -> None:
    deploy_model(registry, "churn", make_linear_onnx(seed=1))
    with pytest.raises(Conflict) as err:
        registry.transition("churn", 1, State.DEPRECATED, reason="oops")
    assert "roost rollback churn" in str(err.value) and "roost promote" in str(err.value)
    assert "--force" in str(err.value)
    assert registry.get_version("churn", 1).state is State.PRODUCTION
    info = registry.transition("churn", 1, State.DEPRECATED, reason="retire", force=True)
    assert info.state is State.DEPRECATED and registry.get_policy("churn").production is None
    record = registry.audit_records("churn")[-1]
    assert "forced" in record.details["reason"]
