"""A/B experiment analysis: per variant, what it did and how sure we are, against the control.

For an :class:`~registry.traffic.Experiment` (variants with configured weights; the first
variant is the control) and the requests it routed in a window (:func:`read_experiment`):

* **units** (distinct ``user_id``; anonymous requests are each their own unit, since the router
  assigns them per request) and **requests**;
* **accuracy** (correct / labelled; a conversion when the label is 0/1 "converted") with a 95 %
  **Wilson** interval (statsmodels ``proportion_confint(method="wilson")``: unlike the Wald
  interval it stays inside [0, 1] and keeps its coverage near 0 and 1), and the two-sided pooled
  **two-proportion z-test** against the control;
* **mean reward** with a **t** interval (mean +- t_{0.975, n-1} s / sqrt(n)) and **Welch's**
  two-sided t-test against the control (no equal-variance assumption);
* **sample-ratio mismatch**: a chi-square goodness-of-fit test of the units per variant against
  the configured weights (scipy ``chisquare``), flagged at p < 0.001: a broken assignment (lost
  logs, a variant that fails before logging, bots) biases every comparison, so an SRM means
  "do not read the results", not "variant B is better". The strict threshold keeps false alarms
  rare on the many looks an experiment gets.
* **sample size per arm** needed to detect ``mde_accuracy`` (absolute, from the control's
  accuracy: statsmodels ``NormalIndPower`` on Cohen's h, ``proportion_effectsize``) and
  ``mde_reward`` (from the control's reward standard deviation: ``TTestIndPower`` on Cohen's d)
  at ``alpha`` 0.05 two-sided and power 0.8, and how many more each variant still needs.

P-values are per comparison, not corrected for several variants or repeated looks: read them
once the planned sample size is reached (the "still needed" columns), not every day.

:func:`write_experiment_results` stores :meth:`ExperimentResult.to_rows` as Parquet where the
DuckDB view ``experiment_results`` (:mod:`warehouse.sql`) reads them.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import (
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from analysis.samples import ArmSample, FloatArray, read_arms
from registry.traffic import Experiment
from warehouse.sql import EXPERIMENT_RESULTS_DIR, EXPERIMENT_RESULTS_SCHEMA

if TYPE_CHECKING:
    from registry.storage import Location

Interval = tuple[float, float]


@dataclass(frozen=True)
class ExperimentConfig:
    alpha: float = 0.05
    power: float = 0.8
    confidence: float = 0.95
    mde_accuracy: float = 0.02
    """Minimum detectable effect on accuracy/conversion, absolute (0.02 = 2 points)."""
    mde_reward: float = 0.05
    """Minimum detectable effect on the mean reward, in reward units."""
    srm_threshold: float = 0.001


@dataclass(frozen=True)
class VariantResult:
    name: str
    version: int
    weight: float
    is_control: bool
    units: int
    anonymous: int
    requests: int
    server_errors: int
    labelled: int
    correct: int
    accuracy: float | None
    accuracy_ci: Interval | None
    accuracy_diff: float | None
    """accuracy - the control's."""
    accuracy_p_value: float | None
    rewards: int
    reward_mean: float | None
    reward_ci: Interval | None
    reward_diff: float | None
    reward_p_value: float | None
    labelled_still_needed: int | None
    rewards_still_needed: int | None


@dataclass(frozen=True)
class ExperimentResult:
    model: str
    experiment: str
    since: datetime
    until: datetime
    analysed_at: datetime
    variants: tuple[VariantResult, ...]
    srm_chi2: float | None
    srm_p_value: float | None
    srm_detected: bool
    labelled_needed_per_arm: int | None
    rewards_needed_per_arm: int | None

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per variant with the columns of the ``experiment_results`` view."""
        rows = []
        for v in self.variants:
            acc_ci, rew_ci = v.accuracy_ci or (None, None), v.reward_ci or (None, None)
            rows.append({
                "analysed_at": self.analysed_at, "model": self.model,
                "experiment": self.experiment, "window_start": self.since,
                "window_end": self.until, "variant": v.name, "version": v.version,
                "is_control": v.is_control, "weight": v.weight, "units": v.units,
                "anonymous": v.anonymous, "requests": v.requests,
                "server_errors": v.server_errors, "labelled": v.labelled, "correct": v.correct,
                "accuracy": v.accuracy, "accuracy_ci_low": acc_ci[0],
                "accuracy_ci_high": acc_ci[1], "accuracy_diff": v.accuracy_diff,
                "accuracy_p_value": v.accuracy_p_value, "rewards": v.rewards,
                "reward_mean": v.reward_mean, "reward_ci_low": rew_ci[0],
                "reward_ci_high": rew_ci[1], "reward_diff": v.reward_diff,
                "reward_p_value": v.reward_p_value, "srm_chi2": self.srm_chi2,
                "srm_p_value": self.srm_p_value, "srm_detected": self.srm_detected,
                "labelled_needed_per_arm": self.labelled_needed_per_arm,
                "labelled_still_needed": v.labelled_still_needed,
                "rewards_needed_per_arm": self.rewards_needed_per_arm,
                "rewards_still_needed": v.rewards_still_needed,
            })
        return rows

    def to_markdown(self) -> str:
        """A summary line, an SRM warning if any, and a table of the variants."""
        lines = [
            f"**Experiment `{self.experiment}`** on `{self.model}`, "
            f"{self.since.isoformat()} to {self.until.isoformat()}",
            "",
        ]
        if self.srm_detected:
            lines += [
                f"**Sample-ratio mismatch** (chi-square {_fmt(self.srm_chi2)}, "
                f"p = {_fmt(self.srm_p_value)}): assignment is broken, do not read the results.",
                "",
            ]
        lines += [
            "| variant | version | weight | units | requests | accuracy (95 % CI) | p vs control "
            "| mean reward (95 % CI) | p vs control | labels still needed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in self.variants:
            cells = [
                v.name + (" (control)" if v.is_control else ""), str(v.version), f"{v.weight:g}",
                str(v.units + v.anonymous), str(v.requests),
                f"{_fmt(v.accuracy)} {_fmt_ci(v.accuracy_ci)} (n={v.labelled})",
                _fmt(v.accuracy_p_value),
                f"{_fmt(v.reward_mean)} {_fmt_ci(v.reward_ci)} (n={v.rewards})",
                _fmt(v.reward_p_value),
                "—" if v.labelled_still_needed is None else str(v.labelled_still_needed),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> Interval | None:
    if n <= 0:
        return None
    low, high = proportion_confint(correct, n, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def t_interval(values: FloatArray, confidence: float = 0.95) -> Interval | None:
    if values.size < 2:
        return None
    mean = float(values.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1)) * float(
        values.std(ddof=1)
    ) / math.sqrt(values.size)
    return mean - half, mean + half


def sample_ratio_mismatch(
    observed: Sequence[int], weights: Sequence[float]
) -> tuple[float | None, float | None]:
    """(chi-square, p) of ``observed`` counts against the expected split by ``weights``."""
    total = sum(observed)
    if total == 0 or len(observed) < 2:
        return None, None
    expected = [total * w / sum(weights) for w in weights]
    chi2, p = stats.chisquare(observed, expected)
    return float(chi2), float(p)


def labelled_needed(baseline: float, mde: float, alpha: float, power: float) -> int | None:
    """Labelled predictions per arm to detect ``baseline`` -> ``baseline + mde``."""
    target = baseline + mde if baseline + mde <= 1 else baseline - mde
    h = abs(float(proportion_effectsize(target, baseline)))
    if h == 0 or not math.isfinite(h):
        return None
    n = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=1.0)
    return math.ceil(float(n))


def rewards_needed(sd: float, mde: float, alpha: float, power: float) -> int | None:
    """Rewards per arm to detect a shift of ``mde`` in the mean (Cohen's d = mde / sd)."""
    if sd <= 0 or mde <= 0 or not math.isfinite(sd):
        return None
    n = TTestIndPower().solve_power(effect_size=mde / sd, alpha=alpha, power=power, ratio=1.0)
    return math.ceil(float(n))


def analyse_experiment(
    model: str,
    experiment: Experiment,
    arms: Sequence[ArmSample],
    since: datetime,
    until: datetime,
    config: ExperimentConfig | None = None,
) -> ExperimentResult:
    """The experiment's result from its arms (matched to its variants by name and version;
    a variant without requests gets an empty arm). The first variant is the control."""
    config = config or ExperimentConfig()
    by_key = {(a.arm, a.version): a for a in arms}
    samples = [
        by_key.get((v.name, v.version), ArmSample(arm=v.name, version=v.version))
        for v in experiment.variants
    ]
    control = samples[0]
    chi2, srm_p = sample_ratio_mismatch(
        [s.units + s.anonymous for s in samples], [v.weight for v in experiment.variants]
    )
    need_labels = (
        labelled_needed(control.accuracy, config.mde_accuracy, config.alpha, config.power)
        if control.accuracy is not None else None
    )
    need_rewards = (
        rewards_needed(float(control.rewards.std(ddof=1)), config.mde_reward, config.alpha,
                       config.power)
        if control.rewards.size >= 2 else None
    )
    results = []
    for i, (variant, s) in enumerate(zip(experiment.variants, samples, strict=True)):
        is_control = i == 0
        results.append(VariantResult(
            name=variant.name, version=variant.version, weight=variant.weight,
            is_control=is_control, units=s.units, anonymous=s.anonymous, requests=s.requests,
            server_errors=s.server_errors, labelled=s.labelled, correct=s.correct,
            accuracy=s.accuracy, accuracy_ci=wilson_interval(s.correct, s.labelled,
                                                             config.confidence),
            accuracy_diff=None if is_control else _diff(s.accuracy, control.accuracy),
            accuracy_p_value=None if is_control else _proportions_p(s, control),
            rewards=int(s.rewards.size), reward_mean=s.reward_mean,
            reward_ci=t_interval(s.rewards, config.confidence),
            reward_diff=None if is_control else _diff(s.reward_mean, control.reward_mean),
            reward_p_value=None if is_control else _welch_p(s.rewards, control.rewards),
            labelled_still_needed=None if need_labels is None
            else max(0, need_labels - s.labelled),
            rewards_still_needed=None if need_rewards is None
            else max(0, need_rewards - int(s.rewards.size)),
        ))
    return ExperimentResult(
        model=model, experiment=experiment.id, since=since, until=until,
        analysed_at=datetime.now(UTC), variants=tuple(results), srm_chi2=chi2,
        srm_p_value=srm_p, srm_detected=srm_p is not None and srm_p < config.srm_threshold,
        labelled_needed_per_arm=need_labels, rewards_needed_per_arm=need_rewards,
    )


def read_experiment(
    logs_dir: Path,
    model: str,
    experiment: Experiment,
    since: datetime,
    until: datetime,
    config: ExperimentConfig | None = None,
    *,
    label_output: str = "label",
    logs_location: Location | None = None,
) -> ExperimentResult:
    """:func:`analyse_experiment` over the requests ``experiment`` routed in ``[since, until)``
    (see :func:`analysis.samples.read_arms`, also for ``logs_location``)."""
    arms = read_arms(
        logs_dir, model, since, until, experiment=experiment.id, label_output=label_output,
        logs_location=logs_location,
    )
    return analyse_experiment(model, experiment, arms, since, until, config)


def write_experiment_results(logs_dir: Path, results: Sequence[ExperimentResult]) -> Path | None:
    """Append ``results`` as one Parquet file under ``<logs_dir>/analysis/experiment_results``
    (``$ROOST_HOME/logs/...`` by default; temp file, fsync, rename), read by the DuckDB view
    ``experiment_results``; None when there is nothing to write. Example queries
    (``roost sql``)::

        -- the latest analysis of each experiment, variant by variant
        SELECT experiment, variant, accuracy, accuracy_ci_low, accuracy_ci_high,
               accuracy_p_value, srm_detected, labelled_still_needed
        FROM experiment_results
        QUALIFY analysed_at = max(analysed_at) OVER (PARTITION BY model, experiment)
        ORDER BY experiment, is_control DESC, variant;

        -- experiments whose assignment is broken
        SELECT DISTINCT model, experiment, srm_p_value FROM experiment_results
        WHERE srm_detected;

        -- how a variant's lift against the control evolved
        SELECT analysed_at, accuracy_diff, accuracy_p_value FROM experiment_results
        WHERE experiment = 'new-ranker' AND variant = 'treatment' ORDER BY analysed_at;
    """
    rows = [row for result in results for row in result.to_rows()]
    if not rows:
        return None
    directory = Path(logs_dir) / EXPERIMENT_RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=EXPERIMENT_RESULTS_SCHEMA)
    name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    tmp = directory / f".tmp-{name}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    final = directory / f"{name}.parquet"
    os.replace(tmp, final)
    return final


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _proportions_p(variant: ArmSample, control: ArmSample) -> float | None:
    """Two-sided pooled two-proportion z-test of accuracy against the control."""
    if min(variant.labelled, control.labelled) == 0:
        return None
    pooled = (variant.correct + control.correct) / (variant.labelled + control.labelled)
    if pooled in (0.0, 1.0):
        return 1.0
    _, p = proportions_ztest([variant.correct, control.correct],
                             [variant.labelled, control.labelled])
    return float(p)


def _welch_p(variant: FloatArray, control: FloatArray) -> float | None:
    """Two-sided Welch t-test of the mean reward against the control."""
    if min(variant.size, control.size) < 2:
        return None
    if float(np.var(variant)) == 0.0 and float(np.var(control)) == 0.0:
        return 1.0 if float(variant.mean()) == float(control.mean()) else 0.0
    _, p = stats.ttest_ind(variant, control, equal_var=False)
    return float(p)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4g}"


def _fmt_ci(ci: Interval | None) -> str:
    return "" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
