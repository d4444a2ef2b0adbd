"""Data drift: a day of a model's logged inputs against its training reference, with Evidently.

**Reference.** The rows the model was built and judged on: the spec's held-out data
(:func:`assets.held_out.load_held_out`): for the demo models the seeded generators of
:mod:`assets.demo_data` (the fraud model's 20 000 training transactions, scikit-learn's
breast-cancer set), for ``onnx`` specs the CSV/Parquet file ``held_out.path`` names. At most
:data:`REFERENCE_MAX_ROWS` rows (a seeded sample) are used.

**Current.** The day's primary, successful requests (:mod:`monitoring.logged_inputs`), at most
:data:`CURRENT_MAX_ROWS` rows (a seeded uniform sample of the day).

**Tests.** Evidently 0.7's ``DataDriftPreset`` with its defaults, which choose each feature's
test by type and size: with a reference of at most 1000 rows, the two-sample Kolmogorov-Smirnov
test for a numerical feature with more than 5 distinct values, chi-squared (more than 2 values)
or a two-proportion Z-test otherwise, each drifted at p < 0.05; above 1000 rows, where any
hypothesis test flags differences too small to matter, the normed Wasserstein distance (more
than 5 values) or the Jensen-Shannon distance, drifted at >= 0.1. The model counts as drifted
when the share of drifted features reaches :data:`DRIFT_SHARE` (0.25, not Evidently's 0.5: the
fraud generator's ``drift`` knob moves 3-4 of its 8 features, so 0.5 would miss knob values up
to about 0.25; see benchmarks/RESULTS.md for the false-positive and detection rates).

**Outputs.** The Evidently HTML report at
``<logs_dir>/monitoring/drift_reports/<model>/<date>.html`` (the operator opens it from the
Dagster asset's metadata) and one Parquet file per (model, day) in
``<logs_dir>/monitoring/drift_scores/`` in :data:`~warehouse.sql.DRIFT_SCORES_SCHEMA` (the
``drift_scores`` view); a re-run replaces both.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from monitoring.logged_inputs import LoggedInputs, read_logged_inputs
from warehouse.records import validate_model_name
from warehouse.sql import DRIFT_SCORES_DIR, DRIFT_SCORES_SCHEMA

if TYPE_CHECKING:
    from assets.spec import ModelSpec
    from registry import Registry
    from registry.storage import Location

DRIFT_SHARE = 0.25
"""A model's day is drifted when at least this share of its features drifted."""
REFERENCE_MAX_ROWS = 50_000
CURRENT_MAX_ROWS = 250_000
REPORTS_DIR = "monitoring/drift_reports"
"""Under the logs root: ``<model>/<date>.html``, Evidently's report of that day."""

# Evidently's tests whose score is a p-value (drifted below the threshold), by display name.
P_VALUE_TESTS = frozenset({
    "K-S p_value", "chi-square p_value", "Z-test p_value", "Anderson-Darling",
    "Cramer-von Mises", "Epps-Singleton", "Fisher's Exact test", "g_test",
    "Mann-Whitney U-rank test", "t_test", "empirical_mmd",
})


class NoData(ValueError):
    """Nothing to compare: no logged rows that day, or no reference."""


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's test: ``score`` is compared with ``threshold`` (see the module doc)."""

    feature: str
    test: str
    statistic: float | None
    p_value: float | None
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    """One model's day against its reference."""

    model: str
    day: date
    features: list[FeatureDrift]
    share_drifted: float
    drift_share: float
    reference_rows: int
    current_rows: int
    logged_requests: int
    logged_rows: int
    computed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    report_path: Path | None = None
    scores_path: Path | None = None

    @property
    def drifted(self) -> bool:
        return self.share_drifted >= self.drift_share

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def score_rows(self) -> list[dict[str, Any]]:
        """Rows in :data:`~warehouse.sql.DRIFT_SCORES_SCHEMA`."""
        return [
            {"model": self.model, "date": self.day, **asdict(f),
             "share_drifted": self.share_drifted, "reference_rows": self.reference_rows,
             "current_rows": self.current_rows, "computed_at": self.computed_at}
            for f in self.features
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "date": self.day.isoformat(), "drifted": self.drifted,
            "share_drifted": self.share_drifted, "drift_share": self.drift_share,
            "drifted_features": self.drifted_features,
            "reference_rows": self.reference_rows, "current_rows": self.current_rows,
            "logged_requests": self.logged_requests, "logged_rows": self.logged_rows,
            "computed_at": self.computed_at.isoformat(),
            "report": str(self.report_path) if self.report_path else None,
            "scores": str(self.scores_path) if self.scores_path else None,
            "features": [asdict(f) for f in self.features],
        }

    def to_markdown(self) -> str:
        verdict = "**DRIFTED**" if self.drifted else "no drift"
        lines = [
            f"{self.model} on {self.day}: {verdict}: {len(self.drifted_features)} of "
            f"{len(self.features)} features drifted (share {self.share_drifted:.3f}, "
            f"threshold {self.drift_share}); {self.current_rows} rows vs "
            f"{self.reference_rows} reference rows.",
            "",
            "| feature | test | score | threshold | drifted |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {f.feature} | {f.test} | {f.score:.4g} | {f.threshold:g} | "
            f"{'yes' if f.drifted else 'no'} |"
            for f in self.features
        ]
        return "\n".join(lines)


def _sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    return frame.sample(max_rows, random_state=seed).sort_index().reset_index(drop=True)


def reference_frame(
    spec: ModelSpec, feature_names: Sequence[str], *, max_rows: int = REFERENCE_MAX_ROWS
) -> pd.DataFrame:
    """The spec's held-out rows (the demo generators' training data) in the features' order."""
    from assets.held_out import load_held_out

    dataset = load_held_out(spec.held_out, spec.name)
    missing = [f for f in feature_names if f not in dataset.frame.columns]
    if missing:
        raise NoData(f"model {spec.name!r}: the reference data {dataset.name!r} lacks the "
                     f"features {missing}")
    frame = dataset.frame[list(feature_names)].astype(np.float64)
    return _sample(frame, max_rows, seed=0)


def _ks_statistic(reference: pd.Series, current: pd.Series) -> float | None:
    from scipy.stats import ks_2samp

    ref, cur = reference.dropna().to_numpy(), current.dropna().to_numpy()
    if not len(ref) or not len(cur):
        return None
    return float(ks_2samp(ref, cur).statistic)


def _finite(value: Any) -> float:
    number = float(value)
    return number if np.isfinite(number) else float("nan")


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    drift_share: float = DRIFT_SHARE,
    report_path: Path | None = None,
) -> tuple[list[FeatureDrift], float]:
    """Evidently's per-feature drift tests of ``current`` against ``reference`` (same columns).

    Returns the features' outcomes and the share drifted; writes the HTML report when
    ``report_path`` is given.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if current.empty or reference.empty:
        raise NoData("drift needs rows in both the reference and the current data")
    columns = [str(c) for c in reference.columns]
    definition = DataDefinition(numerical_columns=columns)
    snapshot = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True).run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    if report_path is not None:
        _atomic(report_path, lambda tmp: snapshot.save_html(str(tmp)))
    exported = snapshot.dict()
    failed = {
        t["metric_config"]["metric_id"]
        for t in exported["tests"]
        if t.get("id") == "drift" and t.get("status") == "FAIL"
    }
    outcomes = []
    for metric in exported["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        feature, test = str(config["column"]), str(config.get("method"))
        score = _finite(metric["value"])
        is_p = test in P_VALUE_TESTS
        if is_p:
            statistic = _ks_statistic(reference[feature], current[feature]) if (
                test == "K-S p_value") else None
        else:
            statistic = score
        outcomes.append(FeatureDrift(
            feature=feature, test=test, statistic=statistic, p_value=score if is_p else None,
            score=score, threshold=float(config.get("threshold", float("nan"))),
            drifted=metric["id"] in failed,
        ))
    share = sum(o.drifted for o in outcomes) / len(outcomes) if outcomes else 0.0
    return outcomes, share


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def report_path(logs_dir: Path, model: str, day: date) -> Path:
    """``<logs_dir>/monitoring/drift_reports/<model>/<date>.html``."""
    return Path(logs_dir) / REPORTS_DIR / validate_model_name(model) / f"{day.isoformat()}.html"


def scores_path(logs_dir: Path, model: str, day: date) -> Path:
    """The day's file in the ``drift_scores`` view's directory (one per model and day)."""
    name = f"{validate_model_name(model)}__{day.isoformat()}.parquet"
    return Path(logs_dir) / DRIFT_SCORES_DIR / name


def write_scores(logs_dir: Path, result: DriftResult) -> Path:
    """The result's rows as the (model, day)'s Parquet file, replacing an earlier run's."""
    table = pa.Table.from_pylist(result.score_rows(), schema=DRIFT_SCORES_SCHEMA)
    path = scores_path(logs_dir, result.model, result.day)
    _atomic(path, lambda tmp: pq.write_table(table, tmp))
    return path


def feature_names_for(registry: Registry | None, spec: ModelSpec) -> tuple[list[str], str | None]:
    """The served version's feature names and input tensor name (the registry's signature of
    the production version, else the newest version with feature names), else the reference's
    columns and no input name."""
    if registry is not None:
        from registry import NotFound

        try:
            deployment = registry.get_deployment(spec.name)
            versions = sorted(registry.list_versions(spec.name), key=lambda v: -v.version)
        except NotFound:
            deployment, versions = None, []
        production = deployment.production_version if deployment else None
        versions.sort(key=lambda v: v.version != production)
        for info in versions:
            if info.signature.feature_names:
                first = info.signature.inputs[0].name if info.signature.inputs else None
                return list(info.signature.feature_names), first
    from assets.held_out import load_held_out

    return list(load_held_out(spec.held_out, spec.name).feature_names), None


def run_drift(
    logs_dir: Path,
    spec: ModelSpec,
    day: date,
    feature_names: Sequence[str],
    *,
    input_name: str | None = None,
    reference: pd.DataFrame | None = None,
    drift_share: float = DRIFT_SHARE,
    max_rows: int = CURRENT_MAX_ROWS,
    write: bool = True,
    logs_location: Location | None = None,
) -> DriftResult:
    """Compare ``spec``'s logged inputs of ``day`` with its reference; write the HTML report
    and the scores (unless ``write`` is false). Raises :class:`NoData` on a day without rows.
    ``logs_location``: where the sealed log is read from (``ROOST_LOGS_URL``); the report and
    the scores are always written under ``logs_dir``."""
    names = list(feature_names)
    logged: LoggedInputs = read_logged_inputs(
        logs_dir, spec.name, day, names, input_name=input_name, max_rows=max_rows,
        logs_location=logs_location,
    )
    if logged.frame.empty:
        raise NoData(f"model {spec.name!r}: no logged inputs with {len(names)} features on "
                     f"{day} ({logged.skipped_shadow} shadow, {logged.skipped_failed} failed, "
                     f"{logged.skipped_unreadable} unreadable requests skipped)")
    ref = reference if reference is not None else reference_frame(spec, names)
    html = report_path(logs_dir, spec.name, day) if write else None
    features, share = compare(ref, logged.frame, drift_share=drift_share, report_path=html)
    result = DriftResult(
        model=spec.name, day=day, features=features, share_drifted=share,
        drift_share=drift_share, reference_rows=len(ref), current_rows=len(logged.frame),
        logged_requests=logged.requests, logged_rows=logged.rows, report_path=html,
    )
    if write:
        result.scores_path = write_scores(logs_dir, result)
    return result
