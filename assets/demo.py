"""The two demo models Roost ships: ``breast-cancer`` and ``fraud``.

The fraud model trains on Feast: its training data is point-in-time joined from the
``fraud_v1`` FeatureService (see :mod:`assets.features` and :mod:`features.definitions`), and the
gateway can assemble its input from the online store given a ``customer_id``.
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
from assets.pipeline import DemoModelSpec, build_model_pipeline

FRAUD_FEATURE_SERVICE = "fraud_v1"  # features.definitions.fraud_v1

DEMO_MODELS: tuple[DemoModelSpec, ...] = (
    DemoModelSpec(
        served_name="breast-cancer",
        prefix="breast_cancer",
        load_data=load_breast_cancer_dataset,
        accuracy_threshold=0.9,
        min_auc=0.9,
        description="Gradient-boosted classifier on scikit-learn's breast-cancer data.",
    ),
    DemoModelSpec(
        served_name="fraud",
        prefix="fraud",
        # The raw transactions; the customer_activity asset turns them into Feast's sources.
        load_data=generate_fraud_transactions,
        # A majority-class model scores ~95% accuracy on this data: AUC is the real bar.
        accuracy_threshold=0.9,
        min_auc=0.75,
        description="Transaction-fraud classifier on the seeded synthetic data set.",
        feature_service=FRAUD_FEATURE_SERVICE,
        training_data_asset=fraud_training_data_asset,
    ),
)


def demo_assets() -> tuple[list[AssetsDefinition], list[Any]]:
    """Every asset and asset check of the demo pipelines."""
    all_assets: list[AssetsDefinition] = []
    all_checks: list[Any] = []
    for spec in DEMO_MODELS:
        a, c = build_model_pipeline(spec)
        all_assets += a
        all_checks += c
        if spec.feature_service is not None:
            all_assets += fraud_feature_assets(spec)
    return all_assets, all_checks


def demo_schedules() -> list[ScheduleDefinition]:
    """The online store's materialization schedule."""
    return [online_features_schedule()]
