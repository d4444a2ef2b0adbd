"""The typed traffic policy: edits through its methods, and ``edit_policy``'s one transaction
with a generation compare-and-set (expected generation, audit actor, one bump per edit)."""

from __future__ import annotations

import pytest
from roost_testing import deploy_model, make_linear_onnx

from registry import Conflict, InvalidRequest, Registry, State
from registry.traffic import Bandit, Segment, TrafficPolicy, Variant, parse_policy

AB = (Variant(1, 50, "control"), Variant(2, 50, "treatment"))


def test_methods_return_new_checked_policies() -> None:
    base = TrafficPolicy(production=1)
    policy = (
        base.with_shadow(3, 10)
        .with_shadow(4)
        .with_shadow(3, 20)  # replaces v3's share
        .with_experiment("colour", AB, share=30)
        .with_experiment("price", AB)  # no share: the largest free range, [30, 100)
        .with_canary(5, 10)
        .with_segment(Segment("beta", 2, "header", "x-tier", ("beta",)))
        .with_flags(["dark"])
    )
    assert base == TrafficPolicy(production=1), "the original never changes"
    assert [(s.version, s.percent) for s in policy.shadows] == [(4, 100.0), (3, 20.0)]
    assert [(e.id, e.share, e.offset) for e in policy.experiments] == [
        ("colour", 30.0, 0.0),
        ("price", 70.0, 30.0),
    ]
    assert parse_policy(policy.to_dict()) == policy, "the JSON form round-trips"
    freed = policy.without_experiment("colour").with_experiment("size", AB, share=25)
    assert [(e.id, e.offset) for e in freed.experiments] == [("price", 30.0), ("size", 0.0)]
    assert policy.with_canary(5, 50).canary.percent == 50  # type: ignore[union-attr]
    assert policy.with_production(5).canary is None, "the promoted canary stops being one"
    assert policy.without_version(2).experiments == () and policy.without_version(2).segments == ()


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [
        (lambda p: p.with_shadow(3, 150), InvalidRequest, r"shadows.percent: .* got 150"),
        (lambda p: p.without_shadow(9), Conflict, "shadows: there is no shadow version 9"),
        (lambda p: p.with_canary(7, 5), Conflict, "canary: version 5 is the canary"),
        (lambda p: p.with_canary(5, -1), InvalidRequest, "canary.percent"),
        (lambda p: p.with_experiment("colour", AB), Conflict, "'colour' is already running"),
        (lambda p: p.with_experiment("x", AB, share=80), Conflict,
         r"experiments\[1\].share: 80% does not fit; the largest free range is 70%"),
        (lambda p: p.with_experiment("x", AB[:1], share=5), InvalidRequest,
         r"experiments\[1\].variants: an experiment needs at least two variants"),
        (lambda p: p.with_experiment("x", (Variant(1, 50, "a"), Variant(2, 40, "b"))),
         InvalidRequest, "weights must sum to 100, got 90"),
        (lambda p: p.without_experiment("nope"), Conflict, "no running experiment 'nope'"),
        (lambda p: p.with_bandit(Bandit("b", (1, 2))), Conflict,
         "experiments 'colour' are running; a bandit and experiments cannot run together"),
        (lambda p: p.without_bandit(), Conflict, "bandit: there is no bandit"),
        (lambda p: p.without_segment("nope"), Conflict, "there is no segment 'nope'"),
    ],
)
def test_refused_edits_name_the_field(edit: object, error: type, message: str) -> None:
    policy = TrafficPolicy(production=1).with_canary(5, 10).with_experiment("colour", AB, share=30)
    with pytest.raises(error, match=message):
        edit(policy)  # type: ignore[operator]


def test_full_layer_refuses_another_experiment() -> None:
    full = TrafficPolicy(production=1).with_experiment("all", AB)
    with pytest.raises(Conflict, match="no traffic left for another experiment .'all' 100%."):
        full.with_experiment("more", AB)


@pytest.fixture
def deployed(registry: Registry) -> Registry:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    for seed in (2, 3):
        info = registry.register_version("m", make_linear_onnx(seed=seed))
        registry.transition("m", info.version, State.VALIDATING, reason="t")
        registry.transition("m", info.version, State.VALIDATED, reason="t")
    return registry


def test_edit_policy_is_one_audited_generation_bump(deployed: Registry) -> None:
    _, generation = deployed.get_policy_and_generation("m")
    before = deployed.generation()
    policy = deployed.edit_policy(
        "m", lambda p: p.with_shadow(3, 10).with_experiment("e", AB), reason="r", actor="alice"
    )
    assert deployed.generation() == before + 1
    stored, new_generation = deployed.get_policy_and_generation("m")
    assert stored == policy and new_generation == deployed.generation() > generation
    record = deployed.audit_records("m")[-1]
    assert (record.action, record.actor, record.details["reason"]) == ("traffic", "alice", "r")
    assert record.details["policy"] == policy.to_dict()


def test_stale_expected_generation_is_a_conflict_and_changes_nothing(deployed: Registry) -> None:
    _, seen = deployed.get_policy_and_generation("m")
    deployed.edit_policy("m", lambda p: p.with_shadow(2, 5), reason="other admin", actor="bob")
    policy, now = deployed.get_policy_and_generation("m")
    with pytest.raises(Conflict, match=f"its generation is {now}, not {seen}; read it again"):
        deployed.edit_policy(
            "m", lambda p: p.with_shadow(3, 5), reason="stale", expected_generation=seen
        )
    assert deployed.get_policy_and_generation("m") == (policy, now)
    deployed.edit_policy("m", lambda p: p.with_shadow(3, 5), reason="ok", expected_generation=now)
    assert {s.version for s in deployed.get_policy("m").shadows} == {2, 3}


def test_refused_edit_rolls_back_the_whole_transaction(deployed: Registry) -> None:
    before = (deployed.get_policy_and_generation("m"), len(deployed.audit_records()))
    with pytest.raises(InvalidRequest, match="model 'm' has no version 9"):
        deployed.edit_policy("m", lambda p: p.with_shadow(9), reason="r")
    # a canary refused by the policy leaves the version's state alone (same transaction)
    deployed.start_canary("m", 2, 5)
    with pytest.raises(Conflict, match="canary: version 2 is the canary"):
        deployed.start_canary("m", 3, 5)
    assert deployed.get_version("m", 3).state is State.VALIDATED
    assert before[0][0].canary is None


def test_canary_coexists_with_experiments_and_moves(deployed: Registry) -> None:
    from registry import traffic_ops

    traffic_ops.start_experiment(deployed, "m", "e", [{"version": 1, "weight": 50},
                                                      {"version": 3, "weight": 50}])
    policy = deployed.start_canary("m", 2, 5, actor="carol")
    assert policy.canary is not None and policy.experiments[0].id == "e"
    moved = traffic_ops.move_canary(deployed, "m", 30, actor="carol")
    assert moved.canary is not None and moved.canary.percent == 30
    assert deployed.audit_records("m")[-1].actor == "carol"
    promoted = deployed.promote_canary("m", actor="carol")
    assert promoted.production == 2 and promoted.canary is None
    assert promoted.experiments == (), "v1 was deprecated: the experiment naming it ended"
    with pytest.raises(Conflict, match="no canary"):
        traffic_ops.move_canary(deployed, "m", 10)
