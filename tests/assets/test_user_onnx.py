"""A model a user brings: a spec, `roost register`-style registration, the generated lineage.

One registry for the module, walked in order: a scikit-learn LogisticRegression exported with
skl2onnx is registered, validated and (first version: straight through staging, a 100 % canary)
promoted; a second model with a different input width fails schema compatibility; a third,
compatible, version is rolled out through a real staging gateway subprocess, passes the staging
tests against production's logged traffic and becomes the canary; the observer records its
rollback; a fourth whose logged production answers disagree fails staging with the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dagster import (
    DagsterInstance,
    ExecuteInProcessResult,
    build_sensor_context,
    materialize,
)

from assets.demo_data import load_breast_cancer_dataset
from assets.lineage import build_lineage
from assets.observer import registry_observer
from assets.resources import RegistryResource
from assets.spec import ModelSpec, SpecError, load_spec_file, parse_spec, write_spec
from registry import Registry, RoostSettings, State
from warehouse import ParquetSink, PredictionRecord

MODEL = "cancer-lr"
P = "cancer_lr"


def _onnx(n_features: int, C: float) -> tuple[bytes, Any]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    data = load_breast_cancer_dataset()
    X = data.X[:, :n_features]
    clf = LogisticRegression(C=C, max_iter=10_000).fit(X, data.y)
    onx = to_onnx(clf, X[:1], options={"zipmap": False})
    return onx.SerializeToString(), clf


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user_onnx")
    data = load_breast_cancer_dataset()
    data.frame[[*data.feature_names, "label"]].to_csv(root / "held_out.csv", index=False)
    return root


@pytest.fixture(scope="module")
def spec(home: Path) -> ModelSpec:
    spec = parse_spec({
        "name": MODEL,
        "held_out": {"path": str(home / "held_out.csv"), "label": "label"},
        "validation": {"metric": "auc", "minimum": 0.9, "latency_p99_ms": 20},
        "staging": {"replay_sample": 30, "latency_budget_ms": 2000, "min_agreement": 0.9},
        "canary": {"schedule": [10, 50, 100]},
    })
    return load_spec_file(write_spec(home, spec))


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as inst:
        yield inst


@pytest.fixture
def reg(home: Path) -> Iterator[Registry]:
    registry = Registry.from_settings(RoostSettings(home=home))
    yield registry
    registry.close()


def _run(home: Path, instance: DagsterInstance, spec: ModelSpec, job: str,
         version: int | None = None) -> ExecuteInProcessResult:
    lineage = build_lineage(spec)
    selection = lineage.validate_selection() if job == "validate" else lineage.rollout_selection()
    config = {"ops": {f"{P}_candidate": {"config": {"version": version}}}} if version else None
    return materialize([*lineage.assets, *lineage.checks], selection=selection,
                       instance=instance, run_config=config,
                       resources={"registry": RegistryResource(home=str(home))},
                       raise_on_error=False)


def _checks(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _log_production(home: Path, version: int, labels: list[int], rows: np.ndarray) -> None:
    """Production traffic in the prediction log: what the production version answered."""
    records = [
        PredictionRecord(
            request_id=str(uuid.uuid4()), ts=datetime.now(UTC), model=MODEL, version=version,
            inputs=json.dumps({"inputs": [{"name": "X", "datatype": "FP32",
                                           "shape": [1, len(row)],
                                           "data": [float(v) for v in row]}]}),
            outputs=json.dumps([{"name": "label", "datatype": "INT64", "shape": [1],
                                 "data": [label]}]),
            latency_ms=1.0, status=200, user_id=None, protocol="v2", error=None,
        )
        for row, label in zip(rows, labels, strict=True)
    ]
    ParquetSink(RoostSettings(home=home).logs_dir).write_batch(records)


def test_spec_errors_name_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"x\.yaml: canary\.schedule: .*last step must be 100"):
        parse_spec({"name": "x", "held_out": {"path": "a.csv"}, "canary": {"schedule": [5, 50]}},
                   origin="x.yaml")
    with pytest.raises(SpecError, match=r"held_out: .*exactly one of path"):
        parse_spec({"name": "x", "held_out": {}})
    with pytest.raises(SpecError, match=r"validation\.metric"):
        parse_spec({"name": "x", "held_out": {"demo": "fraud"}, "validation": {"metric": "f1"}})
    with pytest.raises(SpecError, match=r"surprise: Extra inputs"):
        parse_spec({"name": "x", "held_out": {"demo": "fraud"}, "surprise": 1})
    (tmp_path / "y.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match=r"y\.yaml: not valid YAML"):
        load_spec_file(tmp_path / "y.yaml")
    (tmp_path / "z.yaml").write_text("name: other\nheld_out: {demo: fraud}\n")
    with pytest.raises(SpecError, match=r"z\.yaml: name: 'other' does not match"):
        load_spec_file(tmp_path / "z.yaml")


def test_a_registered_onnx_model_is_validated_and_first_deployed(
    home: Path, instance: DagsterInstance, spec: ModelSpec, reg: Registry
) -> None:
    data, _ = _onnx(30, 1.0)
    info = reg.register_version(MODEL, data, registered_by="alice")
    validated = _run(home, instance, spec, "validate")
    checks = _checks(validated)
    assert {n: c.passed for n, c in checks.items()} == {
        "signature_check": True, "metric_check": True, "latency_check": True,
        "schema_compat_check": True,
    }
    assert checks["metric_check"].metadata["roc_auc"].value >= 0.9
    assert reg.get_version(MODEL, info.version).state is State.VALIDATED

    rolled = _run(home, instance, spec, "rollout")
    assert rolled.success
    assert all(c.passed for c in _checks(rolled).values())
    deployment = reg.get_deployment(MODEL)
    assert deployment is not None and deployment.production_version == info.version
    assert reg.get_version(MODEL, info.version).metrics["staging.requests"] == 30


def test_an_incompatible_model_fails_schema_compatibility(
    home: Path, instance: DagsterInstance, spec: ModelSpec, reg: Registry
) -> None:
    narrow, _ = _onnx(20, 1.0)
    version = reg.register_version(MODEL, narrow).version
    result = _run(home, instance, spec, "validate")
    compat = _checks(result)["schema_compat_check"]
    assert not compat.passed
    assert "input 'X': shape [-1, 20], production [-1, 30]" in compat.metadata[
        "differences"].value
    assert reg.get_version(MODEL, version).state is State.FAILED
    assert reg.get_deployment(MODEL).production_version == 1  # type: ignore[union-attr]


def test_a_compatible_version_passes_staging_on_replayed_traffic_then_is_rolled_back(
    home: Path, instance: DagsterInstance, spec: ModelSpec, reg: Registry
) -> None:
    data, clf = _onnx(30, 0.5)
    version = reg.register_version(MODEL, data).version
    X = load_breast_cancer_dataset().X[:40]
    _log_production(home, 1, [int(v) for v in clf.predict(X)], X)
    assert _run(home, instance, spec, "validate", version).success

    rolled = _run(home, instance, spec, "rollout")
    checks = _checks(rolled)
    assert all(c.passed for c in checks.values()), checks
    assert checks["staging_agreement_check"].metadata["source"].value == "production-log"
    assert checks["staging_agreement_check"].metadata["agreement"].value >= 0.9
    status = reg.get_rollout(MODEL)
    assert status is not None and status.phase.value == "CANARY" and status.percent == 10
    assert not rolled.asset_materializations_for_node(f"{P}_production_deployment")

    sensor = registry_observer([spec])
    resources = {"registry": RegistryResource(home=str(home))}
    with build_sensor_context(resources=resources) as context:
        first = sensor(context)
        cursor = first.cursor
    (canary,) = first.asset_events
    assert canary.metadata["canary_percent"].value == 10.0
    reg.roll_back_rollout(MODEL, reason="errors in the canary", actor="oncall")
    with build_sensor_context(resources=resources, cursor=cursor) as context:
        after = sensor(context)
    (event,) = after.asset_events
    assert event.asset_key.to_user_string() == f"{P}_serving"
    assert event.metadata["rollout_phase"].value == "ROLLED_BACK"
    assert event.metadata["production_version"].value == 1
    assert event.metadata["canary_version"].value == "none"


def test_a_version_whose_answers_disagree_with_production_fails_staging(
    home: Path, instance: DagsterInstance, spec: ModelSpec, reg: Registry
) -> None:
    data, clf = _onnx(30, 0.05)
    version = reg.register_version(MODEL, data).version
    X = load_breast_cancer_dataset().X[40:80]
    _log_production(home, 1, [1 - int(v) for v in clf.predict(X)], X)
    assert _run(home, instance, spec, "validate", version).success

    rolled = _run(home, instance, spec, "rollout")
    checks = _checks(rolled)
    assert not checks["staging_agreement_check"].passed
    assert checks["staging_error_rate_check"].passed
    assert "agreement with production" in checks["staging_agreement_check"].metadata[
        "reason"].value
    assert not rolled.asset_materializations_for_node(f"{P}_canary_deployment")
    status = reg.get_rollout(MODEL)
    assert status is not None and status.phase.value == "FAILED"
    assert "agreement with production" in status.reason
    assert reg.get_version(MODEL, version).state is State.STAGING
