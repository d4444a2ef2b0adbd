"""Candidate and validation assets of one model spec.

For an ``onnx`` spec the candidate is a version users registered (``roost register``):
``<p>_held_out_data`` loads the spec's held-out file and ``<p>_candidate`` picks the newest
REGISTERED / VALIDATING version (or the one given in run config). For a ``trainer`` spec the
candidate is the ``<p>_onnx_artifact`` the demo trainer registered (see :mod:`assets.pipeline`).

``<p>_validation`` judges the candidate and walks it VALIDATING -> VALIDATED | FAILED (audited);
its blocking checks say why, so a failed *candidate* is a red check on this asset and never on
what is serving (``<p>_serving``, see :mod:`assets.observer`).
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetIn,
    AssetsDefinition,
    Config,
    Failure,
    Output,
    asset,
    asset_check,
)

from assets.demo_data import Dataset
from assets.held_out import load_held_out
from assets.onnx_checks import (
    check_metric,
    check_onnx_latency,
    check_onnx_signature,
    check_schema_compat,
)
from assets.pipeline import dataset_metadata
from assets.resources import RegistryResource
from assets.spec import ModelSpec
from assets.training import TrainedModel
from assets.validation import (
    CheckOutcome,
    ValidationReport,
    check_accuracy,
    check_latency,
    check_parity,
    check_signature,
)
from registry import Registry, State

TRAINER_CHECKS = ("signature", "accuracy", "parity", "latency", "schema_compat")
ONNX_CHECKS = ("signature", "metric", "latency", "schema_compat")
CANDIDATE_STATES = (State.REGISTERED, State.VALIDATING)


def check_names(spec: ModelSpec) -> tuple[str, ...]:
    names = ONNX_CHECKS if spec.is_onnx else TRAINER_CHECKS
    return (*names, "fairness") if spec.fairness is not None else names  # assets/fairness.py


class CandidateConfig(Config):
    """Which registered version to validate (default: the newest REGISTERED / VALIDATING one)."""

    version: int | None = None


def pick_candidate(reg: Registry, model: str, version: int | None) -> int:
    """The version to validate; a Failure naming what is missing if there is none."""
    if version is not None:
        reg.get_version(model, version)  # NotFound if it does not exist
        return version
    waiting = [v for v in reg.list_versions(model) if v.state in CANDIDATE_STATES]
    if not waiting:
        raise Failure(
            f"model {model!r} has no REGISTERED or VALIDATING version to validate; register one "
            f"with `roost register FILE --model {model}` or name a version in the run config"
        )
    return max(v.version for v in waiting)


def onnx_candidate_assets(spec: ModelSpec) -> list[AssetsDefinition]:
    """The held-out data and the registered candidate of an ``onnx`` spec."""
    p = spec.prefix

    @asset(name=f"{p}_held_out_data", group_name=p, compute_kind="pandas")
    def held_out_data() -> Output[Dataset]:
        """Labelled held-out rows the candidate is judged on, fingerprinted for lineage."""
        dataset = load_held_out(spec.held_out, spec.name)
        return Output(dataset, metadata={**dataset_metadata(dataset), "source": dataset.name})

    @asset(name=f"{p}_candidate", group_name=p, compute_kind="onnx")
    def candidate(config: CandidateConfig, registry: RegistryResource) -> Output[dict[str, Any]]:
        """The registered version under validation (a user-supplied ONNX file)."""
        reg = registry.get_registry()
        try:
            version = pick_candidate(reg, spec.name, config.version)
            info = reg.get_version(spec.name, version)
        finally:
            reg.close()
        return Output(
            {"model": spec.name, "version": version, "sha256": info.sha256},
            metadata={
                "model": spec.name,
                "version": version,
                "sha256": info.sha256,
                "state": info.state.value,
                "registered_by": info.registered_by,
                "source_path": str(info.lineage.get("source_path", "")),
            },
        )

    return [held_out_data, candidate]


def _schema_outcome(reg: Registry, model: str, version: int) -> CheckOutcome:
    candidate = reg.get_version(model, version).signature
    deployment = reg.get_deployment(model)
    production = deployment.production_version if deployment else None
    if production is None:
        return check_schema_compat(candidate, None, None)
    return check_schema_compat(candidate, reg.get_version(model, production).signature, production)


def _report(
    spec: ModelSpec, reg: Registry, artifact: dict[str, Any], inputs: Any
) -> ValidationReport:
    model, version = artifact["model"], int(artifact["version"])
    schema = _schema_outcome(reg, model, version)
    report = _checks(spec, reg, model, version, inputs, schema)
    if spec.fairness is not None:  # a blocking check like the others (assets/fairness.py)
        from assets.fairness import held_out_fairness

        onnx_bytes = reg.load_artifact(model, version)
        report.outcomes.append(
            held_out_fairness(spec, onnx_bytes, inputs if spec.is_onnx else None)
        )
    return report


def _checks(spec: ModelSpec, reg: Registry, model: str, version: int, inputs: Any,
            schema: CheckOutcome) -> ValidationReport:
    bar = spec.validation
    if spec.is_onnx:
        data: Dataset = inputs
        onnx_bytes = reg.load_artifact(model, version)
        return ValidationReport([
            check_onnx_signature(onnx_bytes, data.feature_names),
            check_metric(onnx_bytes, data.X, data.y, bar),
            check_onnx_latency(onnx_bytes, len(data.feature_names), bar.latency_p99_ms),
            schema,
        ])
    trained: TrainedModel = inputs
    return ValidationReport([
        check_signature(trained.onnx_bytes, trained.feature_names, trained.holdout_X),
        check_accuracy(
            trained.onnx_bytes, trained.holdout_X, trained.holdout_y, bar.minimum,
            min_auc=bar.min_auc,
        ),
        check_parity(trained.onnx_bytes, trained.holdout_X, trained.native_proba,
                     bar.parity_tolerance),
        check_latency(trained.onnx_bytes, len(trained.feature_names), bar.latency_p99_ms),
        schema,
    ])


def validation_assets(spec: ModelSpec) -> tuple[AssetsDefinition, list[AssetChecksDefinition]]:
    """``<p>_validation`` and its blocking checks."""
    p = spec.prefix
    upstream = f"{p}_candidate" if spec.is_onnx else f"{p}_onnx_artifact"
    data_key = f"{p}_held_out_data" if spec.is_onnx else f"{p}_trained_model"

    @asset(
        name=f"{p}_validation",
        group_name=p,
        ins={"artifact": AssetIn(upstream), "inputs": AssetIn(data_key)},
        compute_kind="onnxruntime",
    )
    def validation(
        registry: RegistryResource, artifact: dict[str, Any], inputs: Any
    ) -> Output[dict[str, Any]]:
        """The candidate judged on held-out data; it ends VALIDATED or FAILED."""
        reg = registry.get_registry()
        try:
            report = _report(spec, reg, artifact, inputs)
            state = record_validation(reg, artifact, report)
        finally:
            reg.close()
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

    return validation, [_make_check(p, name) for name in check_names(spec)]


def record_validation(reg: Registry, artifact: dict[str, Any], report: ValidationReport) -> State:
    """Walk the version through VALIDATING to VALIDATED or FAILED (audited) and store metrics."""
    model, version = artifact["model"], int(artifact["version"])
    metrics = {
        f"validation.{o.name}.{k}": v
        for o in report.outcomes
        for k, v in o.metadata.items()
        if isinstance(v, int | float)
    }
    reg.update_metrics(model, version, metrics)
    state = reg.get_version(model, version).state
    if state is State.FAILED:
        reg.transition(model, version, State.REGISTERED, reason="re-validation", actor="dagster")
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


def _make_check(prefix: str, name: str) -> AssetChecksDefinition:
    @asset_check(
        asset=f"{prefix}_validation",
        name=f"{name}_check",
        blocking=True,
        description=f"Validation criterion '{name}' of the candidate version.",
    )
    def check(validation: dict[str, Any]) -> AssetCheckResult:
        outcome = validation["outcomes"][name]
        return AssetCheckResult(
            passed=bool(outcome["passed"]),
            description=outcome["description"],
            metadata={"version": validation["version"], **outcome["metadata"]},
        )

    return check
