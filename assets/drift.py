"""Scheduled data drift: one daily-partitioned asset per model spec, ``<prefix>_data_drift``.

A partition is one UTC day of the model's prediction log compared with its training reference
by :func:`monitoring.drift.run_drift` (Evidently's per-feature tests; see that module). The
materialization writes the Evidently HTML report to
``$ROOST_HOME/logs/monitoring/drift_reports/<model>/<date>.html`` (linked from the metadata:
``report`` opens it from the Dagster UI) and the per-feature scores to the ``drift_scores``
view; its metadata holds the verdict, the share of drifted features and the per-feature table.
A day without logged inputs materializes with ``status: no data`` (a backfill over quiet days
does not fail).

``data_drift_schedule`` runs ``data_drift_job`` (every model's drift asset) each day at 00:30
UTC for the day that just ended; older days are backfilled from the UI (partitions start at
``ROOST_MONITORING_START_DATE``, default 2026-01-01). The assets sit in the ``monitoring``
group, apart from the models' unpartitioned pipeline jobs.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import os
from collections.abc import Sequence
from datetime import date
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from assets.resources import RegistryResource
from assets.spec import ModelSpec
from monitoring.drift import DriftResult, NoData, feature_names_for, run_drift
from registry.storage import logs_location

GROUP = "monitoring"
START_DATE_ENV = "ROOST_MONITORING_START_DATE"
DEFAULT_START_DATE = "2026-01-01"
JOB = "data_drift_job"
SCHEDULE = "data_drift_schedule"

DAILY = DailyPartitionsDefinition(start_date=os.environ.get(START_DATE_ENV, DEFAULT_START_DATE))
"""One partition per complete UTC day (shared by the concept drift and fairness assets)."""


def daily_schedule(
    job_name: str, asset_names: Sequence[str], *, hour: int, minute: int = 0,
    job_description: str, schedule_name: str, schedule_description: str,
) -> Any:
    """A job over ``asset_names``' :data:`DAILY` partitions and its schedule for yesterday, at
    ``hour:minute`` UTC, running by default (an unresolved partitioned schedule: Definitions
    resolves it). The drift, concept drift and fairness assets each have one."""
    job = define_asset_job(
        job_name, selection=[AssetKey(name) for name in asset_names], partitions_def=DAILY,
        description=job_description,
    )
    return build_schedule_from_partitioned_job(
        job, name=schedule_name, hour_of_day=hour, minute_of_hour=minute,
        default_status=DefaultScheduleStatus.RUNNING, description=schedule_description,
    )


def asset_name(spec: ModelSpec) -> str:
    return f"{spec.prefix}_data_drift"


def features_table(result: DriftResult) -> MetadataValue:
    """The per-feature outcomes as a Dagster table."""
    schema = TableSchema(columns=[
        TableColumn("feature", "string"), TableColumn("test", "string"),
        TableColumn("score", "float"), TableColumn("threshold", "float"),
        TableColumn("drifted", "bool"),
    ])
    records = [
        TableRecord({"feature": f.feature, "test": f.test, "score": f.score,
                     "threshold": f.threshold, "drifted": f.drifted})
        for f in result.features
    ]
    return MetadataValue.table(records, schema=schema)


def drift_metadata(result: DriftResult) -> dict[str, Any]:
    """What the asset's materialization shows."""
    metadata: dict[str, Any] = {
        "status": "drifted" if result.drifted else "ok",
        "drifted": result.drifted,
        "share_drifted": result.share_drifted,
        "drift_share_threshold": result.drift_share,
        "drifted_features": ", ".join(result.drifted_features) or "none",
        "current_rows": result.current_rows,
        "reference_rows": result.reference_rows,
        "logged_requests": result.logged_requests,
        "features": features_table(result),
        "summary": MetadataValue.md(result.to_markdown()),
    }
    if result.report_path is not None:
        metadata["report"] = MetadataValue.url(result.report_path.resolve().as_uri())
        metadata["report_path"] = MetadataValue.path(str(result.report_path))
    if result.scores_path is not None:
        metadata["scores_path"] = MetadataValue.path(str(result.scores_path))
    return metadata


def drift_asset(spec: ModelSpec) -> AssetsDefinition:
    """``<prefix>_data_drift``: the model's logged inputs of one day against its reference."""

    @asset(
        name=asset_name(spec),
        group_name=GROUP,
        partitions_def=DAILY,
        compute_kind="evidently",
        description=f"Data drift of {spec.name}'s logged inputs against its training reference "
                    "(Evidently), one UTC day per partition.",
    )
    def data_drift(
        context: AssetExecutionContext, registry: RegistryResource
    ) -> MaterializeResult:  # type: ignore[type-arg]
        day = date.fromisoformat(context.partition_key)
        reg = registry.get_registry()
        try:
            names, input_name = feature_names_for(reg, spec)
        finally:
            reg.close()
        try:
            settings = registry.settings()
            result = run_drift(settings.logs_dir, spec, day, names, input_name=input_name,
                               logs_location=logs_location(settings))
        except NoData as exc:
            context.log.warning(str(exc))
            return MaterializeResult(metadata={"status": "no data", "detail": str(exc)})
        context.log.info(result.to_markdown().splitlines()[0])
        return MaterializeResult(metadata=drift_metadata(result))

    return data_drift


def drift_definitions(
    specs: Sequence[ModelSpec],
) -> tuple[list[AssetsDefinition], list[Any]]:
    """Every spec's drift asset and the daily schedule of their job."""
    schedule = daily_schedule(
        JOB, [asset_name(spec) for spec in specs], hour=0, minute=30,
        job_description="Data drift of every model's logged inputs for one UTC day.",
        schedule_name=SCHEDULE, schedule_description="Yesterday's data drift of every model (UTC).",
    )
    return [drift_asset(spec) for spec in specs], [schedule]
