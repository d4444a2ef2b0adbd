"""The ``retention`` asset: delete prediction, feedback and feature partitions past retention.

Runs :func:`warehouse.retention.apply_retention` (``ROOST_PREDICTION_RETENTION_DAYS``, 30;
``ROOST_FEATURE_RETENTION_DAYS``, 7) and shows what it deleted as the asset's metadata; the
deletions (partition paths, files, row counts) are also appended to the registry's audit trail
as one ``retention`` record. The ``retention_schedule`` runs it daily
(cron ``ROOST_RETENTION_SCHEDULE``, 03:30 UTC); ``roost retention`` does the same by hand.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from assets.resources import RegistryResource
from assets.schedules import asset_cron_schedule
from registry import RoostSettings
from warehouse.retention import RetentionReport, apply_retention

ASSET = "retention"
JOB = "retention_job"
SCHEDULE = "retention_schedule"
GROUP = "monitoring"


def deleted_table(report: RetentionReport) -> MetadataValue:
    """Every partition deleted, as a Dagster table."""
    schema = TableSchema(columns=[
        TableColumn("kind", "string"), TableColumn("path", "string"),
        TableColumn("day", "string"), TableColumn("files", "int"), TableColumn("rows", "int"),
    ])  # fmt: skip
    records = [
        TableRecord({"kind": p.kind, "path": p.path, "day": p.day.isoformat(), "files": p.files,
                     "rows": p.rows})  # fmt: skip
        for p in report.partitions
    ]
    return MetadataValue.table(records, schema=schema)


@asset(name=ASSET, group_name=GROUP, compute_kind="python",
       description="Delete prediction/feedback partitions older than the retention period "
                   "(30 days) and dated feature partitions older than 7 days; audited.")
def retention(
    context: AssetExecutionContext, registry: RegistryResource
) -> MaterializeResult:  # type: ignore[type-arg]
    """Delete every expired partition and record the deletions in the audit trail."""
    settings = registry.settings()
    reg = registry.get_registry()
    try:
        report = apply_retention(settings, registry=reg, actor="retention")
    finally:
        reg.close()
    for part in report.partitions:
        context.log.info(f"deleted {part.path}: {part.rows} row(s) in {part.files} file(s)")
    metadata: dict[str, Any] = {
        "partitions_deleted": len(report.partitions),
        "rows_deleted": report.rows,
        "prediction_retention_days": report.prediction_days,
        "feature_retention_days": report.feature_days,
        "deleted": deleted_table(report),
    }
    return MaterializeResult(metadata=metadata)


def retention_schedule(settings: RoostSettings | None = None) -> ScheduleDefinition:
    """The daily schedule (``ROOST_RETENTION_SCHEDULE``) that runs :data:`ASSET`."""
    return asset_cron_schedule(
        ASSET, job=JOB, schedule=SCHEDULE,
        cron=(settings or RoostSettings()).retention_schedule,
        job_description="Delete expired log and feature partitions.",
        description="Delete expired partitions, daily.",
    )


def retention_definitions(
    settings: RoostSettings | None = None,
) -> tuple[list[AssetsDefinition], list[ScheduleDefinition]]:
    """The asset and its schedule, for the code location."""
    return [retention], [retention_schedule(settings)]
