"""The Dagster code location: every model spec's lineage, jobs, the registry observer, resources.

Specs are the two built-in demos plus ``$ROOST_HOME/models/*.yaml`` (see :mod:`assets.spec`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import AssetSelection, Definitions, define_asset_job

from assets.concept import concept_definitions
from assets.demo import DEMO_MODELS, DEMO_SPECS, demo_schedules
from assets.drift import drift_definitions
from assets.experiments import experiment_definitions
from assets.fairness import fairness_definitions
from assets.features import fraud_feature_assets
from assets.lineage import build_lineages
from assets.llm_demo import LLM_DEMO, llm_assets
from assets.observer import registry_observer, serving_assets
from assets.quantize import quantize_job
from assets.registry_gc import registry_gc_definitions
from assets.resources import FeatureStoreResource, RegistryResource
from assets.retention import retention_definitions
from assets.spec import ModelSpec, load_user_specs, merge_specs
from orchestration.alert_sensor import make_alert_sensor
from orchestration.canary_sensor import make_canary_sensor
from orchestration.operator_jobs import operator_jobs
from registry import RoostSettings


def build_definitions(home: Path | None = None) -> Definitions:
    """Definitions for the demos and every spec under ``home`` (default: ``$ROOST_HOME``)."""
    home = home or RoostSettings().home
    specs: list[ModelSpec] = merge_specs(DEMO_SPECS, load_user_specs(home))
    lineages = build_lineages(specs)
    assets: list[Any] = [a for lineage in lineages for a in lineage.assets]
    assets += [a for t in DEMO_MODELS if t.feature_service for a in fraud_feature_assets(t)]
    assets += serving_assets(specs)
    experiment_assets, experiment_schedules = experiment_definitions()
    assets += experiment_assets
    gc_assets, gc_schedules = registry_gc_definitions()
    assets += gc_assets
    retention_assets, retention_schedules = retention_definitions()
    assets += retention_assets
    drift_assets, drift_schedules = drift_definitions(specs)
    concept_assets, concept_schedules = concept_definitions(specs)
    assets += drift_assets + concept_assets
    fairness_assets, fairness_schedules = fairness_definitions(specs)  # specs declaring it
    assets += fairness_assets
    lm_assets, lm_checks = llm_assets()  # the project's own language model (llm/, docs/llm.md)
    assets += lm_assets
    lm_job = define_asset_job(
        f"{LLM_DEMO.prefix}_pipeline", selection=AssetSelection.groups(LLM_DEMO.prefix),
        description="Train (cached), register, validate and deploy the demo language model.",
    )
    demo_groups = [spec.prefix for spec in DEMO_SPECS] + ["features"]
    demo_job = define_asset_job(
        "demo_pipeline",
        selection=AssetSelection.groups(*demo_groups) - AssetSelection.assets(
            *(f"{spec.prefix}_serving" for spec in DEMO_SPECS)
        ),
        description="Train, export, register, validate and roll out every demo model.",
    )
    return Definitions(
        assets=assets,
        asset_checks=[*(c for lineage in lineages for c in lineage.checks), *lm_checks],
        jobs=[demo_job, lm_job, *(job for lineage in lineages for job in lineage.jobs()),
              *operator_jobs(), quantize_job],
        schedules=[*demo_schedules(), *experiment_schedules, *gc_schedules, *retention_schedules,
                   *drift_schedules, *concept_schedules, *fairness_schedules],
        sensors=[registry_observer(specs), make_canary_sensor(specs), make_alert_sensor()],
        resources={"registry": RegistryResource(), "features": FeatureStoreResource()},
    )


defs = build_definitions()
