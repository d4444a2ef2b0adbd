"""Train a demo classifier and export it to ONNX (no sklearn object leaves this module).

:func:`train_classifier` does a stratified split, fits a scikit-learn
``GradientBoostingClassifier`` and converts it with skl2onnx to a model with one FP32 input
``"input"`` of shape ``[None, n_features]`` and two outputs: ``"label"`` (int64 ``[N]``) and
``"probabilities"`` (float32 ``[N, 2]``, no ZipMap). The result, :class:`TrainedModel`, carries the
ONNX bytes, the held-out data and the native model's probabilities on it (for the parity check),
so it can be passed between processes without pickling an estimator.

The export is deterministic: the same data set, seed and params give the same ONNX bytes (the
graph name, which skl2onnx would otherwise make a random UUID, and the producer fields are fixed).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from assets.demo_data import Dataset

INPUT_NAME = "input"
LABEL_OUTPUT = "label"
PROBA_OUTPUT = "probabilities"
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
GRAPH_NAME = "roost_classifier"

DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 3,
    "learning_rate": 0.1,
    "subsample": 1.0,
}


@dataclass
class TrainedModel:
    """An exported model plus what validation needs; plain data only (no estimator)."""

    onnx_bytes: bytes
    feature_names: list[str]
    params: dict[str, Any]
    holdout_X: np.ndarray  # float32 [n, n_features]
    holdout_y: np.ndarray  # int64 [n]
    native_proba: np.ndarray  # float64 [n, 2], the sklearn model's predict_proba on holdout_X
    train_metrics: dict[str, float]


def _to_onnx(model: Any, n_features: int) -> tuple[bytes, dict[str, int]]:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        # skl2onnx may warn about opset/ir-version choices; the result is checked by the caller.
        warnings.simplefilter("ignore", UserWarning)
        onx = convert_sklearn(
            model,
            name=GRAPH_NAME,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            target_opset=dict(TARGET_OPSET),
            options={id(model): {"zipmap": False}},
        )
    # Rename the outputs skl2onnx calls output_label / output_probability.
    renames = {"output_label": LABEL_OUTPUT, "output_probability": PROBA_OUTPUT}
    for node in onx.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for out in onx.graph.output:
        out.name = renames.get(out.name, out.name)
    onx.doc_string = ""
    onx.graph.doc_string = ""
    onx.producer_name = "roost"
    onx.producer_version = "1"
    onx.domain = "ai.roost"
    onx.model_version = 1
    del onx.metadata_props[:]
    # skl2onnx keeps each domain's opset at the lowest version its operators need (<= target).
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in onx.opset_import}
    return bytes(onx.SerializeToString(deterministic=True)), opsets


def train_classifier(
    dataset: Dataset,
    *,
    seed: int = 0,
    shuffle_labels: bool = False,
    test_size: float = 0.25,
    params: dict[str, Any] | None = None,
) -> TrainedModel:
    """Fit a gradient-boosted classifier on ``dataset`` and export it to ONNX.

    ``params`` override :data:`DEFAULT_PARAMS` (any ``GradientBoostingClassifier`` argument but
    ``random_state``, which is ``seed``). ``shuffle_labels=True`` permutes the *training* labels
    (seeded) to produce a deliberately useless model; the held-out labels stay true.
    """
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import accuracy_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    if params and "random_state" in params:
        raise ValueError("pass the seed as seed=, not params['random_state']")
    missing = [c for c in [*dataset.feature_names, dataset.label] if c not in dataset.frame]
    if missing:
        raise ValueError(f"data set {dataset.name!r} lacks columns {missing}")

    X = dataset.frame[dataset.feature_names].to_numpy(dtype=np.float32)
    y = dataset.frame[dataset.label].to_numpy(dtype=np.int64)
    classes = np.unique(y)
    if classes.tolist() != [0, 1]:
        raise ValueError(f"expected a binary 0/1 label, got classes {classes.tolist()}")
    if not np.isfinite(X).all():
        raise ValueError(f"data set {dataset.name!r} has non-finite feature values (as float32)")

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y
    )
    if shuffle_labels:
        y_train = np.random.default_rng(seed).permutation(y_train)

    used = {**DEFAULT_PARAMS, **(params or {})}
    model = GradientBoostingClassifier(random_state=seed, **used)
    started = time.perf_counter()
    model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - started

    train_proba = model.predict_proba(X_train)
    native_proba = np.asarray(model.predict_proba(X_test), dtype=np.float64)
    onnx_bytes, opsets = _to_onnx(model, X.shape[1])

    return TrainedModel(
        onnx_bytes=onnx_bytes,
        feature_names=list(dataset.feature_names),
        params={
            "estimator": "GradientBoostingClassifier",
            **used,
            "seed": seed,
            "test_size": test_size,
            "shuffle_labels": shuffle_labels,
            "onnx_opset": opsets.get("ai.onnx", 0),
            "onnx_ml_opset": opsets.get("ai.onnx.ml", 0),
            "dataset": dataset.name,
            "dataset_fingerprint": dataset.fingerprint(),
        },
        holdout_X=np.ascontiguousarray(X_test, dtype=np.float32),
        holdout_y=np.asarray(y_test, dtype=np.int64),
        native_proba=native_proba,
        train_metrics={
            "train_accuracy": float(accuracy_score(y_train, model.predict(X_train))),
            "train_roc_auc": float(roc_auc_score(y_train, train_proba[:, 1])),
            "n_train": float(len(y_train)),
            "n_holdout": float(len(y_test)),
            "positive_rate": float(y.mean()),
            "fit_seconds": float(fit_seconds),
        },
    )
