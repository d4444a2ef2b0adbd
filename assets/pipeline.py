"""The demo trainers' assets: training data -> trained model -> ONNX artifact (registered).

A demo spec (``source: {kind: trainer}``) starts its lineage here; validation and the staged
rollout that follow are the same for every model (see :mod:`assets.lineage`). A trainer whose
:class:`DemoModelSpec` names a Feast FeatureService (the fraud model) gets its training data asset
from ``assets/features.py`` (a point-in-time join) and the service's name in the registered
version's tags and lineage (``feature_service``), which is how the gateway finds its features.
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    Output,
    asset,
)

from assets.demo_data import Dataset
from assets.resources import RegistryResource
from assets.training import TrainedModel, train_classifier


@dataclass(frozen=True)
class DemoModelSpec:
    """One demo trainer: the model it serves, where its data comes from."""

    served_name: str  # the name clients use: /v2/models/<served_name>/infer
    prefix: str  # asset key prefix and group name
    load_data: Callable[[], Dataset]
    description: str = ""
    # A model whose training data comes from a Feast FeatureService: the service's name (stored
    # in the registered version's tags and lineage) and the factory of its training data asset.
    feature_service: str | None = None
    training_data_asset: Callable[["DemoModelSpec"], AssetsDefinition] | None = None


class TrainingConfig(Config):
    """Knobs of one training run (``shuffle_labels`` builds a deliberately broken model)."""

    seed: int = 0
    shuffle_labels: bool = False


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"roost {version('roost')}"
    except PackageNotFoundError:
        return "roost (source)"


def trainer_assets(spec: DemoModelSpec) -> list[AssetsDefinition]:
    """Training data, trained model and registered ONNX artifact of one demo trainer."""
    p = spec.prefix

    training_data = (spec.training_data_asset or _loaded_training_data)(spec)
    feature_tags = {"feature_service": spec.feature_service} if spec.feature_service else {}

    @asset(
        name=f"{p}_trained_model",
        group_name=p,
        ins={"dataset": AssetIn(f"{p}_training_data")},
        compute_kind="scikit-learn",
    )
    def trained_model(config: TrainingConfig, dataset: Dataset) -> Output[TrainedModel]:
        """A gradient-boosted classifier trained on the data and exported to ONNX."""
        trained = train_classifier(
            dataset, seed=config.seed, shuffle_labels=config.shuffle_labels
        )
        return Output(
            trained,
            metadata={
                **{k: float(v) for k, v in trained.train_metrics.items()},
                "onnx_bytes": len(trained.onnx_bytes),
                "shuffle_labels": config.shuffle_labels,
            },
        )

    @asset(
        name=f"{p}_onnx_artifact",
        group_name=p,
        ins={"trained": AssetIn(f"{p}_trained_model"), "dataset": AssetIn(f"{p}_training_data")},
        compute_kind="onnx",
    )
    def onnx_artifact(
        context: AssetExecutionContext,
        registry: RegistryResource,
        trained: TrainedModel,
        dataset: Dataset,
    ) -> Output[dict[str, Any]]:
        """The ONNX export registered in the Roost registry as a new version."""
        reg = registry.get_registry()
        try:
            info = reg.register_version(
                spec.served_name,
                trained.onnx_bytes,
                feature_names=trained.feature_names,
                metrics={k: float(v) for k, v in trained.train_metrics.items()},
                lineage={
                    "training_data": dataset.name,
                    "training_data_fingerprint": dataset.fingerprint(),
                    "code_version": _code_version(),
                    "parameters": trained.params,
                    "python": platform.python_version(),
                    "dagster_run_id": context.run.run_id,
                    **feature_tags,
                },
                tags={
                    "pipeline": "demo",
                    "asset": context.asset_key.to_user_string(),
                    **feature_tags,
                },
                registered_by="dagster",
                description=spec.description,
            )
        finally:
            reg.close()
        return Output(
            {"model": info.model, "version": info.version, "sha256": info.sha256},
            metadata={
                "model": info.model,
                "version": info.version,
                "sha256": info.sha256,
                "state": info.state.value,
            },
        )

    return [training_data, trained_model, onnx_artifact]


def _loaded_training_data(spec: DemoModelSpec) -> AssetsDefinition:
    @asset(name=f"{spec.prefix}_training_data", group_name=spec.prefix, compute_kind="python")
    def training_data() -> Output[Dataset]:
        """Labelled training data for the model, fingerprinted for lineage."""
        dataset = spec.load_data()
        return Output(dataset, metadata=dataset_metadata(dataset))

    return training_data


def dataset_metadata(dataset: Dataset) -> dict[str, Any]:
    """What the UI shows about a training data set: size, fingerprint, positive rate."""
    return {
        "rows": len(dataset.frame),
        "features": len(dataset.feature_names),
        "fingerprint": dataset.fingerprint(),
        "positive_rate": float(dataset.y.mean()),
    }
