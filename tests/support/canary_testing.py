"""Real prediction and feedback logs for canary and experiment tests (the project's writers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from warehouse import ParquetSink, PredictionLogWriter, PredictionRecord
from warehouse.feedback import FeedbackRecord, write_feedback


def _outputs(label: int) -> str:
    return json.dumps([
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [label]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.3, 0.7]},
    ])


def lognormal(median: float, seed: int) -> Callable[[int], float]:
    draws = np.random.default_rng(seed).lognormal(np.log(median), 0.3, 20_000)
    return lambda i: float(draws[i])


def every(k: int, status: int) -> Callable[[int], int]:
    """Request i fails with ``status`` when i % k == k - 1."""
    return lambda i: status if i % k == k - 1 else 200


@dataclass
class Arm:
    """One arm's traffic: request i fails with ``status(i)``, answers in ``latency(i)`` ms and
    is correct when ``correct(i)`` (feedback written for every answered request)."""

    variant: str
    version: int
    route: str
    n: int
    status: Callable[[int], int] = lambda i: 200
    latency: Callable[[int], float] = field(default_factory=lambda: lognormal(20, 1))
    correct: Callable[[int], bool] = lambda i: i % 10 < 9
    experiment: str | None = None
    user: Callable[[int], str | None] = lambda i: None


def write_log(logs: Path, start: datetime, *arms: Arm, model: str,
              spacing: timedelta = timedelta(microseconds=10), tag: str = "") -> None:
    """Write ``arms`` as requests from ``start`` on (``spacing`` apart) plus their feedback."""
    feedback = []
    with PredictionLogWriter(ParquetSink(logs), flush_rows=100_000) as writer:
        for arm in arms:
            for i in range(arm.n):
                rid = f"{tag}{arm.variant}-{arm.version}-{i}"
                status, predicted = arm.status(i), i % 2
                writer.append(PredictionRecord(
                    request_id=rid, ts=start + i * spacing, model=model, version=arm.version,
                    inputs="{}", outputs=_outputs(predicted) if status < 400 else "",
                    latency_ms=arm.latency(i), status=status, user_id=arm.user(i),
                    protocol="v2-rest", error=None if status < 400 else "boom",
                    variant=arm.variant, experiment=arm.experiment, route=arm.route,
                    shadow=False,
                ))
                if status < 400:
                    label = predicted if arm.correct(i) else 1 - predicted
                    feedback.append(FeedbackRecord(
                        rid, model, arm.version, arm.experiment, float(label), None,
                        start + timedelta(seconds=1),
                    ))
    write_feedback(logs, feedback)
