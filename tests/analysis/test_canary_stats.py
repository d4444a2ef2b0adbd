"""Canary statistics against hand-computed values, and the decision rules on synthetic arms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as t_dist

from analysis.canary import (
    CanaryConfig,
    alpha_at_look,
    alpha_spent,
    compare,
    welch_less,
)
from analysis.samples import ArmSample


def arm(
    name: str,
    requests: int,
    errors: int = 0,
    latencies: list[float] | np.ndarray | None = None,
    labelled: int = 0,
    correct: int = 0,
    rewards: list[float] | np.ndarray | None = None,
) -> ArmSample:
    lat = np.full(requests - errors, 10.0) if latencies is None else np.asarray(latencies, float)
    return ArmSample(
        arm=name, version=1 if name == "production" else 2, requests=requests,
        server_errors=errors, latencies_ms=lat, labelled=labelled, correct=correct,
        rewards=np.asarray(rewards if rewards is not None else [], dtype=float),
    )


# -- alpha spending --------------------------------------------------------------------------


def test_obrien_fleming_spending_by_formula() -> None:
    # alpha(t) = 2 - 2 Phi(z_{0.975} / sqrt(t)), z_{0.975} = 1.959964
    z = 1.959963984540054
    assert alpha_spent(1.0, 0.05) == pytest.approx(0.05, abs=1e-12)  # 2 - 2 * 0.975
    # t = 0.5: z / sqrt(0.5) = 2.771808 -> 2 * (1 - Phi(2.771808)) = 2 * 0.0027874 = 0.0055747
    assert z / math.sqrt(0.5) == pytest.approx(2.771808, abs=1e-6)
    assert alpha_spent(0.5, 0.05) == pytest.approx(0.0055747, rel=1e-4)
    # t = 0.2: z / sqrt(0.2) = 4.382613 -> 2 * (1 - Phi(4.382613)) = 2 * 5.8664e-6 = 1.1733e-5
    assert z / math.sqrt(0.2) == pytest.approx(4.382613, abs=1e-6)
    assert alpha_spent(0.2, 0.05) == pytest.approx(1.1733e-5, rel=1e-3)
    assert alpha_spent(0.0, 0.05) == 0.0


def test_increments_sum_to_alpha() -> None:
    increments = [alpha_at_look(k, 5, 0.05) for k in range(1, 6)]
    assert sum(increments) == pytest.approx(0.05, abs=1e-12)
    assert increments == sorted(increments)  # O'Brien-Fleming: strict early, generous late
    # look 5 of 5: alpha(1) - alpha(0.8); z / sqrt(0.8) = 2.191306 -> alpha(0.8) = 0.028430
    assert increments[4] == pytest.approx(0.05 - 2 * (1 - norm.cdf(2.191306)), rel=1e-5)
    assert increments[4] == pytest.approx(0.021570, rel=1e-4)
    with pytest.raises(ValueError):
        alpha_at_look(6, 5, 0.05)


# -- error rate ------------------------------------------------------------------------------


def test_error_rate_z_by_pooled_formula() -> None:
    # canary 30/1000 vs production 10/1000; pooled p = 40/2000 = 0.02
    # se = sqrt(0.02 * 0.98 * (1/1000 + 1/1000)) = sqrt(3.92e-5) = 0.0062610
    # z = (0.03 - 0.01) / 0.0062610 = 3.19438; one-sided p = 1 - Phi(3.19438) = 0.00070
    config = CanaryConfig(max_error_rate_increase=0.0, looks=1, min_requests=100)
    result = compare(arm("production", 1000, 10), arm("canary", 1000, 30), config, look=1)
    m = result.metric("error_rate")
    se = math.sqrt(0.02 * 0.98 * (2 / 1000))
    assert se == pytest.approx(0.0062610, rel=1e-4)
    assert m.statistic == pytest.approx(0.02 / se, rel=1e-9)
    assert m.statistic == pytest.approx(3.19438, rel=1e-5)
    assert m.p_value == pytest.approx(1 - norm.cdf(3.19438), rel=1e-4)
    assert m.p_value == pytest.approx(0.000700, rel=1e-2)
    assert m.difference == pytest.approx(0.02)
    assert m.degraded and result.decision == "rollback"


def test_error_rate_margin_shifts_the_null() -> None:
    # H0: diff <= 0.005 -> z = (0.02 - 0.005) / 0.0062610 = 2.39578, p = 0.008292
    config = CanaryConfig(max_error_rate_increase=0.005, looks=1, min_requests=100)
    m = compare(arm("production", 1000, 10), arm("canary", 1000, 30), config, 1).metric(
        "error_rate"
    )
    assert m.statistic == pytest.approx(0.015 / math.sqrt(0.02 * 0.98 * 0.002), rel=1e-9)
    assert m.p_value == pytest.approx(0.008292, rel=1e-3)


def test_no_errors_anywhere_is_no_evidence() -> None:
    result = compare(arm("production", 500), arm("canary", 500), CanaryConfig(), look=5)
    assert result.metric("error_rate").p_value == 1.0
    assert result.decision == "advance"


# -- latency ---------------------------------------------------------------------------------


def test_mann_whitney_by_hand_and_p99_by_formula() -> None:
    prod = np.arange(1.0, 11.0)  # 1..10
    can = np.arange(1.0, 11.0) + 5.5  # 6.5..15.5, no ties with production
    # U(canary) = pairs (c, p) with c > p: for c = 6.5 + k: 6 + k pairs if 6 + k <= 10
    # k = 0..4: 6, 7, 8, 9, 10; k = 5..9: 10 each -> U = 40 + 50 = 90
    u_hand = sum(int(np.sum(c > prod)) for c in can)
    assert u_hand == 90
    # normal approximation with continuity correction: mu = 50, sigma = sqrt(100 * 21 / 12)
    sigma = math.sqrt(10 * 10 * 21 / 12)
    p_hand = 1 - norm.cdf((90 - 50 - 0.5) / sigma)
    config = CanaryConfig(min_requests=10, looks=1, p99_floor_ms=0.0, p99_ratio_budget=1.2)
    result = compare(
        arm("production", 10, latencies=prod), arm("canary", 10, latencies=can), config, 1
    )
    m = result.metric("latency")
    assert m.statistic == 90
    assert m.p_value == pytest.approx(p_hand, rel=1e-9)
    # p99 by linear interpolation: position 0.99 * 9 = 8.91 -> 9 + 0.91 * (10 - 9) = 9.91
    assert m.production == pytest.approx(9.91)
    assert m.canary == pytest.approx(15.41)
    assert m.details["p99_ratio"] == pytest.approx(15.41 / 9.91)


def test_latency_three_times_slower_rolls_back() -> None:
    rng = np.random.default_rng(1)
    prod = rng.lognormal(np.log(20), 0.3, 2000)
    can = rng.lognormal(np.log(60), 0.3, 2000)
    result = compare(
        arm("production", 2000, latencies=prod), arm("canary", 2000, latencies=can),
        CanaryConfig(), look=5,
    )
    assert result.metric("latency").degraded
    assert result.decision == "rollback"
    assert "latency" in result.reason


def test_small_significant_shift_within_budget_is_not_a_rollback() -> None:
    rng = np.random.default_rng(2)
    prod = rng.lognormal(np.log(20), 0.3, 50_000)
    can = prod * 1.05  # 5 % slower: Mann-Whitney is certain, the p99 is inside 1.2x
    result = compare(
        arm("production", 50_000, latencies=prod), arm("canary", 50_000, latencies=can),
        CanaryConfig(), look=5,
    )
    m = result.metric("latency")
    assert m.p_value is not None and m.alpha is not None and m.p_value < m.alpha
    assert not m.degraded
    assert result.decision == "advance"


# -- accuracy and reward ---------------------------------------------------------------------


def test_accuracy_z_by_formula() -> None:
    # production 900/1000, canary 700/1000; pooled 0.8; se = sqrt(0.8 * 0.2 * 0.002) = 0.017889
    # z = (0.9 - 0.7) / 0.017889 = 11.1803
    config = CanaryConfig(min_requests=100, min_labelled=100, looks=1)
    result = compare(
        arm("production", 1000, labelled=1000, correct=900),
        arm("canary", 1000, labelled=1000, correct=700), config, 1,
    )
    m = result.metric("accuracy")
    assert m.statistic == pytest.approx(0.2 / math.sqrt(0.8 * 0.2 * 0.002), rel=1e-9)
    assert m.statistic == pytest.approx(11.1803, rel=1e-5)
    assert m.difference == pytest.approx(-0.2)
    assert result.decision == "rollback"


def test_welch_by_formula() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, var (ddof 1) 1.6667
    b = np.array([2.0, 4.0, 6.0, 8.0, 10.0])  # mean 6, var 10
    va, vb = 5 / 3 / 4, 10 / 5  # s^2 / n: 0.416667 and 2
    t_hand = (2.5 - 6.0) / math.sqrt(va + vb)  # -3.5 / sqrt(2.416667) = -3.5 / 1.554563
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)  # Welch-Satterthwaite: 5.840278 / 1.057870
    t, p = welch_less(a, b)
    assert t == pytest.approx(t_hand, rel=1e-9)
    assert t_hand == pytest.approx(-2.251436, rel=1e-6)
    assert df == pytest.approx(5.520788, rel=1e-6)
    assert p == pytest.approx(t_dist.cdf(t_hand, df), rel=1e-9)


def test_reward_drop_rolls_back_and_margin_tolerates_it() -> None:
    rng = np.random.default_rng(3)
    prod = rng.normal(1.0, 0.5, 1000)
    can = rng.normal(0.8, 0.5, 1000)
    drop = compare(
        arm("production", 1000, rewards=prod), arm("canary", 1000, rewards=can),
        CanaryConfig(min_requests=100, min_rewards=100), look=5,
    )
    assert drop.metric("reward").degraded and drop.decision == "rollback"
    tolerated = compare(
        arm("production", 1000, rewards=prod), arm("canary", 1000, rewards=can),
        CanaryConfig(min_requests=100, min_rewards=100, max_reward_drop=0.5), look=5,
    )
    assert not tolerated.metric("reward").degraded and tolerated.decision == "advance"


# -- decisions, Bonferroni, rendering --------------------------------------------------------


def test_hold_below_minimum_and_bonferroni_over_tested_metrics() -> None:
    config = CanaryConfig()
    held = compare(arm("production", 150, 1), arm("canary", 150, 1), config, look=1)
    assert held.decision == "hold" and "not enough data" in held.reason
    assert not held.metric("error_rate").tested
    ok = compare(
        arm("production", 400, 2, labelled=200, correct=180),
        arm("canary", 400, 2, labelled=200, correct=180), config, look=3,
    )
    # error rate, latency and accuracy tested: each at the look-3 increment / 3
    assert ok.decision == "advance"
    assert ok.metric("accuracy").alpha == pytest.approx(alpha_at_look(3, 5, 0.05) / 3)
    assert not ok.metric("reward").tested


def test_require_labels_holds() -> None:
    result = compare(
        arm("production", 400), arm("canary", 400), CanaryConfig(require_labels=True), look=5
    )
    assert result.decision == "hold" and "labels" in result.reason


def test_to_dict_is_json_and_markdown_is_a_table() -> None:
    result = compare(arm("production", 1000, 10), arm("canary", 1000, 60), CanaryConfig(), 5)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["decision"] == "rollback"
    assert {m["metric"] for m in data["metrics"]} == {"error_rate", "latency", "accuracy",
                                                     "reward"}
    text = result.to_markdown()
    assert "| metric | production | canary |" in text
    assert "`rollback`" in text and "| error_rate |" in text
