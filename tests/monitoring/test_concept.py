"""Concept drift from the prediction and feedback logs: a stream with 30 % of its labels flipped
is flagged against the validation baseline, a clean one is not; the calibration figures match
hand computations; the daily asset shows the table.

The "model" is calibrated by construction: each row's positive-class probability ``p`` is drawn
first and its label is Bernoulli(``p``), so the expected accuracy of ``p >= 0.5`` is
``mean(max(p, 1 - p))``, which stands in for the validation accuracy.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from dagster import materialize

from assets.concept import asset_name, concept_asset
from assets.demo import DEMO_SPECS
from assets.resources import RegistryResource
from monitoring.concept import concept_drift, expected_calibration_error
from monitoring.simulate import prediction_records
from warehouse.feedback import FeedbackRecord, write_feedback
from warehouse.writer import ParquetSink

CLEAN, DEGRADED = date(2026, 4, 1), date(2026, 4, 2)
ROWS = 2400


def _log_day(logs: Path, day: date, flip: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.6, 0.6, ROWS)
    y = (rng.random(ROWS) < p).astype(np.int64)
    y = np.where(rng.random(ROWS) < flip, 1 - y, y)
    records = list(prediction_records("fraud", day, rng.normal(size=(ROWS, 3)), proba=p))
    ParquetSink(logs, fsync=False).write_batch(records)
    labelled = [
        FeedbackRecord(r.request_id, "fraud", 1, None, float(y[i]),
                       float(i % 2) if i % 3 == 0 else None, r.ts + timedelta(minutes=1))
        for i, r in enumerate(records) if i % 4  # a quarter never gets feedback
    ]
    write_feedback(logs, labelled)
    return float(np.mean(np.maximum(p, 1 - p)))


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    home = tmp_path_factory.mktemp("roost")
    baseline = _log_day(home / "logs", CLEAN, 0.0, seed=1)
    _log_day(home / "logs", DEGRADED, 0.3, seed=2)
    return home, baseline


def _day(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def test_flipped_labels_are_flagged_and_clean_ones_are_not(logs: tuple[Path, float]) -> None:
    home, baseline = logs
    clean = concept_drift(home / "logs", "fraud", *_day(CLEAN), {1: baseline},
                          window=timedelta(hours=4))
    assert not clean.degraded, clean.to_markdown()
    assert clean.tests == 6 + 1  # six 4-hour windows and the pooled day, one version
    pooled = clean.windows[-1]
    assert pooled.pooled and pooled.labelled == ROWS - ROWS // 4
    assert pooled.accuracy is not None and abs(pooled.accuracy - baseline) < 0.03
    assert pooled.rewards == len(range(0, ROWS, 3)) - len(range(0, ROWS, 12))

    degraded = concept_drift(home / "logs", "fraud", *_day(DEGRADED), {1: baseline},
                             window=timedelta(hours=4))
    assert degraded.degraded, degraded.to_markdown()
    assert all(w.degraded for w in degraded.windows)  # every window, Bonferroni and all
    assert degraded.windows[-1].ece is not None and pooled.ece is not None
    assert degraded.windows[-1].ece > pooled.ece + 0.1  # calibration broke too
    assert degraded.latest() == degraded.windows[-2]  # the last window, for alerts

    # no baseline for the version: metrics, but nothing tested
    untested = concept_drift(home / "logs", "fraud", *_day(DEGRADED), {})
    assert untested.tests == 0 and not untested.degraded


def test_calibration_figures_match_hand_computation() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.55])
    y = np.array([0, 0, 1, 1, 0])
    # bins: [0,0.1): {0.05/0}, [0.1,0.2): {0.15/0, 0.15/1}, [0.5,0.6): {0.55/0}, [0.9,1]: {0.95/1}
    hand = (1 * 0.05 + 2 * abs(0.5 - 0.15) + 1 * 0.55 + 1 * 0.05) / 5
    assert expected_calibration_error(p, y) == pytest.approx(hand)
    assert expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0  # p = 1: last bin


def test_the_daily_asset_shows_the_windows(logs: tuple[Path, float]) -> None:
    home, _ = logs
    spec = next(s for s in DEMO_SPECS if s.name == "fraud")
    result = materialize([concept_asset(spec)], partition_key=DEGRADED.isoformat(),
                         resources={"registry": RegistryResource(home=str(home))})
    (event,) = result.asset_materializations_for_node(asset_name(spec))
    metadata = event.metadata
    assert metadata["labelled"].value == ROWS - ROWS // 4
    assert 0.5 < metadata["accuracy_v1"].value < 0.75  # 30 % flipped
    assert "| window | version |" in metadata["windows"].value
    assert metadata["degraded"].value is False  # an empty registry has no baseline to test
