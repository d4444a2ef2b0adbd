"""Traffic policies in the registry: validation, audit, canary lifecycle, version clean-up."""

from __future__ import annotations

import pytest
from roost_testing import deploy_model, make_linear_onnx

from registry import Conflict, InvalidRequest, NotFound, Registry, State


def validated(registry: Registry, model: str, seed: int) -> int:
    info = registry.register_version(model, make_linear_onnx(seed=seed))
    registry.transition(model, info.version, State.VALIDATING, reason="t")
    registry.transition(model, info.version, State.VALIDATED, reason="t")
    return int(info.version)


@pytest.fixture
def setup(registry: Registry) -> Registry:
    deploy_model(registry, "m", make_linear_onnx(seed=1))  # v1 production
    validated(registry, "m", 2)  # v2 VALIDATED
    validated(registry, "m", 3)  # v3 VALIDATED
    return registry


def test_experiment_and_shadow_policy_is_stored_audited_and_served(setup: Registry) -> None:
    gen = setup.generation()
    policy = setup.set_policy(
        "m",
        {
            "experiments": [
                {"id": "exp-1", "variants": [{"version": 1, "weight": 50},
                                             {"version": 2, "weight": 50}]}
            ],
            "shadows": [{"version": 3, "percent": 100}],
            "segments": [{"id": "beta", "version": 2, "match": {"header": "X-Tier",
                                                               "values": ["beta"]}}],
        },
        actor="alice",
    )
    assert policy.production == 1 and policy.versions() == {1, 2, 3}
    assert policy.segments[0].key == "x-tier"
    assert setup.generation() > gen
    assert setup.audit_records("m")[-1].action == "traffic"
    assert {v.version for v in setup.served_versions()} == {1, 2, 3}
    assert setup.get_policy("m").experiments[0].salt == "exp-1"


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"experiments": [{"id": "e", "variants": [{"version": 1, "weight": 50},
                                                   {"version": 2, "weight": 40}]}]},
         "weights must sum to 100, got 90"),
        ({"experiments": [{"id": "e", "variants": [{"version": 1, "weight": 100}]}]},
         "at least two variants"),
        ({"shadows": [{"version": 9, "percent": 100}]}, "has no version 9"),
        ({"shadows": [{"version": 2, "percent": 150}]}, "percentage from 0 to 100"),
        ({"canary": {"version": 2, "percent": 5}}, "not CANARY"),
        ({"production": 2}, "change it with deploy"),
        ({"segments": [{"version": 2, "match": {"cookie": "x"}}]}, "one of header, attribute"),
        ({"bandit": {"arms": [1], "algorithm": "thompson"}}, "at least two distinct"),
        ({"bandit": {"arms": [1, 2], "algorithm": "ucb"}}, "thompson, epsilon_greedy"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_invalid_policies_are_refused_and_running_policy_untouched(
    setup: Registry, policy: dict[str, object], message: str
) -> None:
    setup.set_policy("m", {"shadows": [{"version": 3, "percent": 10}]})
    before = setup.get_policy("m")
    with pytest.raises(InvalidRequest, match=message):
        setup.set_policy("m", policy)
    assert setup.get_policy("m") == before


def test_failed_version_cannot_take_traffic(setup: Registry) -> None:
    bad = setup.register_version("m", make_linear_onnx(seed=9)).version
    setup.transition("m", bad, State.VALIDATING, reason="t")
    setup.transition("m", bad, State.FAILED, reason="t")
    with pytest.raises(InvalidRequest, match="is FAILED; traffic can only go"):
        setup.set_policy("m", {"shadows": [{"version": bad, "percent": 100}]})
    with pytest.raises(NotFound):
        setup.set_policy("nope", {})
    setup.register_version("undeployed", make_linear_onnx(seed=10))
    with pytest.raises(Conflict, match="no deployment"):
        setup.set_policy("undeployed", {})


def test_canary_start_promote_and_rollback(setup: Registry) -> None:
    policy = setup.start_canary("m", 2, 5)
    assert policy.canary is not None and policy.canary.percent == 5
    assert setup.get_version("m", 2).state is State.CANARY
    steps = [r.details.get("to") for r in setup.audit_records("m") if r.version == 2]
    assert steps[-3:] == ["STAGING", "STAGING_TESTED", "CANARY"]
    # promote: canary becomes production, old production deprecated, canary cleared
    setup.deploy("m", 2, reason="canary healthy")
    assert setup.get_policy("m").production == 2 and setup.get_policy("m").canary is None
    assert setup.get_version("m", 1).state is State.DEPRECATED
    # a second canary that fails is rolled back and leaves the policy
    setup.start_canary("m", 3, 10)
    setup.rollback_canary("m", reason="error rate 3%")
    assert setup.get_version("m", 3).state is State.ROLLBACK
    assert setup.get_policy("m").canary is None
    assert {v.version for v in setup.served_versions()} == {2}


def test_version_leaving_service_is_removed_from_the_policy(setup: Registry) -> None:
    setup.set_policy(
        "m",
        {"experiments": [{"id": "e", "variants": [{"version": 1, "weight": 50},
                                                  {"version": 2, "weight": 50}]}],
         "shadows": [{"version": 3, "percent": 100}]},
    )
    setup.transition("m", 3, State.STAGING, reason="t")  # still routable
    assert setup.get_policy("m").shadows
    deploy_v2 = setup.deploy("m", 2)  # v1 is deprecated: the experiment naming it ends
    assert deploy_v2.production_version == 2
    assert setup.get_policy("m").experiments == ()


def test_bandit_rewards_accumulate(setup: Registry) -> None:
    setup.record_rewards("m", "b", {1: (3.0, 10.0), 2: (1.0, 10.0)})
    setup.record_rewards("m", "b", {1: (1.0, 2.0)})
    assert setup.bandit_stats() == {("m", "b"): {1: (4.0, 12.0), 2: (1.0, 10.0)}}


def test_refused_canary_changes_nothing(setup: Registry) -> None:
    with pytest.raises(InvalidRequest, match="canary.percent"):
        setup.start_canary("m", 2, 150)
    assert setup.get_version("m", 2).state is State.VALIDATED
    setup.start_canary("m", 2, 5)
    with pytest.raises(Conflict, match="canary: version 2 is the canary; promote or roll it back"):
        setup.start_canary("m", 3, 5)
    assert setup.get_version("m", 3).state is State.VALIDATED
    assert setup.start_canary("m", 2, 20).canary.percent == 20  # type: ignore[union-attr]
