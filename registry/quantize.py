"""Quantize an ONNX model (INT8 dynamic / static, or FP16) and measure what it costs and saves.

Pure functions of ONNX bytes and arrays; :mod:`assets.quantize` registers the result as a new
version with lineage to its source.

* ``dynamic``: :func:`onnxruntime.quantization.quantize_dynamic`, INT8 weights, activations
  quantized per call (no calibration data);
* ``static``: :func:`onnxruntime.quantization.quantize_static`, QDQ format, INT8 weights and
  UINT8 activations whose ranges come from a calibration set (rows of the model's own data, fed
  through a :class:`~onnxruntime.quantization.CalibrationDataReader`);
* ``fp16``: ONNX Runtime's bundled float16 converter (``onnxruntime.transformers.float16``),
  inputs and outputs kept FP32 so callers see the same signature.

:func:`compare` measures the candidate against its source on held-out rows: accuracy (labels,
or the argmax of the probabilities) and its delta, the largest probability / output difference,
single-row and batch latency (median of N ``session.run`` calls, one intra-op thread) and size.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

Mode = Literal["dynamic", "static", "fp16"]
MODES: tuple[Mode, ...] = ("dynamic", "static", "fp16")
BATCH_ROWS = 256


def session(onnx_bytes: bytes) -> Any:
    """A one-thread CPU ONNX Runtime session (the latency checks' setup)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def check_mode(mode: str) -> Mode:
    for known in MODES:
        if mode == known:
            return known
    raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")


def _reader(input_name: str, rows: np.ndarray, batch: int = 32) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        """Calibration batches of ``rows`` for the model's one input."""

        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                [rows[i : i + batch] for i in range(0, len(rows), batch)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._batches, None)
            return None if chunk is None else {input_name: chunk}

    return Reader()


def quantize(
    onnx_bytes: bytes, mode: str, calibration: np.ndarray | None = None
) -> bytes:
    """The quantized (or FP16) model's bytes. ``static`` needs ``calibration`` rows (2-D)."""
    import onnx

    checked = check_mode(mode)
    if checked == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load_from_string(onnx_bytes)
        half = convert_float_to_float16(model, keep_io_types=True)
        return bytes(half.SerializeToString())
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="roost-quantize-") as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("in.onnx", "pre.onnx", "out.onnx"))
        source.write_bytes(onnx_bytes)
        try:  # shape inference and graph optimisation first, as ONNX Runtime recommends
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - the unprepared model quantizes too, less well
            prepared = source
        if checked == "dynamic":
            quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)
        else:
            if calibration is None or np.asarray(calibration).ndim != 2 or not len(calibration):
                raise ValueError("static quantization needs a non-empty 2-D calibration set")
            input_name = session(onnx_bytes).get_inputs()[0].name
            rows = np.ascontiguousarray(calibration, dtype=np.float32)
            quantize_static(
                prepared, target, _reader(input_name, rows),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        return target.read_bytes()


def _outputs(onnx_bytes: bytes, X: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, scores): the label output (or the argmax of the scores) and the 2-D float
    output the model's probabilities / scores are in (first float output if none is 2-D)."""
    sess = session(onnx_bytes)
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: X}), strict=True))
    labels = values.get("label")
    if labels is None:
        labels = next((v for v in values.values() if np.asarray(v).dtype.kind in "iu"), None)
    scores = values.get("probabilities")
    if scores is None:
        floats = [v for v in values.values() if np.asarray(v).dtype.kind == "f"]
        scores = next((v for v in floats if np.asarray(v).ndim == 2), floats[0] if floats else None)
    scores_arr = None if scores is None else np.asarray(scores, dtype=np.float64)
    if labels is None and scores_arr is not None and scores_arr.ndim == 2:
        labels = scores_arr.argmax(axis=1)
    return (None if labels is None else np.asarray(labels).reshape(-1)), scores_arr


def median_latency_us(onnx_bytes: bytes, X: np.ndarray, runs: int = 200, warmup: int = 10) -> float:
    """Median ``session.run`` time in microseconds for the batch ``X`` (one intra-op thread)."""
    sess = session(onnx_bytes)
    feeds = {sess.get_inputs()[0].name: X}
    for _ in range(warmup):
        sess.run(None, feeds)
    samples = np.empty(runs)
    for i in range(runs):
        started = time.perf_counter_ns()
        sess.run(None, feeds)
        samples[i] = time.perf_counter_ns() - started
    return float(np.median(samples)) / 1000.0


def compare(
    source: bytes, candidate: bytes, X: np.ndarray, y: np.ndarray | None, runs: int = 200
) -> dict[str, float]:
    """The candidate against its source on held-out rows ``X`` (labels ``y``): accuracy and its
    delta (candidate - source), the largest |score difference|, the latency ratios (candidate /
    source; median of ``runs`` calls of 1 and :data:`BATCH_ROWS` rows) and the size ratio."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    src_labels, src_scores = _outputs(source, X)
    cand_labels, cand_scores = _outputs(candidate, X)
    out: dict[str, float] = {"eval_rows": float(len(X))}
    if y is not None and src_labels is not None and cand_labels is not None:
        truth = np.asarray(y).reshape(-1)
        out["accuracy_source"] = float(np.mean(src_labels == truth))
        out["accuracy"] = float(np.mean(cand_labels == truth))
        out["accuracy_delta"] = out["accuracy"] - out["accuracy_source"]
    if src_labels is not None and cand_labels is not None:
        out["label_agreement"] = float(np.mean(src_labels == cand_labels))
    if src_scores is not None and cand_scores is not None:
        out["max_abs_score_diff"] = float(np.max(np.abs(src_scores - cand_scores)))
    one = X[:1]
    batch = np.ascontiguousarray(np.resize(X, (BATCH_ROWS, X.shape[1])))
    for label, rows in (("1", one), (str(BATCH_ROWS), batch)):
        before = median_latency_us(source, rows, runs)
        after = median_latency_us(candidate, rows, runs)
        out[f"latency_us_source_{label}"] = before
        out[f"latency_us_{label}"] = after
        out[f"latency_ratio_{label}"] = after / before
    out["size_bytes_source"] = float(len(source))
    out["size_bytes"] = float(len(candidate))
    out["size_ratio"] = len(candidate) / len(source)
    return out
