"""Prediction-log rows as the gateway writes them, from a feature matrix: for tests, benchmarks
and demos of the monitoring jobs without a running gateway.

``inputs`` is :func:`serving.protocol.render.render_inputs` of a one-tensor FP32 request (the
adapted request a tabular model sees), ``outputs`` the recorder's
:func:`serving.recorder.outputs_json` of ``label`` (INT64) and ``probabilities`` (FP32, two
columns): the exact text the gateway logs. Files are written by
:class:`~warehouse.writer.ParquetSink` (``model=<m>/date=<d>/part-*.parquet``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson

from serving.protocol.render import render_inputs
from serving.protocol.types import InferRequest, RequestInput
from warehouse.records import PredictionRecord
from warehouse.writer import ParquetSink

INPUT_NAME = "input"  # assets.training.INPUT_NAME
_CHUNK = 50_000


def outputs_text(labels: npt.NDArray[np.int64], positive: npt.NDArray[np.float64]) -> str:
    """The ``outputs`` column of a classifier's answer (``label``, ``probabilities``)."""
    proba = np.stack([1.0 - positive, positive], axis=1).astype(np.float32)
    return orjson.dumps([
        {"name": "label", "datatype": "INT64", "shape": [len(labels)],
         "data": [int(v) for v in labels]},
        {"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape),
         "data": [float(v) for v in proba.reshape(-1)]},
    ]).decode()


def _requests(
    X: npt.NDArray[np.float64], rows_per_request: int
) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
    for start in range(0, len(X), rows_per_request):
        yield start, np.ascontiguousarray(X[start:start + rows_per_request], dtype=np.float32)


def prediction_records(
    model: str,
    day: date,
    X: npt.NDArray[np.float64],
    *,
    version: int = 1,
    rows_per_request: int = 1,
    proba: Sequence[float] | npt.NDArray[np.float64] | None = None,
    request_ids: Sequence[str] | None = None,
    shadow: bool = False,
    status: int = 200,
) -> Iterator[PredictionRecord]:
    """One record per ``rows_per_request`` rows of ``X``, spread evenly over the UTC ``day``.

    ``proba`` (the positive class's probability per row) adds classifier outputs (label =
    ``proba >= 0.5``); ``request_ids`` (one per request) default to fresh UUIDs.
    """
    n_requests = -(-len(X) // rows_per_request)
    start_of_day = datetime.combine(day, time(), tzinfo=UTC)
    step = timedelta(days=1) / max(n_requests, 1)
    positive = None if proba is None else np.asarray(proba, dtype=np.float64)
    for index, (start, rows) in enumerate(_requests(X, rows_per_request)):
        tensor = RequestInput(INPUT_NAME, "FP32", rows.shape, rows, {})
        outputs = ""
        if positive is not None:
            p = positive[start:start + len(rows)]
            outputs = outputs_text((p >= 0.5).astype(np.int64), p)
        yield PredictionRecord(
            request_id=request_ids[index] if request_ids is not None else uuid.uuid4().hex,
            ts=start_of_day + step * index,
            model=model,
            version=version,
            inputs=render_inputs(InferRequest(None, [tensor], None, {})),
            outputs=outputs,
            latency_ms=1.0,
            status=status,
            user_id=None,
            protocol="v2",
            error=None,
            variant="production",
            route="production",
            shadow=shadow,
        )


def write_prediction_log(
    logs_dir: Path, model: str, day: date, X: npt.NDArray[np.float64], **options: object
) -> int:
    """Write :func:`prediction_records` under ``logs_dir`` in chunks; returns the records."""
    sink = ParquetSink(Path(logs_dir), fsync=False)
    written = 0
    batch: list[PredictionRecord] = []
    for record in prediction_records(model, day, X, **options):  # type: ignore[arg-type]
        batch.append(record)
        if len(batch) >= _CHUNK:
            sink.write_batch(batch)
            written += len(batch)
            batch = []
    if batch:
        sink.write_batch(batch)
        written += len(batch)
    return written
