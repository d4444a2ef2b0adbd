"""The ``experiment_analysis`` asset: every running A/B experiment, variant by variant.

For each experiment in the traffic policy of every serving model (``Registry.policies()``), the
requests it routed in the last ``ROOST_EXPERIMENT_WINDOW_DAYS`` days are summarised by
:func:`analysis.experiments.read_experiment` (units, requests, accuracy and reward with
intervals, p-values against the control, sample-ratio mismatch, sample size still needed). The
results are appended to the ``experiment_results`` DuckDB view (``roost sql``) and shown as the
asset's metadata: a table of every variant and each experiment's markdown summary. The
``experiment_analysis_schedule`` refreshes it (cron ``ROOST_EXPERIMENT_SCHEDULE``, hourly).
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
    ScheduleDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from analysis.experiments import ExperimentResult, read_experiment, write_experiment_results
from assets.resources import RegistryResource
from assets.schedules import asset_cron_schedule
from registry import RoostSettings
from registry.storage import logs_location

ASSET = "experiment_analysis"
JOB = "experiment_analysis_job"
SCHEDULE = "experiment_analysis_schedule"
GROUP = "experiments"

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model", "string"), ("experiment", "string"), ("variant", "string"), ("version", "int"),
    ("is_control", "bool"), ("units", "int"), ("requests", "int"), ("labelled", "int"),
    ("accuracy", "float"), ("accuracy_p_value", "float"), ("reward_mean", "float"),
    ("srm_detected", "bool"), ("labelled_still_needed", "int"),
)


def variant_rows(results: Sequence[ExperimentResult]) -> list[dict[str, Any]]:
    """One row per (experiment, variant) with the table's columns (units count anonymous)."""
    rows = []
    for result in results:
        for v in result.variants:
            rows.append({
                "model": result.model, "experiment": result.experiment, "variant": v.name,
                "version": v.version, "is_control": v.is_control,
                "units": v.units + v.anonymous, "requests": v.requests, "labelled": v.labelled,
                "accuracy": v.accuracy, "accuracy_p_value": v.accuracy_p_value,
                "reward_mean": v.reward_mean, "srm_detected": result.srm_detected,
                "labelled_still_needed": v.labelled_still_needed,
            })
    return rows


def variants_table(results: Sequence[ExperimentResult]) -> MetadataValue:
    """Every variant of every experiment as a Dagster table."""
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in TABLE_COLUMNS])
    records = [TableRecord(row) for row in variant_rows(results)]
    return MetadataValue.table(records, schema=schema)


def analyse_running_experiments(
    settings: RoostSettings, registry: RegistryResource, now: datetime | None = None
) -> list[ExperimentResult]:
    """The analysis of every experiment of every serving model over the configured window."""
    until = now or datetime.now(UTC)
    since = until - timedelta(days=settings.experiment_window_days)
    reg = registry.get_registry()
    try:
        policies = reg.policies()
    finally:
        reg.close()
    location = logs_location(settings)  # ROOST_LOGS_URL: the sealed log may be on S3
    return [
        read_experiment(settings.logs_dir, model, experiment, since, until,
                        logs_location=location)
        for model, policy in sorted(policies.items())
        for experiment in policy.experiments
    ]


@asset(name=ASSET, group_name=GROUP, compute_kind="duckdb",
       description="Per-variant statistics of every running A/B experiment (also in the "
                   "experiment_results view).")
def experiment_analysis(
    context: AssetExecutionContext, registry: RegistryResource
) -> MaterializeResult:  # type: ignore[type-arg]
    """Analyse every running experiment and append the results to ``experiment_results``."""
    settings = registry.settings()
    results = analyse_running_experiments(settings, registry)
    path = write_experiment_results(settings.logs_dir, results)
    for result in results:
        srm = " SAMPLE-RATIO MISMATCH" if result.srm_detected else ""
        context.log.info(f"{result.model}/{result.experiment}: "
                         f"{sum(v.requests for v in result.variants)} requests{srm}")
    metadata: dict[str, Any] = {
        "experiments": len(results),
        "srm_detected": sum(1 for r in results if r.srm_detected),
        "variants": variants_table(results),
        "results_file": MetadataValue.path(str(path)) if path else "none",
        "window_days": settings.experiment_window_days,
    }
    for result in results:
        metadata[f"{result.model}/{result.experiment}"] = MetadataValue.md(result.to_markdown())
    if not results:
        metadata["summary"] = MetadataValue.md("No running experiment.")
    return MaterializeResult(metadata=metadata)


def experiment_schedule(settings: RoostSettings | None = None) -> ScheduleDefinition:
    """The schedule (``ROOST_EXPERIMENT_SCHEDULE``) that refreshes :data:`ASSET`."""
    return asset_cron_schedule(
        ASSET, job=JOB, schedule=SCHEDULE,
        cron=(settings or RoostSettings()).experiment_schedule,
        job_description="Refresh the analysis of every running A/B experiment.",
        description="Refresh the experiment analysis.",
    )


def experiment_definitions(
    settings: RoostSettings | None = None,
) -> tuple[list[AssetsDefinition], list[ScheduleDefinition]]:
    """The asset and its schedule, for the code location."""
    return [experiment_analysis], [experiment_schedule(settings)]
