"""The router's decisions over synthetic units: split accuracy, stickiness, order, bandits."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

import pytest

from registry import InvalidRequest
from registry.traffic import parse_policy
from serving.router import Decision, ModelRouter, RequestFacts

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
    # pinned beats everything
    pinned = r.decide(beta, pinned=1)
    assert (pinned.version, pinned.route) == (1, "pinned")
    # a flag switched on in the policy applies to every request
    on = router({"segments": [{"id": "f", "version": 6, "match": {"flag": "dark"}}],
                 "flags": ["dark"]})
    assert on.decide(RequestFacts()).version == 6
    # the canary takes its percent of the units before the experiments: at 100 % it answers all
    # the units no segment took
    assert plain.route == "canary"
    no_canary = router({"experiments": [{"id": "e", "variants": [
        {"version": 2, "weight": 50}, {"version": 3, "weight": 50}]}]})
    assert no_canary.decide(RequestFacts(unit="u")).route == "experiment"


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


def _experiment(exp_id: str, share: float, *variants: tuple[int, float, str]) -> dict[str, object]:
    return {
        "id": exp_id,
        "share": share,
        "variants": [{"version": v, "weight": w, "name": n} for v, w, n in variants],
    }


THREE_EXPERIMENTS = [
    _experiment("colour", 20, (1, 50, "blue"), (2, 50, "red")),
    _experiment("price", 30, (1, 70, "old-price"), (3, 30, "new-price")),
    _experiment("ranking", 40, (1, 34, "bm25"), (2, 33, "dense"), (3, 33, "hybrid")),
]
MANY_UNITS = [f"unit-{i}" for i in range(20_000)]


def _shares(decisions: list[Decision], key: Callable[[Decision], object]) -> dict[object, float]:
    counts = Counter(key(d) for d in decisions)
    return {k: 100 * n / len(decisions) for k, n in counts.items()}


def _variant_shares_hold(decisions: list[Decision]) -> None:
    """Inside each experiment every variant gets its weight (within 2.5 points)."""
    for spec in THREE_EXPERIMENTS:
        inside = [d for d in decisions if d.experiment == spec["id"]]
        got = _shares(inside, lambda d: d.variant)
        for variant in spec["variants"]:  # type: ignore[attr-defined]
            assert abs(got.get(variant["name"], 0) - variant["weight"]) < 2.5, (spec["id"], got)


def test_several_experiments_each_get_their_share_sticky_per_unit() -> None:
    r = router({"experiments": THREE_EXPERIMENTS})
    decisions = [r.decide(RequestFacts(unit=u)) for u in MANY_UNITS]
    by_experiment = _shares(decisions, lambda d: d.experiment)
    assert abs(by_experiment["colour"] - 20) < 2
    assert abs(by_experiment["price"] - 30) < 2
    assert abs(by_experiment["ranking"] - 40) < 2
    assert abs(by_experiment[None] - 10) < 2  # the layer's free 10 % stays on production
    assert {d.route for d in decisions if d.experiment is None} == {"production"}
    _variant_shares_hold(decisions)
    # sticky: a fresh router (other random state) decides every unit the same way
    again = router({"experiments": THREE_EXPERIMENTS}, seed=42)
    assert all(again.decide(RequestFacts(unit=u)) == d for u, d in zip(MANY_UNITS, decisions,
                                                                        strict=True))
    # stopping one experiment moves nobody else: its units go to production, the rest stay
    stored = parse_policy({"production": 1, "experiments": THREE_EXPERIMENTS})
    fewer = ModelRouter(stored.without_experiment("price"), rng=random.Random(1))
    for u, d in zip(MANY_UNITS[:5000], decisions, strict=False):
        after = fewer.decide(RequestFacts(unit=u))
        assert after == d if d.experiment != "price" else after.route == "production"


def test_requests_without_a_unit_follow_the_same_shares() -> None:
    r = router({"experiments": THREE_EXPERIMENTS}, seed=5)
    decisions = [r.decide(RequestFacts()) for _ in range(20_000)]
    by_experiment = _shares(decisions, lambda d: d.experiment)
    for spec in THREE_EXPERIMENTS:
        assert abs(by_experiment[spec["id"]] - spec["share"]) < 2  # type: ignore[operator]


def test_canary_and_experiments_coexist() -> None:
    r = router({"canary": {"version": 7, "percent": 10}, "experiments": THREE_EXPERIMENTS})
    decisions = [r.decide(RequestFacts(unit=u)) for u in MANY_UNITS]
    routes = _shares(decisions, lambda d: d.route)
    assert abs(routes["canary"] - 10) < 1.5, "the canary keeps its percent of ALL units"
    by_experiment = _shares(decisions, lambda d: d.experiment)
    for spec in THREE_EXPERIMENTS:  # experiments split the other 90 %
        assert abs(by_experiment[spec["id"]] - 0.9 * spec["share"]) < 2  # type: ignore[operator]
    assert abs(routes["production"] - 9) < 2
    _variant_shares_hold(decisions)
    # the canary's units are the same ones it gets without experiments (its own salt)
    alone = router({"canary": {"version": 7, "percent": 10}})
    assert all(
        (alone.decide(RequestFacts(unit=u)).route == "canary") == (d.route == "canary")
        for u, d in zip(MANY_UNITS, decisions, strict=True)
    )


def test_canary_and_bandit_coexist() -> None:
    r = router({"canary": {"version": 7, "percent": 25},
                "bandit": {"id": "b", "arms": [1, 2], "algorithm": "thompson"}}, seed=2)
    decisions = [r.decide(RequestFacts(unit=u)) for u in MANY_UNITS[:8000]]
    routes = _shares(decisions, lambda d: d.route)
    assert abs(routes["canary"] - 25) < 2 and abs(routes["bandit"] - 75) < 2


@pytest.mark.parametrize(
    ("experiments", "message"),
    [
        ([THREE_EXPERIMENTS[0], THREE_EXPERIMENTS[1], {**THREE_EXPERIMENTS[2], "share": 60}],
         r"shares must sum to at most 100, got 110 \('colour' 20%, 'price' 30%, 'ranking' 60%\)"),
        ([{**THREE_EXPERIMENTS[0], "offset": 0}, {**THREE_EXPERIMENTS[1], "offset": 10}],
         r"'price' \[10, 40\) overlaps 'colour' \[0, 20\)"),
        ([{**THREE_EXPERIMENTS[0], "share": 100}, {**THREE_EXPERIMENTS[1], "share": None}],
         "experiments\\[1\\].share: the experiments with a share take all the traffic"),
        ([{**THREE_EXPERIMENTS[0], "share": 0}], r"experiments\[0\].share: expected a percentage"),
    ],
)
def test_experiment_shares_are_checked(experiments: list[object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_policy({"production": 1, "experiments": experiments})


def test_experiments_without_shares_split_the_layer() -> None:
    bare = [{k: v for k, v in e.items() if k != "share"} for e in THREE_EXPERIMENTS]
    policy = parse_policy({"production": 1, "experiments": bare})
    assert [(e.share, e.offset) for e in policy.experiments] == [
        (pytest.approx(100 / 3), 0.0),
        (pytest.approx(100 / 3), pytest.approx(100 / 3)),
        (pytest.approx(100 / 3), pytest.approx(200 / 3)),
    ]
