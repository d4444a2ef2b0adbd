"""Canary analysis: is the canary worse than production, at this look of a planned schedule?

:func:`compare` tests four metrics, each one-sided in the direction "the canary is worse", each
against a tolerated margin from :class:`CanaryConfig`:

========== ================================================= ===================================
metric     test                                              degraded when
========== ================================================= ===================================
error rate two-proportion z-test (statsmodels                p < alpha and the canary's server
           ``proportions_ztest``, pooled variance),          error rate (5xx incl. timeouts)
           H0: canary - production <= margin                 exceeds production's by > margin
latency    Mann-Whitney U (scipy, one-sided ``greater``)     p < alpha AND the canary's p99 is
           plus a p99 budget                                 over ``p99_ratio_budget`` x
                                                             production's AND over it by more
                                                             than ``p99_floor_ms``
accuracy   two-proportion z-test on correct/labelled,        p < alpha (accuracy dropped by more
           H0: production - canary <= margin                 than ``max_accuracy_drop``)
reward     Welch's t-test (scipy ``ttest_ind``,              p < alpha (mean reward dropped by
           ``equal_var=False``), H0: drop <= margin          more than ``max_reward_drop``)
========== ================================================= ===================================

Latency needs both a test and a budget: Mann-Whitney on a million requests finds a 1 % shift
"significant", which is no reason to roll back; the p99 budget alone is noise on small samples.
A metric is tested only when both arms have its minimum sample; error rate and latency gate the
decision (fewer than ``min_requests`` per arm: ``hold``), accuracy and reward are tested when the
feedback is there (``require_labels`` makes missing labels a ``hold``).

**Repeated looks.** A canary is looked at after every step of its schedule (``looks`` planned
looks); testing each look at ``alpha`` would roll back good canaries far more often than
``alpha``. We spend ``alpha`` over the looks with the Lan-DeMets O'Brien-Fleming-type function

    alpha(t) = 2 - 2 * Phi(z_{1 - alpha/2} / sqrt(t)),  t_k = k / looks,

and test look ``k`` at the increment ``alpha(t_k) - alpha(t_{k-1})``, split equally
(Bonferroni) over the metrics tested at that look. The increments sum to ``alpha``, so by the
union bound the chance of a false rollback over the whole schedule and all metrics is at most
``alpha``, whatever the correlation between looks and metrics (conservative: exact group
sequential boundaries would use the correlation, at the cost of a numerical integration that is
easy to get wrong and hard to audit). O'Brien-Fleming-type spending keeps early looks very
strict (alpha(0.2) is about 1e-5 for alpha 0.05) and saves almost all of ``alpha`` for the last
look, which suits canaries: the first steps carry little traffic, so only a gross regression
should stop them, and the final decision keeps nearly the power of a single test. It is the
false rollback rate that is controlled; a bad canary passing is guarded by the minimum samples,
the margins and the power those give (see :mod:`analysis.experiments` for sample sizes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest

from analysis.samples import ArmSample, FloatArray

Decision = Literal["rollback", "hold", "advance"]


@dataclass(frozen=True)
class CanaryConfig:
    alpha: float = 0.05
    """Overall false-rollback rate, spent over the looks and split over the metrics."""
    looks: int = 5
    """Planned looks: the length of the canary's step schedule."""
    min_requests: int = 200
    """Per arm, before error rate and latency are tested (below it: ``hold``)."""
    min_labelled: int = 100
    """Per arm, before accuracy is tested."""
    min_rewards: int = 100
    """Per arm, before mean reward is tested."""
    max_error_rate_increase: float = 0.005
    """Tolerated absolute increase of the server error rate (0.005 = 0.5 percentage points)."""
    p99_ratio_budget: float = 1.2
    """The canary's p99 latency may be up to this multiple of production's."""
    p99_floor_ms: float = 5.0
    """... and up to this many ms above it whatever the ratio (noise at tiny latencies)."""
    max_accuracy_drop: float = 0.0
    """Tolerated absolute accuracy drop (0.01 = 1 point)."""
    max_reward_drop: float = 0.0
    """Tolerated drop of the mean reward."""
    require_labels: bool = False
    """``hold`` until accuracy can be tested (for models whose labels arrive quickly)."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.looks < 1:
            raise ValueError(f"looks must be >= 1, got {self.looks}")
        if self.p99_ratio_budget < 1:
            raise ValueError(f"p99_ratio_budget must be >= 1, got {self.p99_ratio_budget}")


def alpha_spent(t: float, alpha: float) -> float:
    """Lan-DeMets O'Brien-Fleming-type spending: alpha spent by information fraction ``t``."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    return float(2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 2.0) / math.sqrt(t)))


def alpha_at_look(look: int, looks: int, alpha: float) -> float:
    """The alpha look ``look`` (1-based) of ``looks`` may spend: the spending increment."""
    if not 1 <= look <= looks:
        raise ValueError(f"look must be between 1 and {looks}, got {look}")
    return alpha_spent(look / looks, alpha) - alpha_spent((look - 1) / looks, alpha)


@dataclass(frozen=True)
class MetricResult:
    metric: str
    """``error_rate``, ``latency``, ``accuracy`` or ``reward``."""
    production: float | None
    """Production's estimate (latency: p99 in ms)."""
    canary: float | None
    difference: float | None
    """canary - production."""
    test: str
    statistic: float | None = None
    p_value: float | None = None
    alpha: float | None = None
    """The alpha this metric was tested at (this look's increment / metrics tested)."""
    tested: bool = False
    degraded: bool = False
    note: str = ""
    details: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CanaryAnalysis:
    look: int
    looks: int
    alpha: float
    alpha_look: float
    """The spending increment of this look (before the split over metrics)."""
    alpha_spent: float
    """Cumulative alpha spent up to and including this look."""
    production: dict[str, Any]
    canary: dict[str, Any]
    metrics: tuple[MetricResult, ...]
    decision: Decision
    reason: str

    def metric(self, name: str) -> MetricResult:
        return next(m for m in self.metrics if m.metric == name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities become None)."""
        cleaned: dict[str, Any] = _clean(asdict(self))
        return cleaned

    def to_markdown(self) -> str:
        """The decision and a table of the metrics (renders in the Dagster UI)."""
        lines = [
            f"**Canary analysis, look {self.look}/{self.looks}: `{self.decision}`** — "
            f"{self.reason}",
            "",
            f"Arms: production {_version(self.production)} "
            f"({self.production['requests']} requests), canary {_version(self.canary)} "
            f"({self.canary['requests']} requests). Alpha this look "
            f"{_fmt(self.alpha_look)} (spent {_fmt(self.alpha_spent)} of {_fmt(self.alpha)}).",
            "",
            "| metric | production | canary | difference | test | statistic | p-value "
            "| alpha | degraded | note |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.metrics:
            cells = [
                m.metric, _fmt(m.production), _fmt(m.canary), _fmt(m.difference), m.test,
                _fmt(m.statistic), _fmt(m.p_value), _fmt(m.alpha),
                ("**yes**" if m.degraded else "no") if m.tested else "not tested",
                m.note.replace("|", "/"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def compare(
    production: ArmSample, canary: ArmSample, config: CanaryConfig, look: int
) -> CanaryAnalysis:
    """Test whether ``canary`` is worse than ``production`` at look ``look`` (1-based) of
    ``config.looks`` and decide: ``rollback`` (a metric significantly degraded), ``hold`` (not
    enough data to test error rate and latency, or labels when required) or ``advance`` (to
    the next step; at the last look, promote)."""
    increment = alpha_at_look(look, config.looks, config.alpha)
    enough = min(production.requests, canary.requests) >= config.min_requests
    candidates = [
        _error_rate(production, canary, config, enough),
        _latency(production, canary, config),
        _accuracy(production, canary, config),
        _reward(production, canary, config),
    ]
    tested = sum(1 for m in candidates if m is not None and m[0])
    per_metric = increment / max(tested, 1)
    metrics = tuple(_finish(m, per_metric) for m in candidates if m is not None)
    degraded = [m for m in metrics if m.degraded]
    if degraded:
        decision: Decision = "rollback"
        reason = "; ".join(f"{m.metric}: {m.note}" for m in degraded)
    elif not enough:
        decision = "hold"
        reason = (
            f"not enough data: {production.requests} production and {canary.requests} canary "
            f"requests, {config.min_requests} needed per arm"
        )
    elif config.require_labels and not next(m for m in metrics if m.metric == "accuracy").tested:
        decision = "hold"
        reason = (
            f"not enough labels: {production.labelled} production and {canary.labelled} canary, "
            f"{config.min_labelled} needed per arm"
        )
    else:
        decision = "advance"
        names = ", ".join(m.metric for m in metrics if m.tested)
        reason = f"no significant degradation ({names} tested at alpha {_fmt(per_metric)} each)"
    return CanaryAnalysis(
        look=look, looks=config.looks, alpha=config.alpha, alpha_look=increment,
        alpha_spent=alpha_spent(look / config.looks, config.alpha),
        production=_arm_summary(production), canary=_arm_summary(canary),
        metrics=metrics, decision=decision, reason=reason,
    )


# -- the tests: each returns (tested, partial result, p-value, practical-degradation) ----------

_Partial = tuple[bool, MetricResult, float | None, bool]


def _finish(partial: _Partial, alpha: float) -> MetricResult:
    tested, result, p_value, practical = partial
    if not tested:
        return result
    degraded = p_value is not None and p_value < alpha and practical
    return replace(result, alpha=alpha, tested=True, degraded=degraded)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _z_test(count: list[int], nobs: list[int], margin: float) -> tuple[float | None, float]:
    """One-sided pooled two-proportion z-test, H1: p[0] - p[1] > margin."""
    pooled = sum(count) / sum(nobs)
    if pooled in (0.0, 1.0):  # no variance: both arms identical, no evidence of a difference
        return None, 1.0
    z, p = proportions_ztest(count, nobs, value=margin, alternative="larger")
    return float(z), float(p)


def _error_rate(
    prod: ArmSample, can: ArmSample, config: CanaryConfig, enough: bool
) -> _Partial:
    margin = config.max_error_rate_increase
    result = MetricResult(
        "error_rate", prod.error_rate, can.error_rate, _diff(can.error_rate, prod.error_rate),
        "two-proportion z-test (pooled, one-sided: canary higher by > margin)",
        details={"margin": margin, "production_timeouts": float(prod.timeouts),
                 "canary_timeouts": float(can.timeouts),
                 "production_client_errors": float(prod.client_errors),
                 "canary_client_errors": float(can.client_errors)},
    )
    if not enough:
        note = f"fewer than {config.min_requests} requests in an arm"
        return False, replace(result, note=note), None, False
    z, p = _z_test([can.server_errors, prod.server_errors], [can.requests, prod.requests], margin)
    note = (
        f"server error rate {can.server_errors}/{can.requests} vs "
        f"{prod.server_errors}/{prod.requests} (margin {margin:g})"
    )
    result = replace(result, statistic=z, p_value=p, note=note)
    return True, result, p, True


def _latency(prod: ArmSample, can: ArmSample, config: CanaryConfig) -> _Partial:
    p99_p, p99_c = prod.latency_quantile(0.99), can.latency_quantile(0.99)
    ratio = p99_c / p99_p if p99_p and p99_c is not None else None
    details = {
        "production_median_ms": prod.latency_quantile(0.5),
        "canary_median_ms": can.latency_quantile(0.5),
        "p99_ratio": ratio, "p99_ratio_budget": config.p99_ratio_budget,
        "p99_floor_ms": config.p99_floor_ms,
    }
    result = MetricResult(
        "latency", p99_p, p99_c, _diff(p99_c, p99_p),
        "Mann-Whitney U (one-sided: canary slower) + p99 budget", details=details,
    )
    n = min(prod.latencies_ms.size, can.latencies_ms.size)
    if n < config.min_requests or p99_p is None or p99_c is None:
        note = f"fewer than {config.min_requests} answered requests in an arm"
        return False, replace(result, note=note), None, False
    u, p = _mann_whitney(can.latencies_ms, prod.latencies_ms)
    over_budget = (
        p99_c > config.p99_ratio_budget * p99_p and p99_c - p99_p > config.p99_floor_ms
    )
    note = (
        f"p99 {p99_c:.1f} ms vs {p99_p:.1f} ms "
        f"({'over' if over_budget else 'within'} budget {config.p99_ratio_budget:g}x "
        f"and +{config.p99_floor_ms:g} ms)"
    )
    result = replace(result, statistic=u, p_value=p, note=note)
    return True, result, p, over_budget


def _mann_whitney(canary: FloatArray, production: FloatArray) -> tuple[float | None, float]:
    both = np.concatenate([canary, production])
    if both.size == 0 or float(np.ptp(both)) == 0.0:
        return None, 1.0
    u, p = stats.mannwhitneyu(canary, production, alternative="greater")
    return float(u), float(p)


def _accuracy(prod: ArmSample, can: ArmSample, config: CanaryConfig) -> _Partial:
    margin = config.max_accuracy_drop
    result = MetricResult(
        "accuracy", prod.accuracy, can.accuracy, _diff(can.accuracy, prod.accuracy),
        "two-proportion z-test (pooled, one-sided: canary lower by > margin)",
        details={"margin": margin, "production_labelled": float(prod.labelled),
                 "canary_labelled": float(can.labelled)},
    )
    if min(prod.labelled, can.labelled) < config.min_labelled:
        note = f"fewer than {config.min_labelled} labelled predictions in an arm"
        return False, replace(result, note=note), None, False
    z, p = _z_test([prod.correct, can.correct], [prod.labelled, can.labelled], margin)
    note = f"correct {can.correct}/{can.labelled} vs {prod.correct}/{prod.labelled}"
    result = replace(result, statistic=z, p_value=p, note=note)
    return True, result, p, True


def _reward(prod: ArmSample, can: ArmSample, config: CanaryConfig) -> _Partial:
    margin = config.max_reward_drop
    result = MetricResult(
        "reward", prod.reward_mean, can.reward_mean, _diff(can.reward_mean, prod.reward_mean),
        "Welch's t-test (one-sided: canary lower by > margin)",
        details={"margin": margin, "production_rewards": float(prod.rewards.size),
                 "canary_rewards": float(can.rewards.size)},
    )
    if min(prod.rewards.size, can.rewards.size) < config.min_rewards:
        note = f"fewer than {config.min_rewards} rewards in an arm"
        return False, replace(result, note=note), None, False
    t, p = welch_less(can.rewards + margin, prod.rewards)
    note = f"mean reward {can.reward_mean:.4g} vs {prod.reward_mean:.4g}"
    result = replace(result, statistic=t, p_value=p, note=note)
    return True, result, p, True


def welch_less(a: FloatArray, b: FloatArray) -> tuple[float | None, float]:
    """Welch's t-test, H1: mean(a) < mean(b); without variance, the means decide."""
    if float(np.var(a)) == 0.0 and float(np.var(b)) == 0.0:
        return None, 0.0 if float(np.mean(a)) < float(np.mean(b)) else 1.0
    t, p = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    return float(t), float(p)


# -- rendering --------------------------------------------------------------------------------


def _arm_summary(arm: ArmSample) -> dict[str, Any]:
    return {
        "arm": arm.arm, "version": arm.version, "requests": arm.requests,
        "server_errors": arm.server_errors, "timeouts": arm.timeouts,
        "client_errors": arm.client_errors, "answered": int(arm.latencies_ms.size),
        "labelled": arm.labelled, "correct": arm.correct, "rewards": int(arm.rewards.size),
        "reward_sum": arm.reward_sum,
    }


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _version(arm: dict[str, Any]) -> str:
    return "(no requests)" if arm["version"] is None else f"v{arm['version']}"


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"
