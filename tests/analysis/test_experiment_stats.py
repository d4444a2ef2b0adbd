"""Experiment statistics against hand-computed values."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.stats import chi2 as chi2_dist
from scipy.stats import norm
from scipy.stats import t as t_dist

from analysis.experiments import (
    ExperimentConfig,
    analyse_experiment,
    labelled_needed,
    rewards_needed,
    sample_ratio_mismatch,
    t_interval,
    wilson_interval,
)
from analysis.samples import ArmSample
from registry.traffic import Experiment, Variant

T0, T1 = datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC)
Z975 = 1.959963984540054
Z80 = 0.8416212335729143


def test_wilson_interval_by_formula() -> None:
    # 45 correct of 50: p = 0.9, z = 1.959964
    # centre = (p + z^2 / 2n) / (1 + z^2 / n) = (0.9 + 0.0384146) / 1.0768292 = 0.871461
    # half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)
    #      = 1.820125 * sqrt(0.0018 + 0.0003841) = 1.820125 * 0.046735 = 0.085063
    n, p, z = 50, 0.9, Z975
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert centre == pytest.approx(0.871461, abs=1e-6)
    assert half == pytest.approx(0.085063, abs=1e-6)
    low, high = wilson_interval(45, 50) or (0.0, 0.0)
    assert low == pytest.approx(centre - half, rel=1e-9)
    assert high == pytest.approx(centre + half, rel=1e-9)
    assert wilson_interval(0, 0) is None


def test_t_interval_by_formula() -> None:
    values = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])  # mean 5, s^2 = 32 / 7
    s = math.sqrt(32 / 7)  # 2.138090
    half = t_dist.ppf(0.975, 7) * s / math.sqrt(8)  # 2.364624 * 0.755929 = 1.787484
    assert half == pytest.approx(1.787484, rel=1e-5)
    low, high = t_interval(values) or (0.0, 0.0)
    assert low == pytest.approx(5 - half) and high == pytest.approx(5 + half)


def test_chi_square_srm_by_formula() -> None:
    # 600 / 400 units against 50 / 50: expected 500 each
    # chi2 = (600 - 500)^2 / 500 + (400 - 500)^2 / 500 = 20 + 20 = 40, df = 1
    # p = P(chi2_1 > 40) = 2 (1 - Phi(sqrt(40))) = 2.54e-10
    stat, p = sample_ratio_mismatch([600, 400], [50.0, 50.0])
    assert stat == pytest.approx(40.0)
    assert p == pytest.approx(2 * (1 - norm.cdf(math.sqrt(40))), rel=1e-6)
    assert p == pytest.approx(2.54e-10, rel=1e-2)
    # 3 arms 20 / 30 / 50 weights, 220 / 280 / 500 observed: expected 200 / 300 / 500
    # chi2 = 400 / 200 + 400 / 300 + 0 = 3.3333, df = 2, p = exp(-3.3333 / 2) = 0.188876
    stat, p = sample_ratio_mismatch([220, 280, 500], [20.0, 30.0, 50.0])
    assert stat == pytest.approx(10 / 3)
    assert p == pytest.approx(math.exp(-10 / 6), rel=1e-9)
    assert p == pytest.approx(chi2_dist.sf(10 / 3, 2))


def test_sample_sizes_by_formula() -> None:
    # baseline 0.90, mde 0.02: Cohen's h = 2 asin(sqrt(0.92)) - 2 asin(sqrt(0.90)) = 0.069988
    # n per arm = 2 ((z_0.975 + z_0.8) / h)^2 = 2 (2.801585 / 0.069988)^2 = 3204.7 -> 3205
    h = 2 * math.asin(math.sqrt(0.92)) - 2 * math.asin(math.sqrt(0.90))
    assert h == pytest.approx(0.069988, abs=1e-6)
    n_hand = 2 * ((Z975 + Z80) / h) ** 2
    assert n_hand == pytest.approx(3204.7, abs=0.1)
    assert labelled_needed(0.90, 0.02, 0.05, 0.8) == math.ceil(n_hand) == 3205
    # rewards: sd 1, mde 0.2 -> d = 0.2; the normal formula gives 2 (2.801585 / 0.2)^2 = 392.4,
    # the t-test needs a little more (t quantiles): 393.4 -> 394
    assert 2 * ((Z975 + Z80) / 0.2) ** 2 == pytest.approx(392.45, abs=0.01)
    assert rewards_needed(1.0, 0.2, 0.05, 0.8) == 394
    assert rewards_needed(0.0, 0.2, 0.05, 0.8) is None


def _arm(name: str, version: int, units: int, labelled: int, correct: int,
         rewards: list[float]) -> ArmSample:
    return ArmSample(
        arm=name, version=version, requests=units * 2, units=units, labelled=labelled,
        correct=correct, rewards=np.asarray(rewards, dtype=float),
    )


def test_analyse_experiment_against_control() -> None:
    experiment = Experiment(
        id="exp", salt="s",
        variants=(Variant(1, 50.0, "control"), Variant(2, 50.0, "treatment")),
    )
    arms = [
        _arm("control", 1, 1000, 1000, 900, [1.0, 2.0, 3.0, 4.0]),
        _arm("treatment", 2, 1010, 1000, 930, [2.0, 4.0, 6.0, 8.0, 10.0]),
        _arm("stray", 9, 5, 0, 0, []),  # not a variant of the experiment: ignored
    ]
    result = analyse_experiment("m", experiment, arms, T0, T1, ExperimentConfig())
    control, treatment = result.variants
    assert control.is_control and control.accuracy_p_value is None
    # 930/1000 vs 900/1000: pooled 0.915, se = sqrt(0.915 * 0.085 * 0.002) = 0.012472
    # z = 0.03 / 0.012472 = 2.40541, two-sided p = 2 (1 - Phi(2.40541)) = 0.016153
    z = 0.03 / math.sqrt(0.915 * 0.085 * 0.002)
    assert z == pytest.approx(2.40541, rel=1e-5)
    assert treatment.accuracy_p_value == pytest.approx(2 * (1 - norm.cdf(z)), rel=1e-9)
    assert treatment.accuracy_diff == pytest.approx(0.03)
    # rewards: Welch two-sided; t = 3.5 / 1.554563 = 2.251436, df = 5.520788
    assert treatment.reward_p_value == pytest.approx(
        2 * t_dist.sf(2.251436, 5.520788), rel=1e-5
    )
    # SRM: 1000 / 1010 against 50 / 50 is fine
    assert not result.srm_detected
    assert result.srm_chi2 == pytest.approx(2 * 5**2 / 1005)
    # sample size from the control's accuracy (0.90, mde 0.02): 3205 per arm
    assert result.labelled_needed_per_arm == 3205
    assert treatment.labelled_still_needed == 3205 - 1000
    rows = result.to_rows()
    assert [r["variant"] for r in rows] == ["control", "treatment"]
    assert rows[1]["accuracy_ci_low"] == pytest.approx(wilson_interval(930, 1000)[0])  # type: ignore[index]
    text = result.to_markdown()
    assert "| treatment |" in text and "Sample-ratio mismatch" not in text


def test_missing_variant_is_empty_and_srm_flags() -> None:
    experiment = Experiment(
        id="exp", salt="s",
        variants=(Variant(1, 50.0, "a"), Variant(2, 50.0, "b")),
    )
    result = analyse_experiment("m", experiment, [_arm("a", 1, 300, 0, 0, [])], T0, T1)
    b = result.variants[1]
    assert b.requests == 0 and b.accuracy is None and b.accuracy_p_value is None
    assert result.srm_detected  # 300 / 0 against 50 / 50
    assert "Sample-ratio mismatch" in result.to_markdown()
