"""The demo pipeline on a real Dagster instance, writing into a real registry in a temp home.

One module-scoped materialization of the whole demo graph (both models, the fraud model's Feast
feature assets, all checks) serves the happy-path tests; the broken-model tests materialize only
the breast-cancer group with ``shuffle_labels`` so the blocking accuracy check fails and the
deployment asset never runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    ExecuteInProcessResult,
    materialize,
)

from assets.demo import DEMO_SPECS, demo_assets
from assets.demo_data import generate_fraud_transactions, load_breast_cancer_dataset
from assets.lineage import build_lineage
from assets.resources import FeatureStoreResource, RegistryResource
from assets.spec import ModelSpec
from assets.validation_assets import TRAINER_CHECKS
from registry import Registry, RoostSettings, State

BROKEN = {"ops": {"breast_cancer_trained_model": {"config": {"shuffle_labels": True}}}}
# The fraud history ends on a fixed day for the whole module: two runs give the same data.
AS_OF = datetime.now(UTC).strftime("%Y-%m-%d")
PINNED = {"ops": {"customer_activity": {"config": {"as_of": AS_OF}}}}
SPECS = {spec.name: spec for spec in DEMO_SPECS}
DEMO_MODELS = DEMO_SPECS
CHECK_NAMES = TRAINER_CHECKS
STAGING = ("staging_error_rate", "staging_latency", "staging_agreement")
STAGES = ("training_data", "trained_model", "onnx_artifact", "validation",
          "staging_deployment", "staging_tests", "canary_deployment", "production_deployment")
BREAST_CANCER = SPECS["breast-cancer"]
# The fraud model's training data is joined by Feast from generate_fraud_transactions(): the
# same features and labels, with timestamps moved to end on AS_OF.
FINGERPRINTS = {"breast-cancer": load_breast_cancer_dataset().fingerprint()}
FEATURE_ASSETS = {"customer_activity", "online_features"}


def _everything() -> list[Any]:
    assets, checks = demo_assets()
    return [*assets, *checks]


def _one_model(spec: ModelSpec) -> list[Any]:
    lineage = build_lineage(spec)
    return [*lineage.assets, *lineage.checks]


def _run(
    home: Path,
    instance: DagsterInstance,
    selection: list[Any],
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    return materialize(
        selection,
        resources={
            "registry": RegistryResource(home=str(home)),
            "features": FeatureStoreResource(home=str(home)),
        },
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def _materialized(result: ExecuteInProcessResult) -> set[str]:
    return {
        event.asset_key.to_user_string()
        for event in result.get_asset_materialization_events()
        if event.asset_key is not None
    }


def _checks(result: ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e.passed
        for e in result.get_asset_check_evaluations()
    }


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry.from_settings(RoostSettings(home=tmp_path))
    yield registry
    registry.close()


# -- the whole demo graph, materialized once for the module --------------------------------------


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo_pipeline")


@pytest.fixture(scope="module")
def demo_instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture(scope="module")
def demo_run(demo_home: Path, demo_instance: DagsterInstance) -> ExecuteInProcessResult:
    return _run(demo_home, demo_instance, _everything(), PINNED)


@pytest.fixture
def demo_registry(demo_home: Path, demo_run: ExecuteInProcessResult) -> Iterator[Registry]:
    registry = Registry.from_settings(RoostSettings(home=demo_home))
    yield registry
    registry.close()


def test_whole_demo_graph_materializes_and_every_check_passes(
    demo_run: ExecuteInProcessResult,
) -> None:
    assert demo_run.success
    expected = {f"{spec.prefix}_{stage}" for spec in DEMO_MODELS for stage in STAGES}
    assert _materialized(demo_run) == expected | FEATURE_ASSETS

    checks = _checks(demo_run)
    assert checks == {
        (f"{spec.prefix}_validation", f"{name}_check"): True
        for spec in DEMO_MODELS
        for name in CHECK_NAMES
    } | {
        (f"{spec.prefix}_staging_tests", f"{name}_check"): True
        for spec in DEMO_MODELS
        for name in STAGING
    }
    assert len(checks) == 16

    deployed = demo_run.asset_materializations_for_node("fraud_production_deployment")
    assert deployed[0].metadata["production_version"].value == 1
    assert deployed[0].metadata["predict_url"].value == "/v2/models/fraud/infer"


def test_registry_has_both_models_in_production_with_lineage_and_metrics(
    demo_run: ExecuteInProcessResult, demo_registry: Registry
) -> None:
    models = {m.name: m for m in demo_registry.list_models()}
    assert set(models) == {"breast-cancer", "fraud"}
    for name, spec in SPECS.items():
        assert models[name].production_version == 1
        assert models[name].versions == 1
        deployment = demo_registry.get_deployment(name)
        assert deployment is not None and deployment.production_version == 1

        info = demo_registry.get_version(name, 1)
        assert info.state is State.PRODUCTION
        assert info.registered_by == "dagster"
        feature_tags = {"feature_service": "fraud_v1"} if name == "fraud" else {}
        assert info.tags == {
            "pipeline": "demo", "asset": f"{spec.prefix}_onnx_artifact", **feature_tags
        }
        assert info.description == spec.description

        # Lineage ties the version to the exact training data and to the Dagster run.
        data_event = demo_run.asset_materializations_for_node(f"{spec.prefix}_training_data")[0]
        fingerprint = data_event.metadata["fingerprint"].value
        assert info.lineage["training_data_fingerprint"] == fingerprint
        assert fingerprint == FINGERPRINTS.get(name, fingerprint)
        assert info.lineage.get("feature_service") == feature_tags.get("feature_service")
        assert info.lineage["parameters"]["dataset_fingerprint"] == fingerprint
        assert info.lineage["dagster_run_id"] == demo_run.run_id
        assert info.lineage["parameters"]["shuffle_labels"] is False

        # Training and validation metrics are both stored on the version.
        assert info.metrics["train_accuracy"] > 0.9
        bar = spec.validation
        assert info.metrics["validation.accuracy.accuracy"] >= bar.minimum
        assert bar.min_auc is not None
        assert info.metrics["validation.accuracy.roc_auc"] >= bar.min_auc
        assert info.metrics["validation.parity.max_abs_diff"] <= bar.parity_tolerance
        assert info.metrics["validation.latency.p99_ms"] <= bar.latency_p99_ms
        assert info.metrics["staging.error_rate"] == 0.0
        assert info.metrics["staging.requests"] == spec.staging.replay_sample

        # The walk to production is audited, step by step, by the pipeline.
        steps = [
            (r.details["from"], r.details["to"])
            for r in demo_registry.audit_records(name)
            if r.action == "transition"
        ]
        assert steps == [
            ("REGISTERED", "VALIDATING"),
            ("VALIDATING", "VALIDATED"),
            ("VALIDATED", "STAGING"),
            ("STAGING", "STAGING_TESTED"),
            ("STAGING_TESTED", "CANARY"),
            ("CANARY", "PRODUCTION"),
        ]
    assert {v.model for v in demo_registry.served_versions()} == {"breast-cancer", "fraud"}
    verification = demo_registry.audit_verify()
    assert verification.ok, verification.reason


def test_fraud_training_data_is_the_point_in_time_join_of_the_generated_history(
    demo_run: ExecuteInProcessResult,
) -> None:
    dataset = demo_run.output_for_node("fraud_training_data")
    generated = generate_fraud_transactions()
    np.testing.assert_array_equal(dataset.X, generated.X)
    np.testing.assert_array_equal(dataset.y, generated.y)
    assert dataset.frame["event_timestamp"].max() < pd.Timestamp(AS_OF, tz="UTC")
    event = demo_run.asset_materializations_for_node("fraud_training_data")[0]
    assert event.metadata["feature_service"].value == "fraud_v1"


def test_rematerializing_the_demo_graph_is_idempotent(
    demo_home: Path,
    demo_instance: DagsterInstance,
    demo_run: ExecuteInProcessResult,
    demo_registry: Registry,
) -> None:
    generation = demo_registry.generation()
    audit_count = len(demo_registry.audit_records())

    again = _run(demo_home, demo_instance, _everything(), PINNED)

    assert again.success
    assert all(_checks(again).values()) and len(_checks(again)) == 16
    for name in SPECS:
        assert [(v.version, v.state) for v in demo_registry.list_versions(name)] == [
            (1, State.PRODUCTION)
        ]
        deployment = demo_registry.get_deployment(name)
        assert deployment is not None and deployment.production_version == 1
    # Same bytes -> same version; deploying the production version again is a no-op.
    assert demo_registry.generation() == generation
    assert len(demo_registry.audit_records()) == audit_count
    assert demo_registry.audit_verify().ok


# -- a deliberately broken model -----------------------------------------------------------------


def _assert_broken_run(result: ExecuteInProcessResult) -> None:
    assert not result.success
    checks = _checks(result)
    assert checks == {
        ("breast_cancer_validation", "signature_check"): True,
        ("breast_cancer_validation", "accuracy_check"): False,
        ("breast_cancer_validation", "parity_check"): True,
        ("breast_cancer_validation", "latency_check"): True,
        ("breast_cancer_validation", "schema_compat_check"): True,
    }
    assert _materialized(result) == {
        "breast_cancer_training_data",
        "breast_cancer_trained_model",
        "breast_cancer_onnx_artifact",
        "breast_cancer_validation",
    }
    validation = result.asset_materializations_for_node("breast_cancer_validation")[0]
    assert validation.metadata["state"].value == "FAILED"
    assert validation.metadata["failed_checks"].value == "accuracy"


def test_broken_model_fails_validation_and_is_not_deployed(
    tmp_path: Path, instance: DagsterInstance, reg: Registry
) -> None:
    result = _run(tmp_path, instance, _one_model(BREAST_CANCER), BROKEN, raise_on_error=False)

    _assert_broken_run(result)
    info = reg.get_version("breast-cancer", 1)
    assert info.state is State.FAILED
    assert info.lineage["parameters"]["shuffle_labels"] is True
    assert info.metrics["validation.accuracy.accuracy"] < BREAST_CANCER.validation.minimum
    assert reg.get_deployment("breast-cancer") is None
    assert reg.served_versions() == []
    assert [m.production_version for m in reg.list_models()] == [None]
    failed = [r for r in reg.audit_records("breast-cancer") if r.details.get("to") == "FAILED"]
    assert len(failed) == 1 and "accuracy" in failed[0].details["reason"]

    # Running the same broken model again re-validates the same version: it stays FAILED.
    again = _run(tmp_path, instance, _one_model(BREAST_CANCER), BROKEN, raise_on_error=False)
    _assert_broken_run(again)
    assert [(v.version, v.state) for v in reg.list_versions("breast-cancer")] == [
        (1, State.FAILED)
    ]
    assert reg.get_deployment("breast-cancer") is None
    assert reg.audit_verify().ok


def test_broken_model_after_a_good_one_leaves_production_alone(
    tmp_path: Path, instance: DagsterInstance, reg: Registry
) -> None:
    good = _run(tmp_path, instance, _one_model(BREAST_CANCER))
    assert good.success
    deployment = reg.get_deployment("breast-cancer")
    assert deployment is not None and deployment.production_version == 1

    broken = _run(tmp_path, instance, _one_model(BREAST_CANCER), BROKEN, raise_on_error=False)

    _assert_broken_run(broken)
    assert [(v.version, v.state) for v in reg.list_versions("breast-cancer")] == [
        (1, State.PRODUCTION),
        (2, State.FAILED),
    ]
    after = reg.get_deployment("breast-cancer")
    assert after is not None
    assert after.production_version == 1
    assert after.generation == deployment.generation
    assert [(v.model, v.version) for v in reg.served_versions()] == [("breast-cancer", 1)]
    assert reg.audit_verify().ok


# -- the generated keys -----------------------------------------------------------------------


def test_asset_keys_of_one_demo_lineage() -> None:
    lineage = build_lineage(BREAST_CANCER)
    assert [a.key for a in lineage.assets] == [
        AssetKey(f"breast_cancer_{stage}") for stage in STAGES
    ]
    specs = [spec for check in lineage.checks for spec in check.check_specs]
    assert [(s.asset_key, s.name, s.blocking) for s in specs] == [
        (AssetKey("breast_cancer_validation"), f"{name}_check", True) for name in CHECK_NAMES
    ] + [(AssetKey("breast_cancer_staging_tests"), f"{name}_check", True) for name in STAGING]
