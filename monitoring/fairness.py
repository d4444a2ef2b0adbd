"""Fairness metrics per protected attribute, with fairlearn: the numbers behind the blocking
validation check (:mod:`assets.fairness`), the monitored ``fairness`` asset and the ``fairness``
alert rule.

Everything is computed on the **favorable outcome** (``favorable_label``: the decision the person
wants, e.g. 0 = "not flagged as fraud"), so "selection rate" below is the rate of favorable
decisions, as in the EEOC Uniform Guidelines:

- ``dp_difference``: demographic-parity difference, the largest gap between groups' favorable
  rates (``fairlearn.metrics.demographic_parity_difference``);
- ``di_ratio``: disparate-impact ratio, lowest favorable rate / highest
  (``demographic_parity_ratio``). The **four-fifths rule** (29 CFR 1607.4(D)): a ratio below
  0.8 is evidence of adverse impact;
- ``eo_difference``: equalized-odds difference, the larger of the true-positive-rate and
  false-positive-rate gaps (``equalized_odds_difference``), needs true labels;
- ``eop_difference``: equal-opportunity difference, the true-positive-rate gap alone
  (``MetricFrame`` with ``true_positive_rate``), needs true labels.

Groups with fewer than ``min_group_size`` rows are reported but left out of the metrics (their
rates are noise); with fewer than two groups left there is no verdict (``judged = False``).
Pure functions of arrays: no I/O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FairnessBars:
    """The thresholds a model must meet (``None``: that metric is reported, not judged)."""

    favorable_label: int = 1
    min_di_ratio: float | None = 0.8
    max_dp_difference: float | None = None
    max_eo_difference: float | None = None
    min_group_size: int = 30

    @classmethod
    def of(cls, settings: Any) -> FairnessBars:
        """From a spec's ``fairness`` block (:class:`assets.spec.FairnessSettings`)."""
        return cls(
            favorable_label=int(settings.favorable_label),
            min_di_ratio=settings.min_di_ratio,
            max_dp_difference=settings.max_dp_difference,
            max_eo_difference=settings.max_eo_difference,
            min_group_size=int(settings.min_group_size),
        )


@dataclass(frozen=True)
class GroupRates:
    """One group's size and rates (``tpr``/``fpr`` of the favorable outcome; None without
    labels or without rows of that true class)."""

    group: str
    n: int
    selection_rate: float
    tpr: float | None = None
    fpr: float | None = None
    judged: bool = True


@dataclass(frozen=True)
class AttributeFairness:
    """The fairness of a model's decisions with respect to one protected attribute."""

    attribute: str
    n: int
    groups: list[GroupRates]
    dp_difference: float | None
    di_ratio: float | None
    eo_difference: float | None
    eop_difference: float | None
    favorable_label: int
    violations: list[str] = field(default_factory=list)

    @property
    def judged(self) -> bool:
        return self.di_ratio is not None

    @property
    def passed(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        if not self.judged:
            return (f"{self.attribute}: not judged (fewer than two groups with enough rows "
                    f"among {self.n})")
        parts = [f"DI ratio {self.di_ratio:.3f}", f"DP difference {self.dp_difference:.3f}"]
        if self.eo_difference is not None:
            parts.append(f"EO difference {self.eo_difference:.3f}")
        if self.eop_difference is not None:
            parts.append(f"TPR difference {self.eop_difference:.3f}")
        verdict = "; ".join(self.violations) if self.violations else "within bars"
        return f"{self.attribute}: {', '.join(parts)} on {self.n} rows ({verdict})"


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def attribute_fairness(
    attribute: str,
    groups: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    y_true: Sequence[Any] | np.ndarray | None = None,
    bars: FairnessBars = FairnessBars(),
) -> AttributeFairness:
    """Metrics and violations of ``y_pred`` (0/1 decisions) across ``groups`` (the attribute's
    value per row; missing values form no group). ``y_true``: true 0/1 labels, or None."""
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        true_positive_rate,
    )

    sensitive = np.asarray(groups, dtype=object)
    pred = np.asarray(y_pred).reshape(-1)
    if sensitive.shape[0] != pred.shape[0]:
        raise ValueError(f"{attribute}: {sensitive.shape[0]} group values for {pred.shape[0]} "
                         "predictions")
    truth = None if y_true is None else np.asarray(y_true).reshape(-1)
    known = np.array([g is not None and g == g and str(g) != "" for g in sensitive], dtype=bool)
    sensitive, pred = sensitive[known].astype(str), pred[known]
    truth = None if truth is None else truth[known]
    fav = (pred == bars.favorable_label).astype(np.int64)
    fav_true = None if truth is None else (truth == bars.favorable_label).astype(np.int64)

    rates: list[GroupRates] = []
    names, counts = np.unique(sensitive, return_counts=True)
    big = {str(g) for g, c in zip(names, counts, strict=True) if c >= bars.min_group_size}
    for name, count in zip(names, counts, strict=True):
        mask = sensitive == name
        tpr = fpr = None
        if fav_true is not None:
            pos, neg = mask & (fav_true == 1), mask & (fav_true == 0)
            tpr = float(fav[pos].mean()) if pos.any() else None
            fpr = float(fav[neg].mean()) if neg.any() else None
        rates.append(GroupRates(str(name), int(count), float(fav[mask].mean()), tpr, fpr,
                                str(name) in big))
    keep = np.isin(sensitive, list(big))
    result: dict[str, float | None] = dict.fromkeys(("dp", "di", "eo", "eop"))
    if len(big) >= 2:
        s, f = sensitive[keep], fav[keep]
        result["dp"] = _finite(demographic_parity_difference(f, f, sensitive_features=s))
        result["di"] = _finite(demographic_parity_ratio(f, f, sensitive_features=s))
        if fav_true is not None:
            t = fav_true[keep]
            with warnings.catch_warnings():  # a group without one true class: NaN, said below
                warnings.simplefilter("ignore")
                result["eo"] = _finite(equalized_odds_difference(t, f, sensitive_features=s))
                frame = MetricFrame(metrics=true_positive_rate, y_true=t, y_pred=f,
                                    sensitive_features=s)
                result["eop"] = _finite(frame.difference())
    violations = _violations(result, bars)
    return AttributeFairness(attribute, int(pred.shape[0]), rates, result["dp"], result["di"],
                             result["eo"], result["eop"], bars.favorable_label, violations)


def _violations(result: dict[str, float | None], bars: FairnessBars) -> list[str]:
    out: list[str] = []
    di, dp, eo = result["di"], result["dp"], result["eo"]
    if bars.min_di_ratio is not None and di is not None and di < bars.min_di_ratio:
        rule = " (four-fifths rule: adverse impact)" if bars.min_di_ratio == 0.8 else ""
        out.append(f"DI ratio {di:.3f} < {bars.min_di_ratio:g}{rule}")
    if bars.max_dp_difference is not None and dp is not None and dp > bars.max_dp_difference:
        out.append(f"DP difference {dp:.3f} > {bars.max_dp_difference:g}")
    if bars.max_eo_difference is not None and eo is not None and eo > bars.max_eo_difference:
        out.append(f"EO difference {eo:.3f} > {bars.max_eo_difference:g}")
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_report(title: str, results: Sequence[AttributeFairness],
                    bars: FairnessBars) -> str:
    """A Markdown report (Dagster renders it in the asset's metadata)."""
    lines = [f"# Fairness: {title}", "",
             f"Favorable outcome: `{bars.favorable_label}`. Bars: DI ratio >= "
             f"{_fmt(bars.min_di_ratio, 2)}, DP difference <= {_fmt(bars.max_dp_difference, 2)}, "
             f"EO difference <= {_fmt(bars.max_eo_difference, 2)}; groups under "
             f"{bars.min_group_size} rows are not judged.", ""]
    for res in results:
        verdict = ("not judged" if not res.judged else
                   "**PASS**" if res.passed else "**FAIL**: " + "; ".join(res.violations))
        lines += [f"## `{res.attribute}`: {verdict}", "",
                  "| metric | value |", "|---|---|",
                  f"| disparate-impact ratio | {_fmt(res.di_ratio)} |",
                  f"| demographic-parity difference | {_fmt(res.dp_difference)} |",
                  f"| equalized-odds difference | {_fmt(res.eo_difference)} |",
                  f"| equal-opportunity (TPR) difference | {_fmt(res.eop_difference)} |", "",
                  "| group | rows | favorable rate | TPR | FPR | judged |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g.group} | {g.n} | {g.selection_rate:.3f} | {_fmt(g.tpr)} | "
                  f"{_fmt(g.fpr)} | {'yes' if g.judged else 'no'} |" for g in res.groups]
        lines.append("")
    return "\n".join(lines)
