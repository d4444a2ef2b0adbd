"""Scheduled concept drift: one daily-partitioned asset per model spec, ``<prefix>_concept_drift``.

A partition is one UTC day of served predictions joined to their feedback, cut into hourly
windows per version by :func:`monitoring.concept.concept_drift`: accuracy, Brier score,
expected calibration error and reward, each window's accuracy tested against the version's
validation accuracy (one-sided exact binomial, Bonferroni over the day's windows; see that
module). The metadata holds the verdict, the day's pooled accuracy and the Markdown table.

``concept_drift_schedule`` runs ``concept_drift_job`` at 02:00 UTC for the day that ended (labels
arriving later are picked up by re-materializing the partition). Partitions and group are those
of the data drift assets (:mod:`assets.drift`).
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.drift import DAILY, GROUP, daily_schedule
from assets.resources import RegistryResource
from assets.spec import ModelSpec
from monitoring.concept import ConceptReport, concept_drift, validation_baselines
from registry.storage import logs_location

JOB = "concept_drift_job"
SCHEDULE = "concept_drift_schedule"
WINDOW = timedelta(hours=1)


def asset_name(spec: ModelSpec) -> str:
    return f"{spec.prefix}_concept_drift"


def concept_metadata(report: ConceptReport) -> dict[str, Any]:
    pooled = [w for w in report.windows if w.pooled]
    metadata: dict[str, Any] = {
        "status": "degraded" if report.degraded else "ok",
        "degraded": report.degraded,
        "labelled": sum(w.labelled for w in pooled),
        "rewards": sum(w.rewards for w in pooled),
        "tests": report.tests,
        "windows": MetadataValue.md(report.to_markdown()),
    }
    for w in pooled:
        if w.accuracy is not None:
            metadata[f"accuracy_v{w.version}"] = w.accuracy
        if w.brier is not None:
            metadata[f"brier_v{w.version}"] = w.brier
        if w.ece is not None:
            metadata[f"ece_v{w.version}"] = w.ece
    return metadata


def concept_asset(spec: ModelSpec) -> AssetsDefinition:
    """``<prefix>_concept_drift``: the model's labelled predictions of one day."""

    @asset(
        name=asset_name(spec),
        group_name=GROUP,
        partitions_def=DAILY,
        compute_kind="duckdb",
        description=f"Accuracy, calibration and reward of {spec.name} per hour against its "
                    "validation accuracy, one UTC day per partition.",
    )
    def concept(
        context: AssetExecutionContext, registry: RegistryResource
    ) -> MaterializeResult:  # type: ignore[type-arg]
        since = datetime.fromisoformat(context.partition_key).replace(tzinfo=UTC)
        reg = registry.get_registry()
        try:
            baselines = validation_baselines(reg, spec.name)
        finally:
            reg.close()
        settings = registry.settings()
        report = concept_drift(settings.logs_dir, spec.name, since, since + timedelta(days=1),
                               baselines, window=WINDOW, logs_location=logs_location(settings))
        if not report.windows:
            return MaterializeResult(metadata={"status": "no data",
                                               "detail": "no feedback for that day"})
        context.log.info(report.to_markdown().splitlines()[0])
        return MaterializeResult(metadata=concept_metadata(report))

    return concept


def concept_definitions(
    specs: Sequence[ModelSpec],
) -> tuple[list[AssetsDefinition], list[Any]]:
    """Every spec's concept drift asset and the daily schedule of their job."""
    schedule = daily_schedule(
        JOB, [asset_name(spec) for spec in specs], hour=2,
        job_description="Accuracy, calibration and reward of every model for one UTC day.",
        schedule_name=SCHEDULE,
        schedule_description="Yesterday's concept drift of every model (UTC).",
    )
    return [concept_asset(spec) for spec in specs], [schedule]
