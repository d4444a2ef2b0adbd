"""Evaluating alert rules: ``evaluate(rules, source, now) -> list[AlertState]``, pure.

One :class:`AlertState` per rule and subject (a model, or the whole platform for a burn-rate
rule that is not ``per_model``), firing or not, so whoever keeps state can also resolve.
``value`` is ``None`` when there was no data (never firing).

Burn rate (Google SRE workbook, "multiwindow, multi-burn-rate alerts"): over a window,
``burn rate = error ratio / (1 - SLO)``; 1x spends exactly the budget over the SLO period.
A burn-rate rule fires when the burn rate exceeds ``factor`` over BOTH its long window (the
alert is significant) and its short window (it is still happening, so it resolves soon after
the errors stop). For the 99.99 % SLO: page at 14.4x over 1 h and 5 min, ticket at 6x over 6 h
and 30 min.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitoring.alerts.config import (
    AccuracyRule,
    BurnRateRule,
    DriftRule,
    ErrorRateRule,
    FairnessRule,
    FreshnessRule,
    LatencyRule,
    Rule,
)
from monitoring.alerts.source import MetricSource, RequestCounts


def fingerprint(labels: Mapping[str, str]) -> str:
    """Stable identity of an alert: a hash of its sorted labels (16 hex digits)."""
    return hashlib.sha256(json.dumps(dict(labels), sort_keys=True).encode()).hexdigest()[:16]


def format_duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``300`` -> ``5m``, ``90`` -> ``90s`` (Prometheus' style)."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0 and whole == seconds:
            return f"{whole // size}{unit}"
    return f"{whole}s" if whole == seconds else f"{seconds:g}s"


@dataclass(frozen=True)
class AlertState:
    """One rule's verdict on one subject at one time."""

    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    firing: bool
    value: float | None
    """The rule's figure (ms, ratio, burn rate, seconds...); ``None``: no data."""
    for_s: float = 0.0
    details: dict[str, float | None] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


def burn_rate(counts: RequestCounts, slo: float) -> float | None:
    """Error ratio over the window divided by the error budget ``1 - slo``; ``None``: no data."""
    ratio = counts.error_ratio
    return None if ratio is None else ratio / (1.0 - slo)


def _state(rule: Rule, model: str | None, firing: bool, value: float | None, summary: str,
           description: str, **details: float | None) -> AlertState:
    labels = {"alertname": rule.name, "severity": rule.severity}
    if model is not None:
        labels["model"] = model
    text = description + (f" {rule.description}" if rule.description else "")
    return AlertState(rule.name, labels, {"summary": summary, "description": text.strip()},
                      firing, value, rule.for_s, dict(details))


def _latency(rule: LatencyRule, source: MetricSource, model: str, now: datetime) -> AlertState:
    window = format_duration(rule.window_s)
    value, n = source.latency_quantile(model, rule.quantile, now - timedelta(
        seconds=rule.window_s), now)
    if n < rule.min_requests:
        value = None
    pct = f"p{rule.quantile * 100:g}"
    firing = value is not None and value > rule.threshold_ms
    shown = "no data" if value is None else f"{value:.1f} ms"
    return _state(rule, model, firing, value, f"{model}: {pct} latency {shown} over {window}",
                  f"{pct} latency of {n} successful requests over the last {window} is {shown} "
                  f"(threshold {rule.threshold_ms:g} ms).", requests=n)


def _error_rate(rule: ErrorRateRule, source: MetricSource, model: str,
                now: datetime) -> AlertState:
    window = format_duration(rule.window_s)
    counts = source.request_counts(model, now - timedelta(seconds=rule.window_s), now)
    value = counts.error_ratio if counts.total >= rule.min_requests else None
    firing = value is not None and value > rule.threshold
    shown = "no data" if value is None else f"{value:.4%}"
    return _state(rule, model, firing, value, f"{model}: 5xx rate {shown} over {window}",
                  f"{counts.server_errors} of {counts.total} requests over the last {window} "
                  f"answered 5xx (threshold {rule.threshold:.4%}).",
                  requests=counts.total, errors=counts.server_errors)


def _drift(rule: DriftRule, source: MetricSource, model: str, now: datetime) -> AlertState:
    since = (now - timedelta(seconds=rule.max_age_s)).date()
    value = source.drift_share(model, since)
    firing = value is not None and value > rule.threshold
    shown = "no recent drift report" if value is None else f"{value:.0%} of features drifted"
    return _state(rule, model, firing, value, f"{model}: {shown}",
                  f"Latest drift report since {since}: {shown} (threshold "
                  f"{rule.threshold:.0%}).")


def _accuracy(rule: AccuracyRule, source: MetricSource, model: str,
              now: datetime) -> AlertState:
    window = format_duration(rule.window_s)
    correct, labelled = source.accuracy(model, now - timedelta(seconds=rule.window_s), now,
                                        rule.label_output)
    value = correct / labelled if labelled >= rule.min_labelled else None
    firing = value is not None and value < rule.threshold
    shown = f"no data ({labelled} labelled)" if value is None else f"{value:.1%}"
    return _state(rule, model, firing, value, f"{model}: accuracy {shown} over {window}",
                  f"{correct} of {labelled} labelled requests over the last {window} were "
                  f"correct (threshold {rule.threshold:.1%}, at least {rule.min_labelled} "
                  "labelled).", labelled=labelled, correct=correct)


def _freshness(rule: FreshnessRule, source: MetricSource, model: str,
               now: datetime) -> AlertState:
    pending = source.pending_artifact(model)
    if pending is None:
        return _state(rule, model, False, None, f"{model}: no version waiting for production",
                      "Every registered version is in production or retired.")
    waited = (now - pending.registered_at).total_seconds()
    firing = waited > rule.max_age_s
    return _state(rule, model, firing, waited,
                  f"{model} v{pending.version}: {format_duration(int(waited))} since its "
                  "artifact was registered, not in production",
                  f"v{pending.version} was registered at {pending.registered_at.isoformat()} "
                  f"and is {pending.state}; freshness objective: production within "
                  f"{format_duration(rule.max_age_s)}.", version=float(pending.version))


def _fairness(rule: FairnessRule, source: MetricSource, model: str,
              now: datetime) -> AlertState:
    since = (now - timedelta(seconds=rule.max_age_s)).date()
    rows = [f for f in source.fairness(model, since) if f.judged
            and (rule.attributes is None or f.attribute in rule.attributes)]
    if not rows:
        return _state(rule, model, False, None, f"{model}: no recent fairness results",
                      f"No judged fairness results since {since}.")
    broken: list[str] = []
    for f in rows:
        if rule.min_di_ratio is not None and f.di_ratio is not None \
                and f.di_ratio < rule.min_di_ratio:
            broken.append(f"{f.attribute}: DI ratio {f.di_ratio:.3f} < {rule.min_di_ratio:g}")
        if rule.max_dp_difference is not None and f.dp_difference is not None \
                and f.dp_difference > rule.max_dp_difference:
            broken.append(f"{f.attribute}: DP difference {f.dp_difference:.3f} > "
                          f"{rule.max_dp_difference:g}")
        if rule.max_eo_difference is not None and f.eo_difference is not None \
                and f.eo_difference > rule.max_eo_difference:
            broken.append(f"{f.attribute}: EO difference {f.eo_difference:.3f} > "
                          f"{rule.max_eo_difference:g}")
    ratios = [f.di_ratio for f in rows if f.di_ratio is not None]
    value = min(ratios) if ratios else None
    day = rows[0].day
    shown = "; ".join(broken) if broken else "within bars"
    four_fifths = " (four-fifths rule)" if rule.min_di_ratio == 0.8 else ""
    return _state(rule, model, bool(broken), value, f"{model}: fairness on {day}: {shown}",
                  f"Fairness of {model}'s logged decisions on {day} by "
                  f"{', '.join(sorted({f.attribute for f in rows}))}: {shown}. Bars: DI ratio >= "
                  f"{rule.min_di_ratio}{four_fifths}, DP difference <= {rule.max_dp_difference}, "
                  f"EO difference <= {rule.max_eo_difference}.", violations=float(len(broken)))


def _burn(rule: BurnRateRule, source: MetricSource, model: str | None,
          now: datetime) -> AlertState:
    rates: list[float | None] = []
    for window_s in (rule.long_window_s, rule.short_window_s):
        counts = source.request_counts(model, now - timedelta(seconds=window_s), now)
        ok = counts.total >= rule.min_requests
        rates.append(burn_rate(counts, rule.slo) if ok else None)
    long_rate, short_rate = rates
    firing = all(r is not None and r > rule.factor for r in rates)
    long_w, short_w = format_duration(rule.long_window_s), format_duration(rule.short_window_s)

    def show(rate: float | None) -> str:
        return "no data" if rate is None else f"{rate:.1f}x"

    who = model or "all models"
    return _state(
        rule, model, firing, long_rate,
        f"{who}: error budget burning at {show(long_rate)} over {long_w}, "
        f"{show(short_rate)} over {short_w}",
        f"Availability SLO {rule.slo:.2%}: burn rate (5xx share / {1 - rule.slo:.4g}) is "
        f"{show(long_rate)} over {long_w} and {show(short_rate)} over {short_w}; alert above "
        f"{rule.factor:g}x over both.",
        long_burn_rate=long_rate, short_burn_rate=short_rate,
    )


def evaluate(rules: Sequence[Rule], source: MetricSource, now: datetime) -> list[AlertState]:
    """Every rule's state for every subject at ``now`` (firing or not), in rule order."""
    states: list[AlertState] = []
    known: list[str] | None = None
    for rule in rules:
        if isinstance(rule, BurnRateRule) and not rule.per_model:
            states.append(_burn(rule, source, None, now))
            continue
        if rule.models is not None:
            models = rule.models
        else:
            known = source.models() if known is None else known
            models = known
        for model in models:
            if isinstance(rule, LatencyRule):
                states.append(_latency(rule, source, model, now))
            elif isinstance(rule, ErrorRateRule):
                states.append(_error_rate(rule, source, model, now))
            elif isinstance(rule, DriftRule):
                states.append(_drift(rule, source, model, now))
            elif isinstance(rule, AccuracyRule):
                states.append(_accuracy(rule, source, model, now))
            elif isinstance(rule, FreshnessRule):
                states.append(_freshness(rule, source, model, now))
            elif isinstance(rule, FairnessRule):
                states.append(_fairness(rule, source, model, now))
            else:
                states.append(_burn(rule, source, model, now))
    return states
