"""The router's decisions over synthetic units: split accuracy, stickiness, order, bandits."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from registry.traffic import parse_policy
from serving.router import ModelRouter, RequestFacts

UNITS = [f"user-{i}" for i in range(10_000)]


def router(policy: dict[str, object], seed: int = 0) -> ModelRouter:
    return ModelRouter(parse_policy({"production": 1, **policy}), rng=random.Random(seed))


def test_weighted_split_holds_within_a_percent_and_is_sticky() -> None:
    r = router(
        {"experiments": [{"id": "exp", "variants": [
            {"version": 1, "weight": 70, "name": "control"},
            {"version": 2, "weight": 20, "name": "treatment"},
            {"version": 3, "weight": 10, "name": "wild"}]}]}
    )
    first = {u: r.decide(RequestFacts(unit=u)) for u in UNITS}
    shares = Counter(d.variant for d in first.values())
    assert abs(shares["control"] / 100 - 70) < 1.0
    assert abs(shares["treatment"] / 100 - 20) < 1.0
    assert abs(shares["wild"] / 100 - 10) < 1.0
    # the same unit always gets the same variant, also from a fresh router
    again = router(
        {"experiments": [{"id": "exp", "variants": [
            {"version": 1, "weight": 70, "name": "control"},
            {"version": 2, "weight": 20, "name": "treatment"},
            {"version": 3, "weight": 10, "name": "wild"}]}]}, seed=99
    )
    assert all(again.decide(RequestFacts(unit=u)).variant == d.variant for u, d in first.items())
    assert {d.route for d in first.values()} == {"experiment"}
    assert {d.experiment for d in first.values()} == {"exp"}


def test_new_salt_reshuffles_units() -> None:
    def assign(salt: str) -> list[str]:
        r = router({"experiments": [{"id": "e", "salt": salt, "variants": [
            {"version": 1, "weight": 50}, {"version": 2, "weight": 50}]}]})
        return [r.decide(RequestFacts(unit=u)).variant for u in UNITS[:2000]]

    same = sum(a == b for a, b in zip(assign("s1"), assign("s2"), strict=True))
    assert 800 < same < 1200  # independent halves agree about half the time


def test_canary_percent_and_stickiness() -> None:
    r = router({"canary": {"version": 2, "percent": 5}})
    decisions = [r.decide(RequestFacts(unit=u)) for u in UNITS]
    share = sum(d.route == "canary" for d in decisions) / len(decisions) * 100
    assert abs(share - 5) < 1.0
    assert all(
        r.decide(RequestFacts(unit=u)).version == d.version
        for u, d in zip(UNITS[:500], decisions, strict=False)
    )


def test_segments_flags_and_evaluation_order() -> None:
    r = router(
        {
            "segments": [
                {"id": "beta-testers", "version": 4,
                 "match": {"header": "X-Tier", "values": ["beta"]}},
                {"id": "eu", "version": 5, "match": {"attribute": "region", "values": ["eu"]}},
                {"id": "new-ui", "version": 6, "match": {"flag": "new-ui"}},
            ],
            "experiments": [{"id": "e", "variants": [
                {"version": 2, "weight": 50}, {"version": 3, "weight": 50}]}],
            "canary": {"version": 7, "percent": 100},
        }
    )
    beta = RequestFacts(unit="u", headers={"x-tier": "beta"}, attributes={"region": "eu"})
    assert (r.decide(beta).version, r.decide(beta).route) == (4, "segment")
    eu = RequestFacts(unit="u", headers={"x-tier": "gold"}, attributes={"region": "eu"})
    assert r.decide(eu).variant == "eu"
    flagged = RequestFacts(unit="u", flags=frozenset({"new-ui"}))
    assert r.decide(flagged).version == 6
    plain = r.decide(RequestFacts(unit="u"))
    assert plain.route == "experiment" and plain.version in (2, 3)
    # pinned beats everything
    pinned = r.decide(beta, pinned=1)
    assert (pinned.version, pinned.route) == (1, "pinned")
    # a flag switched on in the policy applies to every request
    on = router({"segments": [{"id": "f", "version": 6, "match": {"flag": "dark"}}],
                 "flags": ["dark"]})
    assert on.decide(RequestFacts()).version == 6
    # experiment beats canary; without experiments the 100% canary answers
    assert router({"canary": {"version": 7, "percent": 100}}).decide(RequestFacts()).route == (
        "canary"
    )


def test_shadow_percent() -> None:
    r = router({"shadows": [{"version": 8, "percent": 100}, {"version": 9, "percent": 25}]})
    picks = [r.decide(RequestFacts()).shadows for _ in range(4000)]
    assert all(8 in p for p in picks)
    assert abs(sum(9 in p for p in picks) / 40 - 25) < 3


@pytest.mark.parametrize("algorithm", ["thompson", "epsilon_greedy"])
def test_bandit_shifts_traffic_to_the_better_arm_and_keeps_a_floor(algorithm: str) -> None:
    policy = {"bandit": {"id": "b", "arms": [1, 2], "algorithm": algorithm,
                         "epsilon": 0.1, "floor": 0.05}}
    r = router(policy, seed=3)
    truth = {1: 0.05, 2: 0.20}  # arm 2 converts four times as often
    env = random.Random(7)
    for _ in range(30):  # 30 rounds of 200 requests, evidence fed back after each round
        for _ in range(200):
            arm = r.decide(RequestFacts()).version
            reward = 1.0 if env.random() < truth[arm] else 0.0
            rewards, pulls = r.evidence.get(arm, (0.0, 0.0))
            r.evidence[arm] = (rewards + reward, pulls + 1)
    final = Counter(r.decide(RequestFacts()).version for _ in range(4000))
    assert final[2] / 4000 > 0.8, final
    assert final[1] / 4000 >= 0.04, "the floor keeps exploring the worse arm"
