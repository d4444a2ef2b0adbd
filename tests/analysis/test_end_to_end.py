"""Canary and experiment analysis end to end: real Parquet logs written by the project's own
PredictionLogWriter / ParquetSink and feedback writer, read back with DuckDB."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from analysis.canary import CanaryConfig, compare
from analysis.experiments import read_experiment, write_experiment_results
from analysis.samples import read_arms, read_canary
from registry.traffic import Experiment, Variant
from warehouse import ParquetSink, PredictionLogWriter, PredictionRecord, run_query
from warehouse.feedback import FeedbackRecord, write_feedback

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = (T0, T0 + timedelta(hours=1))


def outputs(label: int) -> str:
    return json.dumps([
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [label]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.3, 0.7]},
    ])


@dataclass
class Arm:
    """How to generate one arm's traffic: request i fails with ``status(i)``, answers in
    ``latency(i)`` ms, is correct when ``correct(i)`` and gets reward ``reward(i)``."""

    variant: str
    version: int
    route: str
    n: int
    status: Callable[[int], int] = lambda i: 200
    latency: Callable[[int], float] = lambda i: 10.0
    correct: Callable[[int], bool] = lambda i: i % 10 < 9
    reward: Callable[[int], float | None] = lambda i: None
    experiment: str | None = None
    user: Callable[[int], str | None] = lambda i: None


def write_log(logs: Path, *arms: Arm, model: str = "fraud") -> None:
    feedback = []
    with PredictionLogWriter(ParquetSink(logs), flush_rows=100_000) as writer:
        for arm in arms:
            for i in range(arm.n):
                rid = f"{arm.variant}-{arm.version}-{i}"
                status = arm.status(i)
                predicted = i % 2
                writer.append(PredictionRecord(
                    request_id=rid, ts=T0 + timedelta(milliseconds=i), model=model,
                    version=arm.version, inputs="{}",
                    outputs=outputs(predicted) if status < 400 else "",
                    latency_ms=arm.latency(i), status=status, user_id=arm.user(i),
                    protocol="v2-rest", error=None if status < 400 else "boom",
                    variant=arm.variant, experiment=arm.experiment, route=arm.route,
                    shadow=arm.route == "shadow",
                ))
                if status < 400:
                    label = predicted if arm.correct(i) else 1 - predicted
                    feedback.append(FeedbackRecord(
                        rid, model, arm.version, arm.experiment, float(label), arm.reward(i),
                        T0 + timedelta(minutes=5),
                    ))
    write_feedback(logs, feedback)


def lognormal(median: float, seed: int) -> Callable[[int], float]:
    draws = np.random.default_rng(seed).lognormal(np.log(median), 0.3, 10_000)
    return lambda i: float(draws[i])


def production(n: int = 4000, **kwargs: object) -> Arm:
    return Arm("production", 1, "production", n, latency=lognormal(20, 1), **kwargs)  # type: ignore[arg-type]


def canary(n: int = 1000, **kwargs: object) -> Arm:
    kwargs.setdefault("latency", lognormal(20, 2))
    return Arm("canary", 2, "canary", n, **kwargs)  # type: ignore[arg-type]


def every(k: int, status: int) -> Callable[[int], int]:
    return lambda i: status if i % k == k - 1 else 200


def test_samples_read_back_exactly(tmp_path: Path) -> None:
    write_log(
        tmp_path,
        production(400, status=every(100, 503)),
        canary(200, status=lambda i: 504 if i < 3 else 400 if i < 10 else 200,
               reward=lambda i: float(i % 2)),
        # a shadow copy and a pinned request are never part of the canary comparison
        Arm("shadow-v3", 3, "shadow", 50, status=every(2, 500)),
        Arm("v1", 1, "pinned", 30),
    )
    prod, can = read_canary(tmp_path, "fraud", *WINDOW)
    counts = [(a.requests, a.server_errors, a.timeouts, a.client_errors) for a in (prod, can)]
    assert counts == [(400, 4, 0, 0), (200, 3, 3, 7)]
    assert can.latencies_ms.size == 190  # answered requests only
    assert (prod.labelled, prod.correct) == (396, sum(1 for i in range(400)
                                                      if i % 100 != 99 and i % 10 < 9))
    assert can.rewards.size == 190 and can.reward_sum == 95.0
    assert {a.arm for a in read_arms(tmp_path, "fraud", *WINDOW)} == {
        "production", "canary", "v1"}  # no shadows
    # [since, until): a window that ends at the 100th request of each arm
    prod, can = read_canary(tmp_path, "fraud", T0, T0 + timedelta(milliseconds=100))
    assert (prod.requests, can.requests) == (100, 100)


def test_canary_with_5_percent_errors_is_rolled_back_at_the_first_look(tmp_path: Path) -> None:
    write_log(tmp_path, production(status=every(200, 500)), canary(status=every(20, 500)))
    prod, can = read_canary(tmp_path, "fraud", *WINDOW)
    assert (prod.error_rate, can.error_rate) == (0.005, 0.05)
    result = compare(prod, can, CanaryConfig(), look=1)
    assert result.decision == "rollback", result.reason
    assert result.metric("error_rate").degraded and "error_rate" in result.reason


def test_canary_three_times_slower_is_rolled_back(tmp_path: Path) -> None:
    write_log(tmp_path, production(), canary(latency=lognormal(60, 2)))
    result = compare(*read_canary(tmp_path, "fraud", *WINDOW), CanaryConfig(), look=5)
    assert result.decision == "rollback", result.reason
    assert result.metric("latency").degraded
    assert result.metric("latency").details["p99_ratio"] == pytest.approx(3.0, rel=0.2)


def test_canary_with_70_percent_accuracy_is_rolled_back(tmp_path: Path) -> None:
    write_log(tmp_path, production(), canary(correct=lambda i: i % 10 < 7))
    prod, can = read_canary(tmp_path, "fraud", *WINDOW)
    assert (prod.accuracy, can.accuracy) == (0.9, 0.7)
    result = compare(prod, can, CanaryConfig(), look=5)
    assert result.decision == "rollback", result.reason
    assert [m.metric for m in result.metrics if m.degraded] == ["accuracy"]


def test_equal_canary_advances_with_data_and_holds_without(tmp_path: Path) -> None:
    rewards = np.random.default_rng(7).normal(1.0, 0.5, 10_000)
    write_log(
        tmp_path,
        production(status=every(200, 500), reward=lambda i: float(rewards[i])),
        canary(status=every(200, 500), reward=lambda i: float(rewards[5000 + i])),
    )
    result = compare(*read_canary(tmp_path, "fraud", *WINDOW), CanaryConfig(), look=5)
    assert result.decision == "advance", result.reason
    assert all(m.tested for m in result.metrics)
    assert not any(m.degraded for m in result.metrics)
    early = read_canary(tmp_path, "fraud", T0, T0 + timedelta(milliseconds=150))
    held = compare(*early, CanaryConfig(), look=1)
    assert held.decision == "hold" and "150 canary requests" in held.reason
    json.dumps(result.to_dict(), allow_nan=False)


def test_sample_ratio_mismatch_and_the_experiment_results_view(tmp_path: Path) -> None:
    assert run_query(tmp_path, "select count(*) from experiment_results")[1] == [(0,)]
    experiment = Experiment(
        id="ranker", salt="s",
        variants=(Variant(1, 50.0, "control"), Variant(2, 50.0, "treatment")),
    )
    write_log(
        tmp_path,
        Arm("control", 1, "experiment", 1200, experiment="ranker", user=lambda i: f"a{i // 2}"),
        Arm("treatment", 2, "experiment", 800, experiment="ranker", user=lambda i: f"b{i // 2}",
            correct=lambda i: i % 10 < 8),
        production(300),  # outside the experiment
    )
    result = read_experiment(tmp_path, "fraud", experiment, *WINDOW)
    control, treatment = result.variants
    assert (control.units, treatment.units) == (600, 400)
    assert (control.requests, treatment.requests) == (1200, 800)
    assert result.srm_detected and result.srm_chi2 == pytest.approx(40.0)
    assert (control.accuracy, treatment.accuracy) == (0.9, 0.8)
    assert treatment.accuracy_p_value is not None and treatment.accuracy_p_value < 1e-6
    path = write_experiment_results(tmp_path, [result])
    assert path is not None and path.is_file()
    columns, rows = run_query(
        tmp_path,
        "select variant, units, accuracy, srm_detected from experiment_results "
        "order by is_control desc",
    )
    assert columns == ["variant", "units", "accuracy", "srm_detected"]
    assert rows == [("control", 600, 0.9, True), ("treatment", 400, 0.8, True)]
    assert write_experiment_results(tmp_path, []) is None
