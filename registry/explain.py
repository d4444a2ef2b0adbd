"""Per-feature attributions for an ONNX version: SHAP's permutation explainer over the session.

**Background sample.** An explanation compares a row with a *background* of typical rows (what
"a feature being absent" means). Each version that can be explained carries one: at most
``explain_background_rows`` rows of its held-out / calibration data, stored as a ``.npy``
(``allow_pickle=False``) in the content-addressed artifact store and referenced from the
version's metrics (:data:`BACKGROUND_METRIC`: its sha256; :data:`BACKGROUND_ROWS_METRIC`). It
is attached by ``roost quantize`` (for the new version) or ``roost explain-background``; loads
re-hash the bytes like any artifact.

**Method.** ``shap.explainers.Permutation`` with an ``Independent`` masker over the background,
calling the version's ONNX Runtime session: model-agnostic, exact for additive models (a linear
model's attribution of feature *i* is ``w_i * (x_i - mean(background_i))``) and bounded by
``max_evals`` model evaluations per row (each of ``background rows`` rows). Tree ensembles
(``ai.onnx.ml`` TreeEnsembleClassifier / Regressor) use the same method: SHAP's TreeExplainer
reads native model objects, the registry stores only ONNX, and no converter from ONNX tree
ensembles to SHAP's tree format exists in SHAP; the permutation method is slower for them but
correct. :func:`is_tree_ensemble` says which kind a graph is (the response's ``model_kind``).

**Target.** For a 2-D output with k columns the attribution is for one column per row: the
request's ``target`` if given, else column 1 when k == 2 (the positive class), else the row's
largest column (the predicted class). 1-column outputs explain that column.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry.errors import Conflict, DeadlineExceeded, InvalidRequest

BACKGROUND_METRIC = "explain.background_sha256"
BACKGROUND_ROWS_METRIC = "explain.background_rows"
DEFAULT_BACKGROUND_ROWS = 100
METHOD = "shap.PermutationExplainer"


def background_bytes(
    rows: np.ndarray, limit: int = DEFAULT_BACKGROUND_ROWS, seed: int = 0
) -> bytes:
    """At most ``limit`` rows of ``rows`` (a seeded sample) as ``.npy`` bytes (FP32, no pickle)."""
    X = np.asarray(rows, dtype=np.float32)
    if X.ndim != 2 or not len(X):
        raise InvalidRequest(f"background: expected a non-empty 2-D array, got shape {X.shape}")
    if len(X) > limit:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), limit, replace=False))]
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(X), allow_pickle=False)
    return buffer.getvalue()


def attach_background(
    registry: Any, model: str, version: int, rows: np.ndarray,
    limit: int = DEFAULT_BACKGROUND_ROWS,
) -> str:
    """Store a background sample for ``model`` ``version``; its sha256 (in the metrics)."""
    info = registry.get_version(model, version)
    data = background_bytes(rows, limit)
    width = info.signature.inputs[0].shape[-1] if len(info.signature.inputs) == 1 else None
    sample = decode_background(data)
    if width is None or width not in (-1, sample.shape[1]):
        raise InvalidRequest(
            f"background: {model} version {version} does not take one [N, {sample.shape[1]}] "
            "input"
        )
    digest: str = registry.artifacts.put(data)
    registry.update_metrics(
        model, version, {BACKGROUND_METRIC: digest, BACKGROUND_ROWS_METRIC: int(len(sample))}
    )
    return digest


def decode_background(data: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    return np.asarray(array, dtype=np.float32)


def background_digest(info: Any) -> str:
    """The version's background sha256; Conflict (409) naming the fix when it has none."""
    digest = info.metrics.get(BACKGROUND_METRIC)
    if not isinstance(digest, str) or not digest:
        raise Conflict(
            f"{info.model} version {info.version} has no explanation background sample; "
            f"attach one with `roost explain-background {info.model} {info.version}`"
        )
    return digest


def is_tree_ensemble(onnx_bytes: bytes) -> bool:
    """Whether the graph holds an ``ai.onnx.ml`` TreeEnsemble* node (reported, same method)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    return any(node.op_type.startswith("TreeEnsemble") for node in graph.node)


@dataclass(frozen=True)
class Attributions:
    """Per-row attributions (``values`` [rows, features]) of ``output`` column ``targets``."""

    output: str
    values: np.ndarray
    base_values: np.ndarray
    targets: list[int | None]
    max_evals: int

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "target": self.targets[i],
                "base_value": float(self.base_values[i]),
                "attributions": [float(v) for v in self.values[i]],
            }
            for i in range(self.values.shape[0])
        ]


def explain_output(session: Any) -> str:
    """The output explained: ``probabilities`` if present, else the first float output."""
    outputs = session.get_outputs()
    names = [o.name for o in outputs]
    if "probabilities" in names:
        return "probabilities"
    for out in outputs:
        if "float" in out.type or "double" in out.type:
            return str(out.name)
    raise InvalidRequest("model: no floating-point output to explain")


def min_evals(n_features: int) -> int:
    """The fewest evaluations the permutation method needs: one forward and backward pass."""
    return 2 * n_features + 1


def explain(
    session: Any,
    X: np.ndarray,
    background: np.ndarray,
    *,
    max_evals: int,
    timeout_s: float,
    target: int | None = None,
) -> Attributions:
    """Attributions of each row of ``X``; DeadlineExceeded once ``timeout_s`` has passed."""
    import shap

    input_meta = session.get_inputs()[0]
    dtype = np.float64 if "double" in input_meta.type else np.float32
    output = explain_output(session)
    deadline = time.monotonic() + timeout_s

    def model(Z: np.ndarray) -> np.ndarray:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                f"explanation took longer than ROOST_EXPLAIN_TIMEOUT_S={timeout_s:g} s; ask for "
                "fewer rows or a smaller max_evals"
            )
        out = session.run([output], {input_meta.name: np.asarray(Z, dtype=dtype)})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(Z), -1)

    if X.shape[1] != background.shape[1]:
        raise InvalidRequest(
            f"inputs: rows have {X.shape[1]} features, the background sample {background.shape[1]}"
        )
    width = model(X[:1]).shape[1]
    if target is not None and not 0 <= target < width:
        raise InvalidRequest(f"target: expected a column of {output} in [0, {width}), got {target}")
    predicted = model(X)
    if target is not None:
        targets: list[int | None] = [target] * len(X)
    elif width == 1:
        targets = [None] * len(X)
    elif width == 2:
        targets = [1] * len(X)
    else:
        targets = [int(i) for i in predicted.argmax(axis=1)]
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.explainers.Permutation(model, masker, seed=0)
    result = explainer(np.asarray(X, dtype=np.float64), max_evals=max_evals, silent=True)
    values = np.asarray(result.values, dtype=np.float64).reshape(len(X), X.shape[1], -1)
    base = np.asarray(result.base_values, dtype=np.float64).reshape(len(X), -1)
    cols = [t or 0 for t in targets]
    rows = np.arange(len(X))
    return Attributions(output, values[rows, :, cols], base[rows, cols], targets, max_evals)
