"""The four validation criteria a trained demo model must meet before it is registered.

Each check is a pure function of the ONNX bytes and held-out data returning a
:class:`CheckOutcome`; an exception inside a check (a model ONNX Runtime cannot load, say) becomes a
failed outcome whose description carries the error, so a validation run always reports all four.

- ``signature``: one FP32 2-D input as wide as the data, outputs ``label`` and ``probabilities``;
- ``accuracy``: accuracy (and optionally ROC AUC) of ONNX Runtime's predictions on held-out rows;
- ``parity``: ONNX probabilities match the native scikit-learn ones within a tolerance;
- ``latency``: single-row p99 latency of a one-thread CPU session within a budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assets.training import INPUT_NAME, LABEL_OUTPUT, PROBA_OUTPUT, TrainedModel
from registry.signature import signature_from_onnx

Metadata = dict[str, float | int | str]


@dataclass
class CheckOutcome:
    """The result of one validation criterion."""

    name: str
    passed: bool
    description: str
    metadata: Metadata = field(default_factory=dict)


@dataclass
class ValidationReport:
    """All outcomes of a validation run; it passes when every check passes."""

    outcomes: list[CheckOutcome]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def failed(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.passed]

    def outcome(self, name: str) -> CheckOutcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)


def _guarded(name: str, check: Callable[[], CheckOutcome]) -> CheckOutcome:
    try:
        return check()
    except Exception as exc:  # a validation gate reports errors as failures
        return CheckOutcome(
            name, False, f"{name} check errored: {type(exc).__name__}: {exc}", {"error": str(exc)}
        )


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _predict(onnx_bytes: bytes, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime's (labels, probabilities) for a float32 batch."""
    session = _session(onnx_bytes)
    feed = {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)}
    labels, proba = session.run([LABEL_OUTPUT, PROBA_OUTPUT], feed)
    return np.asarray(labels).reshape(-1), np.asarray(proba, dtype=np.float64)


def check_signature(
    onnx_bytes: bytes, feature_names: list[str], holdout_X: np.ndarray
) -> CheckOutcome:
    """The model has one FP32 ``[batch, n_features]`` input matching the data, and the outputs
    ``label`` (INT64) and ``probabilities`` (FP32, two columns)."""

    def run() -> CheckOutcome:
        X = np.asarray(holdout_X)
        problems: list[str] = []
        if X.ndim != 2:
            problems.append(f"held-out data is {X.ndim}-D, expected 2-D")
        width = int(X.shape[1]) if X.ndim == 2 else -1
        if width != len(feature_names):
            problems.append(f"data has {width} columns but {len(feature_names)} feature names")
        try:
            sig = signature_from_onnx(onnx_bytes, feature_names)
        except ValueError as exc:
            sig = signature_from_onnx(onnx_bytes)
            problems.append(str(exc))
        meta: Metadata = {
            "n_inputs": len(sig.inputs),
            "n_features": len(feature_names),
            "data_width": width,
            "outputs": ",".join(t.name for t in sig.outputs),
        }
        if len(sig.inputs) != 1:
            problems.append(f"expected exactly one input, found {len(sig.inputs)}")
        else:
            spec = sig.inputs[0]
            meta.update(
                input_name=spec.name,
                input_datatype=spec.datatype,
                input_shape=str(list(spec.shape)),
            )
            if spec.datatype != "FP32":
                problems.append(f"input '{spec.name}' is {spec.datatype}, expected FP32")
            if len(spec.shape) != 2:
                problems.append(f"input '{spec.name}' has shape {list(spec.shape)}, expected 2-D")
            elif spec.shape[1] not in (-1, width):
                problems.append(
                    f"input '{spec.name}' has {spec.shape[1]} columns, data has {width}"
                )
        expected = {LABEL_OUTPUT: "INT64", PROBA_OUTPUT: "FP32"}
        for out_name, datatype in expected.items():
            out = sig.output(out_name)
            if out is None:
                problems.append(f"output '{out_name}' is missing")
            elif out.datatype != datatype:
                problems.append(f"output '{out_name}' is {out.datatype}, expected {datatype}")
            elif out_name == PROBA_OUTPUT and (len(out.shape) != 2 or out.shape[1] not in (-1, 2)):
                problems.append(f"output '{out_name}' has shape {list(out.shape)}, expected [N, 2]")
        if problems:
            return CheckOutcome("signature", False, "; ".join(problems), meta)
        return CheckOutcome(
            "signature",
            True,
            f"one FP32 input of width {width}; outputs {LABEL_OUTPUT} and {PROBA_OUTPUT}",
            meta,
        )

    return _guarded("signature", run)


def check_accuracy(
    onnx_bytes: bytes,
    holdout_X: np.ndarray,
    holdout_y: np.ndarray,
    threshold: float,
    min_auc: float | None = None,
) -> CheckOutcome:
    """Accuracy of ONNX Runtime's ``label`` output on held-out rows must reach ``threshold``;
    with ``min_auc`` set, the ROC AUC of the positive-class probability must reach it too.

    On imbalanced data (the fraud set is ~95% negative) accuracy alone is weak: a model that
    always predicts the majority class reaches it, so set ``min_auc`` there.
    """

    def run() -> CheckOutcome:
        from sklearn.metrics import roc_auc_score

        y = np.asarray(holdout_y).reshape(-1)
        labels, proba = _predict(onnx_bytes, holdout_X)
        if labels.shape[0] != y.shape[0] or proba.shape != (y.shape[0], 2):
            raise ValueError(
                f"prediction shapes {labels.shape}/{proba.shape} do not match {y.shape[0]} labels"
            )
        accuracy = float(np.mean(labels == y))
        auc = float(roc_auc_score(y, proba[:, 1])) if np.unique(y).size == 2 else math.nan
        meta: Metadata = {
            "accuracy": accuracy,
            "roc_auc": auc,
            "threshold": float(threshold),
            "n": int(y.shape[0]),
            "positive_rate": float(np.mean(y == 1)),
        }
        if min_auc is not None:
            meta["min_auc"] = float(min_auc)
        problems = []
        if not accuracy >= threshold:
            problems.append(f"accuracy {accuracy:.4f} < threshold {threshold:.4f}")
        if min_auc is not None and not auc >= min_auc:  # NaN AUC fails
            problems.append(f"ROC AUC {auc:.4f} < minimum {min_auc:.4f}")
        summary = f"accuracy {accuracy:.4f}, ROC AUC {auc:.4f} on {y.shape[0]} held-out rows"
        if problems:
            return CheckOutcome("accuracy", False, f"{summary}: " + "; ".join(problems), meta)
        return CheckOutcome("accuracy", True, summary, meta)

    return _guarded("accuracy", run)


def check_parity(
    onnx_bytes: bytes,
    holdout_X: np.ndarray,
    native_proba: np.ndarray,
    tolerance: float = 1e-4,
) -> CheckOutcome:
    """ONNX Runtime's probabilities differ from the native model's by at most ``tolerance``."""

    def run() -> CheckOutcome:
        _, proba = _predict(onnx_bytes, holdout_X)
        native = np.asarray(native_proba, dtype=np.float64)
        if proba.shape != native.shape:
            return CheckOutcome(
                "parity",
                False,
                f"ONNX probabilities have shape {proba.shape}, native ones {native.shape}",
                {"tolerance": float(tolerance), "n": int(native.shape[0])},
            )
        diff = np.abs(proba - native)
        max_diff = float(diff.max()) if diff.size else 0.0
        meta: Metadata = {
            "max_abs_diff": max_diff,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "tolerance": float(tolerance),
            "n": int(native.shape[0]),
            "n_over_tolerance": int(np.any(diff > tolerance, axis=1).sum()),
        }
        passed = bool(np.isfinite(max_diff) and max_diff <= tolerance)
        verb = "<=" if passed else ">"
        return CheckOutcome(
            "parity",
            passed,
            f"max |ONNX - native| probability difference {max_diff:.3g} {verb} {tolerance:.3g}",
            meta,
        )

    return _guarded("parity", run)


def check_latency(
    onnx_bytes: bytes,
    n_features: int,
    budget_p99_ms: float,
    runs: int = 300,
    warmup: int = 20,
    seed: int = 0,
    input_name: str = INPUT_NAME,
    dtype: Any = np.float32,
) -> CheckOutcome:
    """Single-row latency of a one-thread CPU ONNX Runtime session: p99 must be within budget.

    Rows are random normal float32 values (fixed ``seed``); ``warmup`` untimed calls come first.
    """

    def run() -> CheckOutcome:
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
        session = _session(onnx_bytes)
        rows = np.random.default_rng(seed).normal(size=(runs, 1, n_features)).astype(dtype)
        for i in range(max(warmup, 0)):
            session.run(None, {input_name: rows[i % runs]})
        timings = np.empty(runs, dtype=np.float64)
        for i in range(runs):
            started = time.perf_counter_ns()
            session.run(None, {input_name: rows[i]})
            timings[i] = (time.perf_counter_ns() - started) / 1e6
        p50, p99 = (float(v) for v in np.percentile(timings, [50, 99]))
        meta: Metadata = {
            "p50_ms": p50,
            "p99_ms": p99,
            "mean_ms": float(timings.mean()),
            "max_ms": float(timings.max()),
            "budget_p99_ms": float(budget_p99_ms),
            "runs": int(runs),
            "intra_op_num_threads": 1,
            "provider": "CPUExecutionProvider",
        }
        passed = p99 <= budget_p99_ms
        verb = "within" if passed else "over"
        return CheckOutcome(
            "latency",
            passed,
            f"single-row p50 {p50:.3f} ms, p99 {p99:.3f} ms ({verb} the {budget_p99_ms} ms budget)",
            meta,
        )

    return _guarded("latency", run)


def validate_model(
    trained: TrainedModel,
    *,
    accuracy_threshold: float,
    min_auc: float | None,
    parity_tolerance: float,
    latency_budget_ms: float,
) -> ValidationReport:
    """Run all four checks on a trained model's ONNX export and held-out data."""
    return ValidationReport(
        [
            check_signature(trained.onnx_bytes, trained.feature_names, trained.holdout_X),
            check_accuracy(
                trained.onnx_bytes,
                trained.holdout_X,
                trained.holdout_y,
                accuracy_threshold,
                min_auc=min_auc,
            ),
            check_parity(
                trained.onnx_bytes, trained.holdout_X, trained.native_proba, parity_tolerance
            ),
            check_latency(trained.onnx_bytes, len(trained.feature_names), latency_budget_ms),
        ]
    )
