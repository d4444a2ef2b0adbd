"""The two demo models Roost ships: ``breast-cancer`` and ``fraud``."""

from __future__ import annotations

from typing import Any

from dagster import AssetsDefinition

from assets.demo_data import generate_fraud_transactions, load_breast_cancer_dataset
from assets.pipeline import DemoModelSpec, build_model_pipeline

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
        load_data=generate_fraud_transactions,
        # A majority-class model scores ~95% accuracy on this data: AUC is the real bar.
        accuracy_threshold=0.9,
        min_auc=0.75,
        description="Transaction-fraud classifier on the seeded synthetic data set.",
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
    return all_assets, all_checks
