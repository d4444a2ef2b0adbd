"""Validation criteria for an ONNX file a user brings (no native model to compare with).

- ``signature``: one numeric 2-D input as wide as the held-out features, and a label output
  (``label`` or the first integer output) or a probabilities output (``probabilities`` or the
  first 2-D float output) the metric can be computed from;
- ``metric``: accuracy or ROC AUC on the held-out rows against the spec's minimum;
- ``latency``: single-row p99 of a one-thread CPU session within the budget;
- ``schema_compat``: the candidate accepts what production accepts (see :mod:`assets.compat`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from assets.compat import schema_differences
from assets.spec import ValidationThresholds
from assets.validation import CheckOutcome, Metadata, _guarded, _session, check_latency
from registry import Signature, signature_from_onnx
from registry.signature import OIP_TO_NUMPY

INTEGER_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
FLOAT_TYPES = {"FP16", "FP32", "FP64"}


@dataclass(frozen=True)
class ModelIO:
    """Which tensors of a classifier the checks use."""

    input_name: str
    input_datatype: str
    label_output: str | None
    proba_output: str | None


def model_io(sig: Signature) -> ModelIO:
    """The input and the label / probabilities outputs of ``sig`` (ValueError if unusable)."""
    if len(sig.inputs) != 1:
        raise ValueError(f"expected exactly one input, found {len(sig.inputs)}")
    label = sig.output("label") or next(
        (t for t in sig.outputs if t.datatype in INTEGER_TYPES), None
    )
    proba = sig.output("probabilities") or next(
        (t for t in sig.outputs if t.datatype in FLOAT_TYPES and len(t.shape) == 2), None
    )
    return ModelIO(
        sig.inputs[0].name,
        sig.inputs[0].datatype,
        label.name if label else None,
        proba.name if proba else None,
    )


def check_onnx_signature(onnx_bytes: bytes, feature_names: list[str]) -> CheckOutcome:
    def run() -> CheckOutcome:
        sig = signature_from_onnx(onnx_bytes)
        problems: list[str] = []
        meta: Metadata = {
            "inputs": ",".join(t.name for t in sig.inputs),
            "outputs": ",".join(t.name for t in sig.outputs),
            "n_features": len(feature_names),
        }
        io = model_io(sig)
        spec = sig.inputs[0]
        meta.update(input_datatype=spec.datatype, input_shape=str(list(spec.shape)))
        if spec.datatype not in FLOAT_TYPES | INTEGER_TYPES:
            problems.append(f"input '{spec.name}' is {spec.datatype}, expected a number type")
        if len(spec.shape) != 2:
            problems.append(f"input '{spec.name}' has shape {list(spec.shape)}, expected 2-D")
        elif spec.shape[1] not in (-1, len(feature_names)):
            problems.append(
                f"input '{spec.name}' has {spec.shape[1]} columns, "
                f"the held-out data has {len(feature_names)} features"
            )
        if io.label_output is None and io.proba_output is None:
            problems.append("no label (integer) or probabilities (2-D float) output")
        if problems:
            return CheckOutcome("signature", False, "; ".join(problems), meta)
        return CheckOutcome(
            "signature", True, f"input '{spec.name}' {spec.datatype} {list(spec.shape)}", meta
        )

    return _guarded("signature", run)


def _predict(onnx_bytes: bytes, X: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    io = model_io(signature_from_onnx(onnx_bytes))
    session = _session(onnx_bytes)
    feed = {io.input_name: np.ascontiguousarray(X, dtype=OIP_TO_NUMPY[io.input_datatype])}
    names = [n for n in (io.label_output, io.proba_output) if n is not None]
    results = dict(zip(names, session.run(names, feed), strict=True))
    labels = results.get(io.label_output) if io.label_output else None
    proba = results.get(io.proba_output) if io.proba_output else None
    return (
        None if labels is None else np.asarray(labels).reshape(-1),
        None if proba is None else np.asarray(proba, dtype=np.float64),
    )


def check_metric(
    onnx_bytes: bytes, X: np.ndarray, y: np.ndarray, thresholds: ValidationThresholds
) -> CheckOutcome:
    """The spec's metric (accuracy or ROC AUC) on held-out rows reaches its minimum."""

    def run() -> CheckOutcome:
        from sklearn.metrics import roc_auc_score

        labels, proba = _predict(onnx_bytes, X)
        truth = np.asarray(y).reshape(-1)
        if labels is None and proba is not None:
            labels = proba.argmax(axis=1)
        meta: Metadata = {
            "metric": thresholds.metric,
            "minimum": thresholds.minimum,
            "n": int(truth.shape[0]),
        }
        if labels is not None:
            meta["accuracy"] = float(np.mean(labels == truth))
        if proba is not None and proba.shape[1] == 2 and np.unique(truth).size == 2:
            meta["roc_auc"] = float(roc_auc_score(truth, proba[:, 1]))
        key = "roc_auc" if thresholds.metric == "auc" else "accuracy"
        value = float(meta.get(key, math.nan))
        problems = []
        if not value >= thresholds.minimum:  # NaN fails
            problems.append(f"{thresholds.metric} {value:.4f} < minimum {thresholds.minimum:.4f}")
        if thresholds.min_auc is not None:
            auc = float(meta.get("roc_auc", math.nan))
            meta["min_auc"] = thresholds.min_auc
            if not auc >= thresholds.min_auc:
                problems.append(f"ROC AUC {auc:.4f} < minimum {thresholds.min_auc:.4f}")
        meta["value"] = value
        summary = f"{thresholds.metric} {value:.4f} on {truth.shape[0]} held-out rows"
        if problems:
            return CheckOutcome("metric", False, f"{summary}: " + "; ".join(problems), meta)
        return CheckOutcome("metric", True, summary, meta)

    return _guarded("metric", run)


def check_onnx_latency(onnx_bytes: bytes, n_features: int, budget_ms: float) -> CheckOutcome:
    """Single-row p99 latency within budget (the model's own input name and datatype)."""
    try:
        io = model_io(signature_from_onnx(onnx_bytes))
    except Exception as exc:  # reported as a failed check, like every other error
        return CheckOutcome("latency", False, f"latency check errored: {exc}", {"error": str(exc)})
    return check_latency(
        onnx_bytes,
        n_features,
        budget_ms,
        input_name=io.input_name,
        dtype=OIP_TO_NUMPY[io.input_datatype],
    )


def check_schema_compat(candidate: Signature, production: Signature | None,
                        production_version: int | None) -> CheckOutcome:
    """The candidate accepts every request production accepts and keeps its outputs."""
    if production is None:
        return CheckOutcome(
            "schema_compat", True, "no version in production to compare with",
            {"production_version": "none"},
        )
    diffs = schema_differences(production, candidate)
    meta: Metadata = {
        "production_version": int(production_version or 0),
        "differences": "\n".join(diffs) or "none",
        "n_differences": len(diffs),
    }
    if diffs:
        return CheckOutcome(
            "schema_compat", False,
            f"incompatible with production version {production_version}: " + "; ".join(diffs),
            meta,
        )
    return CheckOutcome(
        "schema_compat", True, f"compatible with production version {production_version}", meta
    )
