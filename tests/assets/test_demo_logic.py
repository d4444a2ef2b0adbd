"""The Dagster-free logic of the demo pipeline: data sets, training/export and validation.

Thresholds (measured values with the default seeds in brackets, so each holds with margin):

- breast cancer: accuracy >= 0.90 [0.958 held-out, ROC AUC 0.978], parity 1e-4 [< 1e-6];
- fraud: accuracy >= 0.90 (a majority-class model already gets ~0.95, so this only guards
  against garbage) plus ROC AUC >= 0.75 [0.871; 0.87-0.90 over other data/model seeds]; a
  shuffled-label model has ROC AUC ~0.5 and fails;
- latency: p99 <= 25 ms for one row [~0.01 ms]; generous because CI machines are noisy.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import onnx
import pytest

from assets.demo_data import (
    FRAUD_FEATURES,
    Dataset,
    generate_fraud_transactions,
    load_breast_cancer_dataset,
)
from assets.training import TrainedModel, train_classifier
from assets.validation import (
    CheckOutcome,
    check_accuracy,
    check_latency,
    check_parity,
    check_signature,
    validate_model,
)

LATENCY_BUDGET_MS = 25.0
PARITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def breast_cancer() -> Dataset:
    return load_breast_cancer_dataset()


@pytest.fixture(scope="module")
def fraud() -> Dataset:
    return generate_fraud_transactions()


@pytest.fixture(scope="module")
def bc_model(breast_cancer: Dataset) -> TrainedModel:
    return train_classifier(breast_cancer, seed=0)


@pytest.fixture(scope="module")
def fraud_model(fraud: Dataset) -> TrainedModel:
    return train_classifier(fraud, seed=0)


# -- data sets ---------------------------------------------------------------------------------


def test_breast_cancer_dataset(breast_cancer: Dataset) -> None:
    frame = breast_cancer.frame
    assert frame.shape == (569, 31)
    assert len(breast_cancer.feature_names) == 30
    assert breast_cancer.feature_names[0] == "mean_radius"
    assert "worst_concave_points" in breast_cancer.feature_names
    assert all(n.isidentifier() and n == n.lower() for n in breast_cancer.feature_names)
    assert all(frame[n].dtype == np.float64 for n in breast_cancer.feature_names)
    assert set(frame["label"].unique()) == {0, 1}
    assert breast_cancer.fingerprint() == load_breast_cancer_dataset().fingerprint()


def test_fraud_dataset_shape_and_types(fraud: Dataset) -> None:
    frame = fraud.frame
    assert len(frame) == 20_000
    assert fraud.feature_names == FRAUD_FEATURES
    assert 6 <= len(fraud.feature_names) <= 10
    assert list(frame.columns) == [
        "customer_id", "event_timestamp", *FRAUD_FEATURES, "label", "age_band"
    ]
    assert frame["customer_id"].dtype == np.int64
    assert str(frame["event_timestamp"].dt.tz) == "UTC"
    assert frame["event_timestamp"].is_monotonic_increasing
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert frame["event_timestamp"].min() >= start
    assert frame["event_timestamp"].max() < datetime(2026, 4, 1, tzinfo=UTC)
    features = frame[fraud.feature_names].to_numpy(dtype=np.float32)
    assert np.isfinite(features).all()
    assert 0.03 <= frame["label"].mean() <= 0.08
    assert set(frame["is_foreign"].unique()) <= {0.0, 1.0}
    assert frame["hour_of_day"].between(0, 23).all()
    assert frame["merchant_risk"].between(0, 1).all()


def test_fraud_generator_is_deterministic(fraud: Dataset) -> None:
    again = generate_fraud_transactions()
    assert again.frame.equals(fraud.frame)
    assert again.fingerprint() == fraud.fingerprint()
    other = generate_fraud_transactions(seed=8)
    assert other.fingerprint() != fraud.fingerprint()


def test_fraud_drift_shifts_inputs(fraud: Dataset) -> None:
    drifted = generate_fraud_transactions(drift=0.5)
    assert list(drifted.frame.columns) == list(fraud.frame.columns)
    assert (drifted.frame.dtypes == fraud.frame.dtypes).all()
    ratio = drifted.frame["amount"].mean() / fraud.frame["amount"].mean()
    assert ratio == pytest.approx(1.5, rel=0.02)
    assert drifted.frame["is_foreign"].mean() > fraud.frame["is_foreign"].mean() + 0.05
    assert drifted.frame["merchant_risk"].mean() > fraud.frame["merchant_risk"].mean() + 0.05
    assert drifted.fingerprint() != fraud.fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_rows": 0}, "n_rows"),
        ({"n_customers": -1}, "n_customers"),
        ({"days": 0}, "days"),
        ({"drift": 1.5}, "drift"),
        ({"drift": float("nan")}, "drift"),
        ({"seed": -1}, "seed"),
        ({"n_rows": 10.5}, "n_rows"),
        ({"start": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_fraud_generator_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_fraud_transactions(**kwargs)  # type: ignore[arg-type]


# -- training and export -----------------------------------------------------------------------


def test_trained_model_is_plain_data(bc_model: TrainedModel) -> None:
    model = onnx.load_from_string(bc_model.onnx_bytes)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    assert bc_model.holdout_X.dtype == np.float32
    assert bc_model.holdout_X.shape == (143, 30)
    assert bc_model.native_proba.shape == (143, 2)
    assert bc_model.params["n_estimators"] == 100
    assert bc_model.params["dataset_fingerprint"] == load_breast_cancer_dataset().fingerprint()
    assert bc_model.train_metrics["train_accuracy"] > 0.95
    for value in vars(bc_model).values():
        assert type(value).__module__.split(".")[0] in {"builtins", "numpy"}


def test_onnx_bytes_are_deterministic(breast_cancer: Dataset, bc_model: TrainedModel) -> None:
    again = train_classifier(breast_cancer, seed=0)
    assert again.onnx_bytes == bc_model.onnx_bytes
    np.testing.assert_array_equal(again.native_proba, bc_model.native_proba)


# -- validation --------------------------------------------------------------------------------


def test_breast_cancer_model_passes_all_checks(bc_model: TrainedModel) -> None:
    report = validate_model(
        bc_model,
        accuracy_threshold=0.9,
        min_auc=None,
        parity_tolerance=PARITY_TOLERANCE,
        latency_budget_ms=LATENCY_BUDGET_MS,
    )
    assert [o.name for o in report.outcomes] == ["signature", "accuracy", "parity", "latency"]
    assert report.passed, [o.description for o in report.outcomes]
    assert report.failed == []
    accuracy = report.outcome("accuracy").metadata
    assert accuracy["n"] == 143
    assert float(accuracy["accuracy"]) >= 0.9
    assert float(accuracy["roc_auc"]) >= 0.95


def test_fraud_model_passes_with_auc_criterion(fraud_model: TrainedModel) -> None:
    report = validate_model(
        fraud_model,
        accuracy_threshold=0.9,
        min_auc=0.75,
        parity_tolerance=PARITY_TOLERANCE,
        latency_budget_ms=LATENCY_BUDGET_MS,
    )
    assert report.passed, [o.description for o in report.outcomes]
    assert float(report.outcome("accuracy").metadata["roc_auc"]) >= 0.8


def test_shuffled_labels_model_fails_accuracy(fraud: Dataset, breast_cancer: Dataset) -> None:
    broken = train_classifier(fraud, seed=0, shuffle_labels=True, params={"n_estimators": 50})
    outcome = check_accuracy(broken.onnx_bytes, broken.holdout_X, broken.holdout_y, 0.9, 0.75)
    assert not outcome.passed
    assert "ROC AUC" in outcome.description
    assert abs(float(outcome.metadata["roc_auc"]) - 0.5) < 0.1

    broken_bc = train_classifier(breast_cancer, seed=0, shuffle_labels=True)
    outcome = check_accuracy(broken_bc.onnx_bytes, broken_bc.holdout_X, broken_bc.holdout_y, 0.9)
    assert not outcome.passed
    assert float(outcome.metadata["accuracy"]) < 0.8


def test_signature_check_catches_mismatches(bc_model: TrainedModel) -> None:
    ok = check_signature(bc_model.onnx_bytes, bc_model.feature_names, bc_model.holdout_X)
    assert ok.passed
    assert ok.metadata["input_datatype"] == "FP32"
    assert ok.metadata["outputs"] == "label,probabilities"

    narrow = check_signature(bc_model.onnx_bytes, bc_model.feature_names[:29], bc_model.holdout_X)
    assert not narrow.passed
    garbage = check_signature(b"not onnx", bc_model.feature_names, bc_model.holdout_X)
    assert not garbage.passed
    assert "errored" in garbage.description


def test_parity_outcome_metadata(bc_model: TrainedModel) -> None:
    outcome = check_parity(bc_model.onnx_bytes, bc_model.holdout_X, bc_model.native_proba)
    assert outcome.passed
    assert set(outcome.metadata) >= {"max_abs_diff", "mean_abs_diff", "tolerance", "n"}
    assert float(outcome.metadata["max_abs_diff"]) <= PARITY_TOLERANCE

    skewed = bc_model.native_proba.copy()
    skewed[0] = skewed[0][::-1] if abs(skewed[0, 0] - 0.5) > 0.01 else [0.0, 1.0]
    failed = check_parity(bc_model.onnx_bytes, bc_model.holdout_X, skewed)
    assert not failed.passed
    assert failed.metadata["n_over_tolerance"] == 1


def test_latency_outcome_metadata(bc_model: TrainedModel) -> None:
    outcome = check_latency(bc_model.onnx_bytes, 30, LATENCY_BUDGET_MS, runs=200)
    assert outcome.passed, outcome.description
    meta = outcome.metadata
    assert meta["runs"] == 200
    assert 0 < float(meta["p50_ms"]) <= float(meta["p99_ms"]) <= float(meta["max_ms"])
    assert meta["budget_p99_ms"] == LATENCY_BUDGET_MS

    impossible = check_latency(bc_model.onnx_bytes, 30, 0.0, runs=20)
    assert not impossible.passed


def test_check_outcome_metadata_types(bc_model: TrainedModel) -> None:
    report = validate_model(
        bc_model,
        accuracy_threshold=0.9,
        min_auc=0.9,
        parity_tolerance=PARITY_TOLERANCE,
        latency_budget_ms=LATENCY_BUDGET_MS,
    )
    for outcome in report.outcomes:
        assert isinstance(outcome, CheckOutcome)
        assert all(isinstance(v, float | int | str) for v in outcome.metadata.values())
