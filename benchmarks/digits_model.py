"""The batching benchmark's model: a wide MLP trained on scikit-learn's digits, exported to ONNX.

scikit-learn's bundled digits data (1,797 8x8 images, 64 features scaled to [0, 1], 10 classes)
trains an ``MLPClassifier`` with wide hidden layers, so that one single-row call costs a few
hundred microseconds in ONNX Runtime (one intra-op thread): a model whose compute dominates the
per-request overhead, where merging requests into one batched call pays. Exported with skl2onnx,
ZipMap off: input ``input`` FP32 [N, 64] -> ``label`` INT64 [N], ``probabilities`` FP32 [N, 10].
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

MODEL_NAME = "digits-mlp"


def train_digits_mlp(
    hidden: tuple[int, ...] = (2048, 2048), max_iter: int = 10, seed: int = 0
) -> tuple[bytes, dict[str, Any]]:
    """(ONNX bytes, facts about the model: sizes, accuracy, training seconds, a sample row)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=seed, stratify=labels
    )
    started = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    trained_s = time.perf_counter() - started
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, features.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    data = onx.SerializeToString()
    return data, {
        "hidden_layer_sizes": list(hidden),
        "max_iter": max_iter,
        "parameters": int(sum(w.size for w in clf.coefs_) + sum(b.size for b in clf.intercepts_)),
        "onnx_bytes": len(data),
        "train_seconds": trained_s,
        "test_accuracy": float(clf.score(x_test, y_test)),
        "sample_row": x_test[0].tolist(),
    }


def request_body(row: list[float]) -> bytes:
    """One-row OIP v2 JSON request for the digits model."""
    import orjson

    return orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(row)], "data": row}]}
    )


def time_onnxruntime(data: bytes, row: list[float], batch_sizes: tuple[int, ...] = (1, 32),
                     calls: int = 300) -> dict[str, dict[str, float]]:
    """Median ``session.run`` time per call and per row (1 intra-op thread), per batch size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    out: dict[str, dict[str, float]] = {}
    for size in batch_sizes:
        feeds = {"input": np.tile(np.asarray(row, np.float32), (size, 1))}
        for _ in range(20):
            session.run(None, feeds)
        samples = []
        for _ in range(calls):
            start = time.perf_counter_ns()
            session.run(None, feeds)
            samples.append(time.perf_counter_ns() - start)
        median_us = float(np.median(samples)) / 1000
        out[str(size)] = {"median_us_per_call": median_us, "median_us_per_row": median_us / size}
    return out
