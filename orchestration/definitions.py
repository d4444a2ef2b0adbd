"""The Dagster code location: demo pipelines, their checks, jobs, schedules and resources."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job

from assets.demo import demo_assets, demo_schedules
from assets.resources import FeatureStoreResource, RegistryResource


def build_definitions() -> Definitions:
    assets, checks = demo_assets()
    demo_job = define_asset_job(
        "demo_pipeline",
        selection=AssetSelection.all(),
        description="Train, export, register, validate and deploy every demo model.",
    )
    schedules = demo_schedules()
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=[demo_job],
        schedules=schedules,
        resources={"registry": RegistryResource(), "features": FeatureStoreResource()},
    )


defs = build_definitions()
