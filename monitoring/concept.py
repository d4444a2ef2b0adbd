"""Concept drift: accuracy, calibration and reward over time windows, tested against validation.

The served predictions (``NOT shadow``, ``status < 400``) of one model are joined on
``request_id`` to their feedback (the ``predictions_with_feedback`` view of
:mod:`warehouse.sql`: the latest non-null label and reward per request). A request is
*labelled* when its ``label`` output (the demo classifiers' convention) holds exactly one value
and a label came back; its ``probabilities`` output, when it holds two values, gives the
positive-class probability for calibration. Batched requests (several rows, one label) count
for reward only.

Per (window, version), e.g. hourly or daily:

- **accuracy** = correct / labelled;
- **Brier score** = mean (p - y)^2 and **expected calibration error** with
  :data:`ECE_BINS` fixed, equal-width bins of p: sum over bins of (n_b / n) |mean y_b - mean p_b|
  (fixed bins so windows and versions are comparable);
- **reward**: the mean and count of rewards fed back.

**Change test.** Each window's accuracy is tested against the version's validation accuracy
(``validation.accuracy.accuracy`` in the registry's metrics, written by
:func:`assets.validation_assets.record_validation`) minus a ``margin``: a one-sided exact
binomial test, H0: the window's accuracy is at least the baseline, p-value
P(X <= correct | labelled, baseline). The family is every (window, version) tested in the call
plus the pooled period of each version, and the windows are flagged at ``alpha / m``
(Bonferroni), so an alert quoting a day of 24 hourly windows has at most ``alpha`` chance of a
false alarm. Why this test: windows hold disjoint requests, so they are independent; the exact
binomial is valid for the small counts of an hourly window, where a normal approximation is
not; a degradation is one-sided (getting better is no alarm); and the p-value is something an
alert rule can quote and threshold. A CUSUM would react to a small persistent drop sooner, but
its alarm depends on a tuned reference value and gives no error rate over a fixed family.
The baseline's own sampling error (a held-out set of a few hundred to a few thousand rows) is
what ``margin`` absorbs; the default is 0.02.

:func:`concept_drift` is what the Dagster asset (``assets/concept.py``) and alert rules call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from warehouse.sql import connect

if TYPE_CHECKING:
    from registry.storage import Location

ECE_BINS = 10
BASELINE_METRIC = "validation.accuracy.accuracy"
DEFAULT_ALPHA = 0.05
DEFAULT_MARGIN = 0.02

_QUERY = """
WITH p AS (
    SELECT ts, version, label, reward,
           list_filter(TRY_CAST(outputs AS JSON[]), lambda o: o->>'name' = $label_output)[1]
               AS label_tensor,
           list_filter(TRY_CAST(outputs AS JSON[]), lambda o: o->>'name' = $proba_output)[1]
               AS proba_tensor
    FROM predictions_with_feedback
    WHERE model = $model AND date >= $first_day AND date <= $last_day
      AND ts >= $since AND ts < $until AND status < 400
      AND (label IS NOT NULL OR reward IS NOT NULL)
)
SELECT ts, version, label, reward,
       CASE WHEN json_array_length(label_tensor, '$.data') = 1
            THEN TRY_CAST(label_tensor->>'$.data[0]' AS DOUBLE) END AS predicted,
       CASE WHEN json_array_length(proba_tensor, '$.data') = 2
            THEN TRY_CAST(proba_tensor->>'$.data[1]' AS DOUBLE) END AS proba
FROM p
"""


@dataclass(frozen=True)
class WindowMetrics:
    """One (window, version): what was labelled and how it compares with the baseline."""

    start: datetime
    end: datetime
    version: int
    labelled: int
    correct: int
    accuracy: float | None
    baseline_accuracy: float | None
    p_value: float | None
    degraded: bool
    brier: float | None
    ece: float | None
    rewards: int
    reward_mean: float | None
    pooled: bool = False
    """True for the whole period of one version (the last rows of a report)."""


@dataclass
class ConceptReport:
    model: str
    since: datetime
    until: datetime
    window: timedelta
    alpha: float
    margin: float
    tests: int
    """Size of the Bonferroni family: each window is flagged at ``alpha / tests``."""
    windows: list[WindowMetrics]

    @property
    def degraded(self) -> bool:
        return any(w.degraded for w in self.windows)

    def latest(self, version: int | None = None) -> WindowMetrics | None:
        """The most recent window (of ``version``) with labels: what an alert looks at."""
        rows = [w for w in self.windows if not w.pooled and w.labelled
                and (version is None or w.version == version)]
        return max(rows, key=lambda w: w.start) if rows else None

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(w) for w in self.windows]

    def to_markdown(self) -> str:
        head = (f"{self.model}: {'**DEGRADED**' if self.degraded else 'no degradation'} "
                f"(one-sided exact binomial vs validation accuracy - {self.margin}, "
                f"alpha {self.alpha} / {self.tests} tests)")
        lines = [head, "",
                 "| window | version | labelled | accuracy | baseline | p-value | degraded | "
                 "Brier | ECE | rewards | reward mean |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for w in self.windows:
            when = "all" if w.pooled else f"{w.start:%Y-%m-%d %H:%M}"
            lines.append(
                f"| {when} | {w.version} | {w.labelled} | {_fmt(w.accuracy)} | "
                f"{_fmt(w.baseline_accuracy)} | {_fmt(w.p_value)} | "
                f"{'yes' if w.degraded else 'no'} | {_fmt(w.brier)} | {_fmt(w.ece)} | "
                f"{w.rewards} | {_fmt(w.reward_mean)} |"
            )
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4g}"


def expected_calibration_error(
    proba: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE with ``bins`` fixed equal-width bins of the positive-class probability."""
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    y = np.asarray(labels, dtype=np.float64)
    if not p.size:
        return math.nan
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, y, bins) - np.bincount(index, p, bins))
    return float(gap.sum() / counts.sum())


def binomial_p_value(correct: int, labelled: int, baseline: float) -> float:
    """P(X <= correct) for X ~ Binomial(labelled, baseline): small when accuracy fell."""
    from scipy.stats import binom

    return float(binom.cdf(correct, labelled, min(max(baseline, 0.0), 1.0)))


def read_labelled(
    logs_dir: Path, model: str, since: datetime, until: datetime,
    *, label_output: str = "label", proba_output: str = "probabilities",
    logs_location: Location | None = None,
) -> pd.DataFrame:
    """Served predictions of ``[since, until)`` with feedback: ts, version, label, reward,
    predicted (NULL unless one value) and proba (NULL unless two classes). ``logs_location``:
    the sealed prediction log's location when not under ``logs_dir`` (``ROOST_LOGS_URL``)."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    con = connect(logs_dir, logs_location=logs_location)
    try:
        return con.execute(_QUERY, {
            "model": model, "since": since, "until": until,
            "first_day": since.date() - timedelta(days=1), "last_day": until.date(),
            "label_output": label_output, "proba_output": proba_output,
        }).df()
    finally:
        con.close()


def _metrics(
    rows: pd.DataFrame, start: datetime, end: datetime, version: int,
    baseline: float | None, margin: float, pooled: bool = False,
) -> tuple[WindowMetrics, float | None]:
    labelled = rows[rows["label"].notna() & rows["predicted"].notna()]
    n = len(labelled)
    correct = int((labelled["predicted"] == labelled["label"]).sum())
    calibrated = labelled[labelled["proba"].notna()]
    p, y = calibrated["proba"].to_numpy(float), calibrated["label"].to_numpy(float)
    rewards = rows["reward"].dropna()
    p_value = (binomial_p_value(correct, n, max(baseline - margin, 0.0))
               if n and baseline is not None else None)
    return WindowMetrics(
        start=start, end=end, version=version, labelled=n, correct=correct,
        accuracy=correct / n if n else None, baseline_accuracy=baseline, p_value=p_value,
        degraded=False, brier=float(np.mean((p - y) ** 2)) if p.size else None,
        ece=expected_calibration_error(p, y) if p.size else None,
        rewards=len(rewards), reward_mean=float(rewards.mean()) if len(rewards) else None,
        pooled=pooled,
    ), p_value


def concept_drift(
    logs_dir: Path,
    model: str,
    since: datetime,
    until: datetime,
    baselines: Mapping[int, float],
    *,
    window: timedelta = timedelta(hours=1),
    alpha: float = DEFAULT_ALPHA,
    margin: float = DEFAULT_MARGIN,
    logs_location: Location | None = None,
) -> ConceptReport:
    """Window metrics of ``model`` over ``[since, until)`` and the change test against
    ``baselines`` (version -> validation accuracy; a version without one is not tested)."""
    frame = read_labelled(logs_dir, model, since, until, logs_location=logs_location)
    results: list[tuple[WindowMetrics, float | None]] = []
    if not frame.empty:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        offset = ((frame["ts"] - pd.Timestamp(since)) // pd.Timedelta(window)).astype(int)
        frame["window"] = offset
        for raw_version, by_version in frame.groupby("version", sort=True):
            version = int(str(raw_version))
            baseline = baselines.get(version)
            for raw_k, rows in by_version.groupby("window", sort=True):
                start = since + window * int(str(raw_k))
                results.append(_metrics(rows, start, min(start + window, until),
                                        version, baseline, margin))
            results.append(_metrics(by_version, since, until, version, baseline, margin,
                                    pooled=True))
    tests = sum(1 for _, p in results if p is not None)
    level = alpha / max(tests, 1)
    windows = [
        WindowMetrics(**{**asdict(w), "degraded": p is not None and p < level})
        for w, p in results
    ]
    return ConceptReport(model=model, since=since, until=until, window=window, alpha=alpha,
                         margin=margin, tests=tests, windows=windows)


def validation_baselines(registry: Any, model: str) -> dict[int, float]:
    """Each version's validation accuracy from the registry (versions never validated are
    left out)."""
    from registry import NotFound

    try:
        versions = registry.list_versions(model)
    except NotFound:
        return {}
    return {
        v.version: float(v.metrics[BASELINE_METRIC])
        for v in versions
        if isinstance(v.metrics.get(BASELINE_METRIC), int | float)
    }
