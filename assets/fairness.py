"""Fairness of a model spec that declares ``fairness:`` (see :mod:`assets.spec`), two ways.

**Before promotion** — :func:`held_out_fairness`, the ``fairness`` outcome of ``<p>_validation``
and its blocking ``fairness_check``: the candidate's decisions on the held-out rows, per
protected attribute (a column of the held-out file, or of the demo generator's frame: the fraud
data's ``age_band``). A trainer spec is judged on its ``held_out`` data (the demo generator's
frame). A declared attribute missing from the data fails the check (fail closed).

**In production** — ``<p>_fairness``, a daily-partitioned asset in the ``monitoring`` group:
one UTC day of ``predictions_with_feedback`` (served rows, status < 400), the decision read from
the ``label`` output, the protected attributes from the ``attributes`` object the gateway logs
in the inputs JSON (``roost-attr-<name>`` request headers, :mod:`serving.governance`), the true
label from feedback when there is one (rates that need labels use the labelled rows only). One
row per attribute goes to ``<logs>/monitoring/fairness/<model>-<date>.parquet`` (re-running a
day replaces its file): the ``fairness`` DuckDB view, and the ``fairness`` alert rule's input.
The materialization's metadata holds a Markdown report.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import json
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.demo_data import Dataset
from assets.drift import DAILY, GROUP, daily_schedule
from assets.held_out import load_held_out
from assets.resources import RegistryResource
from assets.spec import ModelSpec
from assets.validation import CheckOutcome, Metadata
from monitoring.fairness import AttributeFairness, FairnessBars, attribute_fairness, markdown_report
from registry.storage import Location, logs_location
from warehouse import connect
from warehouse.sql import FAIRNESS_DIR, FAIRNESS_SCHEMA

JOB = "fairness_job"
SCHEDULE = "fairness_schedule"


def asset_name(spec: ModelSpec) -> str:
    return f"{spec.prefix}_fairness"


def _attribute_frame(spec: ModelSpec, dataset: Dataset) -> pd.DataFrame:
    """The held-out rows' protected attributes (held_out.py keeps features and the label only,
    so a file's attribute columns are read again; same rows, same order)."""
    assert spec.fairness is not None
    wanted = spec.fairness.attributes
    if all(a in dataset.frame.columns for a in wanted):
        return dataset.frame[wanted]
    if spec.held_out.path is None:
        missing = [a for a in wanted if a not in dataset.frame.columns]
        raise ValueError(f"fairness.attributes: {missing} are not columns of the held-out data")
    path = Path(spec.held_out.path).expanduser()
    frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    missing = [a for a in wanted if a not in frame.columns]
    if missing:
        raise ValueError(f"fairness.attributes: {path} lacks columns {missing}")
    return frame[wanted].reset_index(drop=True)


def _decisions(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    from assets.onnx_checks import _predict

    labels, proba = _predict(onnx_bytes, X)
    if labels is None:
        if proba is None:
            raise ValueError("the model has neither a label nor a probabilities output")
        labels = proba.argmax(axis=1)
    return np.asarray(labels).reshape(-1)


def held_out_fairness(spec: ModelSpec, onnx_bytes: bytes, dataset: Dataset | None = None
                      ) -> CheckOutcome:
    """The ``fairness`` validation outcome: every declared attribute within the spec's bars."""
    assert spec.fairness is not None
    bars = FairnessBars.of(spec.fairness)
    try:
        data = dataset if dataset is not None else load_held_out(spec.held_out, spec.name)
        attributes = _attribute_frame(spec, data)
        predicted = _decisions(onnx_bytes, data.X)
        results = [attribute_fairness(a, attributes[a].to_numpy(dtype=object), predicted,
                                      data.y, bars) for a in spec.fairness.attributes]
    except Exception as exc:  # a gate reports errors as failures
        return CheckOutcome("fairness", False, f"fairness check errored: {type(exc).__name__}: "
                            f"{exc}", {"error": str(exc)})
    meta: Metadata = {"n": int(len(predicted)), "favorable_label": bars.favorable_label}
    for res in results:
        for key in ("di_ratio", "dp_difference", "eo_difference", "eop_difference"):
            value = getattr(res, key)
            if value is not None:
                meta[f"{res.attribute}.{key}"] = float(value)
    meta["report"] = markdown_report(f"{spec.name} candidate on held-out data", results, bars)
    passed = all(r.passed for r in results)
    return CheckOutcome("fairness", passed, "; ".join(r.summary() for r in results), meta)


_LOGGED = """
SELECT request_id, label,
       json_extract_string(inputs, '$.attributes') AS attributes,
       TRY_CAST(list_filter(TRY_CAST(outputs AS JSON[]),
                            lambda o: o->>'name' = $output)[1]->>'$.data[0]' AS DOUBLE)
           AS predicted
FROM predictions_with_feedback
WHERE model = $model AND date = $day AND status < 400
"""


def logged_frame(logs_dir: Path, model: str, day: date, output: str = "label", *,
                 logs_location: Location | None = None) -> pd.DataFrame:
    """One day's served predictions of ``model``: decision, label (NaN: none), attributes;
    the sealed log read at ``logs_location`` (``ROOST_LOGS_URL``) when given."""
    con = connect(logs_dir, sandboxed=False, logs_location=logs_location)
    try:
        frame = con.execute(_LOGGED, {"model": model, "day": day, "output": output}).df()
    finally:
        con.close()
    parsed = [_parse(t) for t in frame["attributes"]]
    out = pd.DataFrame({"predicted": frame["predicted"], "label": frame["label"]})
    for name in sorted({k for p in parsed for k in p}):
        out[name] = [p.get(name) for p in parsed]
    return out


def _parse(text: Any) -> dict[str, str]:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def logged_fairness(spec: ModelSpec, frame: pd.DataFrame) -> list[AttributeFairness]:
    """Fairness of the logged decisions; rates needing labels use the labelled rows."""
    assert spec.fairness is not None
    bars = FairnessBars.of(spec.fairness)
    decided = frame[frame["predicted"].notna()]
    results = []
    for attribute in spec.fairness.attributes:
        groups = (decided[attribute] if attribute in decided else pd.Series(
            [None] * len(decided), index=decided.index)).to_numpy(dtype=object)
        base = attribute_fairness(attribute, groups, decided["predicted"].to_numpy(), None, bars)
        labelled = decided["label"].notna().to_numpy()
        if labelled.any():
            with_labels = attribute_fairness(
                attribute, groups[labelled], decided["predicted"].to_numpy()[labelled],
                decided["label"].to_numpy()[labelled], bars)
            base = AttributeFairness(
                attribute, base.n, base.groups, base.dp_difference, base.di_ratio,
                with_labels.eo_difference, with_labels.eop_difference, base.favorable_label,
                base.violations + [v for v in with_labels.violations if v.startswith("EO")])
        results.append(base)
    return results


def write_results(logs_dir: Path, model: str, day: date, results: Sequence[AttributeFairness],
                  labelled: int, computed_at: datetime | None = None) -> Path:
    """The day's rows in :data:`~warehouse.sql.FAIRNESS_SCHEMA` (replacing an earlier run's)."""
    now = computed_at or datetime.now(UTC)
    rows: dict[str, list[Any]] = {name: [] for name in FAIRNESS_SCHEMA.names}
    for res in results:
        values = {
            "model": model, "date": day, "attribute": res.attribute, "n": res.n,
            "labelled": labelled, "groups": len(res.groups), "favorable_label": res.favorable_label,
            "di_ratio": res.di_ratio, "dp_difference": res.dp_difference,
            "eo_difference": res.eo_difference, "eop_difference": res.eop_difference,
            "judged": res.judged, "passed": res.passed, "violations": "; ".join(res.violations),
            "selection_rates": "{" + ", ".join(f'"{g.group}": {g.selection_rate:.6f}'
                                              for g in res.groups) + "}",
            "computed_at": now,
        }
        for name in FAIRNESS_SCHEMA.names:
            rows[name].append(values[name])
    directory = Path(logs_dir) / FAIRNESS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{model}-{day.isoformat()}.parquet"
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pydict(rows, schema=FAIRNESS_SCHEMA), tmp)
    tmp.replace(path)
    return path


def fairness_asset(spec: ModelSpec) -> AssetsDefinition:
    """``<prefix>_fairness``: one UTC day of the model's logged decisions, per attribute."""

    @asset(
        name=asset_name(spec),
        group_name=GROUP,
        partitions_def=DAILY,
        compute_kind="fairlearn",
        description=f"Fairness of {spec.name}'s logged decisions by protected attribute "
                    "(fairlearn; four-fifths rule), one UTC day per partition.",
    )
    def fairness(
        context: AssetExecutionContext, registry: RegistryResource
    ) -> MaterializeResult:  # type: ignore[type-arg]
        assert spec.fairness is not None
        day = date.fromisoformat(context.partition_key)
        settings = registry.settings()
        logs_dir = settings.logs_dir
        frame = logged_frame(logs_dir, spec.name, day, logs_location=logs_location(settings))
        if frame.empty:
            return MaterializeResult(metadata={"status": "no data",
                                               "detail": f"no served predictions on {day}"})
        results = logged_fairness(spec, frame)
        path = write_results(logs_dir, spec.name, day, results, int(frame["label"].notna().sum()))
        report = markdown_report(f"{spec.name} on {day}", results,
                                 FairnessBars.of(spec.fairness))
        failed = [r.attribute for r in results if not r.passed]
        return MaterializeResult(metadata={
            "status": "violation" if failed else "ok",
            "violating_attributes": ", ".join(failed) or "none",
            "rows": len(frame),
            "labelled": int(frame["label"].notna().sum()),
            "report": MetadataValue.md(report),
            "results_path": MetadataValue.path(str(path)),
        })

    return fairness


def fairness_definitions(specs: Sequence[ModelSpec]) -> tuple[list[AssetsDefinition], list[Any]]:
    """A fairness asset per spec declaring ``fairness``, and their daily schedule (01:00 UTC,
    yesterday); nothing when no spec declares it."""
    declared = [s for s in specs if s.fairness is not None]
    if not declared:
        return [], []
    schedule = daily_schedule(
        JOB, [asset_name(s) for s in declared], hour=1,
        job_description="Fairness of every model's logged decisions for one UTC day.",
        schedule_name=SCHEDULE,
        schedule_description="Yesterday's fairness of every model declaring it (UTC).",
    )
    return [fairness_asset(s) for s in declared], [schedule]
