"""The demo model pipeline as Dagster assets, one group per served model.

training data -> trained model -> ONNX artifact (registered) -> validation -> production deployment

A model whose spec names a Feast FeatureService (the fraud model) gets its training data asset
from ``assets/features.py`` (a point-in-time join) and the service's name in the registered
version's tags and lineage (``feature_service``), which is how the gateway finds its features.

Validation is four blocking asset checks on the ``validation`` asset: when one fails the version
is moved to FAILED and the deployment asset does not run (the registry refuses it as well).
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from assets.demo_data import Dataset
from assets.resources import RegistryResource
from assets.training import TrainedModel, train_classifier
from assets.validation import ValidationReport, validate_model
from registry import State

CHECK_NAMES = ("signature", "accuracy", "parity", "latency")


@dataclass(frozen=True)
class DemoModelSpec:
    """One demo model: where its data comes from and the bar its versions must clear."""

    served_name: str  # the name clients use: /v2/models/<served_name>/infer
    prefix: str  # asset key prefix and group name
    load_data: Callable[[], Dataset]
    accuracy_threshold: float
    min_auc: float | None
    parity_tolerance: float = 1e-4
    latency_budget_ms: float = 5.0
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


def build_model_pipeline(spec: DemoModelSpec) -> tuple[list[AssetsDefinition], list[Any]]:
    """The five assets and four checks of one demo model."""
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
                    "dagster_run_id": context.run_id,
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

    @asset(
        name=f"{p}_validation",
        group_name=p,
        ins={"trained": AssetIn(f"{p}_trained_model"), "artifact": AssetIn(f"{p}_onnx_artifact")},
        compute_kind="onnxruntime",
    )
    def validation(
        registry: RegistryResource, trained: TrainedModel, artifact: dict[str, Any]
    ) -> Output[dict[str, Any]]:
        """The version validated on held-out data; it ends VALIDATED or FAILED."""
        report = validate_model(
            trained,
            accuracy_threshold=spec.accuracy_threshold,
            min_auc=spec.min_auc,
            parity_tolerance=spec.parity_tolerance,
            latency_budget_ms=spec.latency_budget_ms,
        )
        state = _record_validation(registry, artifact, report)
        result = {
            "model": artifact["model"],
            "version": artifact["version"],
            "passed": report.passed,
            "state": state.value,
            "outcomes": {
                o.name: {"passed": o.passed, "description": o.description, "metadata": o.metadata}
                for o in report.outcomes
            },
        }
        return Output(
            result,
            metadata={
                "version": artifact["version"],
                "state": state.value,
                "passed": report.passed,
                "failed_checks": ", ".join(report.failed) or "none",
            },
        )

    checks = [_make_check(p, name) for name in CHECK_NAMES]

    @asset(
        name=f"{p}_production_deployment",
        group_name=p,
        ins={"validated": AssetIn(f"{p}_validation")},
        compute_kind="roost",
    )
    def production_deployment(
        registry: RegistryResource, validated: dict[str, Any]
    ) -> MaterializeResult[None]:
        """The validated version serving production traffic."""
        if not validated["passed"]:
            raise Failure(
                f"version {validated['version']} of {spec.served_name} failed validation; "
                "not deploying"
            )
        reg = registry.get_registry()
        try:
            dep = reg.deploy(
                spec.served_name, int(validated["version"]), reason="demo pipeline", actor="dagster"
            )
        finally:
            reg.close()
        return MaterializeResult(
            metadata={
                "model": spec.served_name,
                "production_version": dep.production_version,
                "generation": dep.generation,
                "predict_url": MetadataValue.text(f"/v2/models/{spec.served_name}/infer"),
            }
        )

    assets_ = [training_data, trained_model, onnx_artifact, validation, production_deployment]
    return assets_, checks


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


def _record_validation(
    registry: RegistryResource, artifact: dict[str, Any], report: ValidationReport
) -> State:
    """Walk the version through VALIDATING to VALIDATED or FAILED (audited) and store metrics."""
    reg = registry.get_registry()
    model, version = artifact["model"], int(artifact["version"])
    try:
        metrics = {
            f"validation.{o.name}.{k}": v
            for o in report.outcomes
            for k, v in o.metadata.items()
            if isinstance(v, int | float)
        }
        reg.update_metrics(model, version, metrics)
        state = reg.get_version(model, version).state
        if state is State.FAILED:
            reg.transition(
                model, version, State.REGISTERED, reason="re-validation", actor="dagster"
            )
            state = State.REGISTERED
        if state is State.REGISTERED:
            reg.transition(model, version, State.VALIDATING, reason="pipeline", actor="dagster")
            state = State.VALIDATING
        if state is State.VALIDATING:  # also a run that died between the two transitions
            target = State.VALIDATED if report.passed else State.FAILED
            why = "all checks passed" if report.passed else "failed: " + ", ".join(report.failed)
            reg.transition(model, version, target, reason=why, actor="dagster")
            state = target
        return state
    finally:
        reg.close()


def _make_check(prefix: str, name: str) -> AssetChecksDefinition:
    @asset_check(
        asset=f"{prefix}_validation",
        name=f"{name}_check",
        blocking=True,
        description=f"Validation criterion '{name}' of the registered version.",
    )
    def check(validation: dict[str, Any]) -> AssetCheckResult:
        outcome = validation["outcomes"][name]
        return AssetCheckResult(
            passed=bool(outcome["passed"]),
            description=outcome["description"],
            metadata={"version": validation["version"], **outcome["metadata"]},
        )

    return check
