"""The two demo models Roost ships: ``breast-cancer`` and ``fraud``.

Each is a :class:`~assets.spec.ModelSpec` with a ``trainer`` source (:data:`DEMO_SPECS`) plus
the trainer behind it (:data:`DEMO_MODELS`). The fraud model trains on Feast: its training data
is point-in-time joined from the ``fraud_v1`` FeatureService (see :mod:`assets.features` and
:mod:`features.definitions`), and the gateway can assemble its input from the online store given
a ``customer_id``.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetsDefinition, ScheduleDefinition

from assets.demo_data import generate_fraud_transactions, load_breast_cancer_dataset
from assets.features import (
    fraud_feature_assets,
    fraud_training_data_asset,
    online_features_schedule,
)
from assets.lineage import build_lineage
from assets.pipeline import DemoModelSpec
from assets.spec import (
    CandidateSource,
    HeldOutData,
    ModelSpec,
    StagingSettings,
    ValidationThresholds,
)

FRAUD_FEATURE_SERVICE = "fraud_v1"  # features.definitions.fraud_v1

DEMO_MODELS: tuple[DemoModelSpec, ...] = (
    DemoModelSpec(
        served_name="breast-cancer",
        prefix="breast_cancer",
        load_data=load_breast_cancer_dataset,
        description="Gradient-boosted classifier on scikit-learn's breast-cancer data.",
    ),
    DemoModelSpec(
        served_name="fraud",
        prefix="fraud",
        # The raw transactions; the customer_activity asset turns them into Feast's sources.
        load_data=generate_fraud_transactions,
        description="Transaction-fraud classifier on the seeded synthetic data set.",
        feature_service=FRAUD_FEATURE_SERVICE,
        training_data_asset=fraud_training_data_asset,
    ),
)

# The demos' staging tests replay 50 held-out rows through an in-process staging gateway.
_DEMO_STAGING = StagingSettings(replay_sample=50, gateway="in_process")

DEMO_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="breast-cancer",
        description=DEMO_MODELS[0].description,
        source=CandidateSource(kind="trainer", trainer="breast-cancer"),
        held_out=HeldOutData(demo="breast-cancer"),
        validation=ValidationThresholds(metric="accuracy", minimum=0.9, min_auc=0.9),
        staging=_DEMO_STAGING,
    ),
    ModelSpec(
        name="fraud",
        description=DEMO_MODELS[1].description,
        source=CandidateSource(kind="trainer", trainer="fraud"),
        held_out=HeldOutData(demo="fraud"),
        # A majority-class model scores ~95% accuracy on this data: AUC is the real bar.
        validation=ValidationThresholds(metric="accuracy", minimum=0.9, min_auc=0.75),
        staging=_DEMO_STAGING,
        feature_service=FRAUD_FEATURE_SERVICE,
    ),
)


def trainer_for(spec: ModelSpec) -> DemoModelSpec:
    """The demo trainer a ``trainer`` spec names."""
    for trainer in DEMO_MODELS:
        if trainer.served_name == spec.source.trainer:
            if trainer.served_name != spec.name:
                raise ValueError(f"spec {spec.name!r}: trainer {trainer.served_name!r} trains "
                                 f"only the model of that name")
            return trainer
    raise ValueError(f"spec {spec.name!r}: no demo trainer {spec.source.trainer!r}")


def demo_assets() -> tuple[list[AssetsDefinition], list[Any]]:
    """Every asset and asset check of the demo pipelines."""
    all_assets: list[AssetsDefinition] = []
    all_checks: list[Any] = []
    for spec, trainer in zip(DEMO_SPECS, DEMO_MODELS, strict=True):
        lineage = build_lineage(spec)
        all_assets += lineage.assets
        all_checks += lineage.checks
        if trainer.feature_service is not None:
            all_assets += fraud_feature_assets(trainer)
    return all_assets, all_checks


def demo_schedules() -> list[ScheduleDefinition]:
    """The online store's materialization schedule."""
    return [online_features_schedule()]
