"""The maintenance assets' schedules (experiment analysis, retention, registry GC): one job that
materializes one unpartitioned asset, on a cron from the settings, running by default."""

from __future__ import annotations

from dagster import AssetKey, DefaultScheduleStatus, ScheduleDefinition, define_asset_job


def asset_cron_schedule(
    asset: str, *, job: str, schedule: str, cron: str, job_description: str, description: str
) -> ScheduleDefinition:
    """A schedule named ``schedule`` running job ``job`` (just ``asset``) on ``cron``."""
    return ScheduleDefinition(
        name=schedule,
        job=define_asset_job(job, selection=[AssetKey(asset)], description=job_description),
        cron_schedule=cron,
        default_status=DefaultScheduleStatus.RUNNING,
        description=description,
    )
