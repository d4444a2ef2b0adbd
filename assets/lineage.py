"""One model spec -> its whole Dagster lineage, jobs included.

Per model (``<p>`` is the spec's prefix, the name as an identifier)::

    trainer: <p>_training_data -> <p>_trained_model -> <p>_onnx_artifact --+
    onnx:    <p>_held_out_data, <p>_candidate ------------------------------+
        -> <p>_validation (blocking checks) -> <p>_staging_deployment -> <p>_staging_tests
        (blocking checks) -> <p>_canary_deployment -> <p>_production_deployment -> <p>_serving

Jobs: ``<p>_validate`` (up to and including the validation and its checks) and ``<p>_rollout``
(staging deployment to production deployment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetChecksDefinition,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    define_asset_job,
)

from assets.pipeline import trainer_assets
from assets.rollout_assets import rollout_assets
from assets.spec import ModelSpec
from assets.validation_assets import onnx_candidate_assets, validation_assets

ROLLOUT_STAGES = ("staging_deployment", "staging_tests", "canary_deployment",
                  "production_deployment")


@dataclass
class Lineage:
    """Everything one spec generates."""

    spec: ModelSpec
    assets: list[AssetsDefinition] = field(default_factory=list)
    checks: list[AssetChecksDefinition] = field(default_factory=list)

    @property
    def validate_job_name(self) -> str:
        return f"{self.spec.prefix}_validate"

    @property
    def rollout_job_name(self) -> str:
        return f"{self.spec.prefix}_rollout"

    def validate_selection(self) -> AssetSelection:
        return AssetSelection.assets(f"{self.spec.prefix}_validation").upstream()

    def rollout_selection(self) -> AssetSelection:
        return AssetSelection.assets(*(f"{self.spec.prefix}_{s}" for s in ROLLOUT_STAGES))

    def checks_of(self, asset: str) -> list[AssetChecksDefinition]:
        """The checks on the asset named ``asset``."""
        key = AssetKey(asset)
        return [c for c in self.checks if any(s.asset_key == key for s in c.check_specs)]

    def jobs(self) -> list[Any]:
        return [
            define_asset_job(self.validate_job_name, selection=self.validate_selection(),
                             description=f"Validate a candidate version of {self.spec.name}."),
            define_asset_job(self.rollout_job_name, selection=self.rollout_selection(),
                             description=f"Stage, test and canary the validated version of "
                                         f"{self.spec.name}."),
        ]


def build_lineage(spec: ModelSpec) -> Lineage:
    """The assets and checks of one model spec."""
    lineage = Lineage(spec)
    if spec.is_onnx:
        lineage.assets += onnx_candidate_assets(spec)
    else:
        from assets.demo import trainer_for

        lineage.assets += trainer_assets(trainer_for(spec))
    validation, checks = validation_assets(spec)
    lineage.assets.append(validation)
    lineage.checks += checks
    deploy, staging_checks = rollout_assets(spec)
    lineage.assets += deploy
    lineage.checks += staging_checks
    return lineage


def build_lineages(specs: Sequence[ModelSpec]) -> list[Lineage]:
    return [build_lineage(spec) for spec in specs]
