"""Data drift through the real log format: the fraud generator's ``drift`` knob is flagged, clean
data from another seed is not; the partitioned asset writes the HTML report and the scores;
``roost drift --json`` prints them.

The logged days are gateway-format Parquet (``render_inputs`` JSON written by ``ParquetSink``):
2000 rows of a full-size generation (same parameters as the reference: the windowed features
depend on the data's density), batched four rows per request, plus shadow copies of wildly
shifted rows and failed requests that must both be left out.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from cli_testing import as_json, failed_cleanly, roost
from dagster import materialize

from assets.demo import DEMO_SPECS
from assets.demo_data import FRAUD_FEATURES, generate_fraud_transactions
from assets.drift import asset_name, drift_asset
from assets.resources import RegistryResource
from monitoring.drift import reference_frame, run_drift
from monitoring.logged_inputs import logged_days, read_logged_inputs
from monitoring.simulate import write_prediction_log
from warehouse.sql import connect

FRAUD = next(s for s in DEMO_SPECS if s.name == "fraud")
CLEAN_DAY, DRIFTED_DAY = date(2026, 3, 1), date(2026, 3, 2)
ROWS = 2000


def _day_rows(seed: int, drift: float) -> np.ndarray:
    frame = generate_fraud_transactions(seed=seed, drift=drift).frame[FRAUD_FEATURES]
    return frame.sample(ROWS, random_state=seed).to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("roost")
    logs = home / "logs"
    for day, seed, drift in ((CLEAN_DAY, 101, 0.0), (DRIFTED_DAY, 102, 0.5)):
        X = _day_rows(seed, drift)
        write_prediction_log(logs, "fraud", day, X, rows_per_request=4)
        write_prediction_log(logs, "fraud", day, X[:400] * 50.0, shadow=True)
        write_prediction_log(logs, "fraud", day, X[:200] * 50.0, status=422)
    return home


@pytest.fixture(scope="module")
def reference() -> object:
    return reference_frame(FRAUD, FRAUD_FEATURES)


def test_logged_inputs_are_the_request_rows_without_shadows_or_failures(home: Path) -> None:
    logs = home / "logs"
    assert logged_days(logs, "fraud") == [CLEAN_DAY, DRIFTED_DAY]
    read = read_logged_inputs(logs, "fraud", CLEAN_DAY, FRAUD_FEATURES)
    assert (read.requests, read.rows) == (ROWS // 4, ROWS)
    assert (read.skipped_shadow, read.skipped_failed, read.skipped_unreadable) == (400, 200, 0)
    # the log holds the FP32 request (orjson's shortest float32 text): equal as float32
    expected = _day_rows(101, 0.0).astype(np.float32)
    got = read.frame.sort_values(FRAUD_FEATURES).to_numpy().astype(np.float32)
    np.testing.assert_array_equal(got, expected[np.lexsort(expected.T[::-1])])
    # a seeded sample keeps about max_rows rows
    sampled = read_logged_inputs(logs, "fraud", CLEAN_DAY, FRAUD_FEATURES, max_rows=500)
    assert len(sampled.frame) <= 500 and sampled.rows == ROWS


def test_the_drift_knob_is_flagged_and_clean_data_is_not(home: Path, reference: object) -> None:
    clean = run_drift(home / "logs", FRAUD, CLEAN_DAY, FRAUD_FEATURES,
                      reference=reference, write=False)  # type: ignore[arg-type]
    assert not clean.drifted, clean.to_markdown()
    assert clean.share_drifted < clean.drift_share
    assert clean.current_rows == ROWS and clean.reference_rows == 20_000

    drifted = run_drift(home / "logs", FRAUD, DRIFTED_DAY, FRAUD_FEATURES,
                        reference=reference, write=False)  # type: ignore[arg-type]
    assert drifted.drifted, drifted.to_markdown()
    # the knob scales amounts and raises merchant risk; the hour of day is untouched
    assert {"amount", "merchant_risk"} <= set(drifted.drifted_features)
    assert "hour_of_day" not in drifted.drifted_features
    # Evidently chose by size and type: > 1000 reference rows -> distances, not p-values
    tests = {f.feature: f.test for f in drifted.features}
    assert tests["amount"] == "Wasserstein distance (normed)"
    assert tests["is_foreign"] == "Jensen-Shannon distance"  # two values


def test_the_partitioned_asset_writes_the_report_and_the_scores(home: Path) -> None:
    result = materialize(
        [drift_asset(FRAUD)], partition_key=DRIFTED_DAY.isoformat(),
        resources={"registry": RegistryResource(home=str(home))},
    )
    assert result.success
    (event,) = result.asset_materializations_for_node(asset_name(FRAUD))
    metadata = event.metadata
    assert metadata["drifted"].value is True
    report = home / "logs/monitoring/drift_reports/fraud/2026-03-02.html"
    assert report.is_file() and report.stat().st_size > 10_000
    assert "<html" in report.read_text()[:2000].lower()
    assert metadata["report"].value == report.resolve().as_uri()

    con = connect(home / "logs")
    try:
        rows = con.execute(
            "SELECT feature, test, score, threshold, drifted, share_drifted, current_rows "
            "FROM drift_scores WHERE model = 'fraud' AND date = DATE '2026-03-02' "
            "ORDER BY feature"
        ).fetchall()
    finally:
        con.close()
    assert sorted(r[0] for r in rows) == sorted(FRAUD_FEATURES)
    assert all(r[6] == ROWS for r in rows)
    assert {r[0] for r in rows if r[4]} == set(metadata["drifted_features"].value.split(", "))
    assert rows[0][5] == metadata["share_drifted"].value

    # a day without traffic materializes as "no data" instead of failing a backfill
    quiet = materialize(
        [drift_asset(FRAUD)], partition_key="2026-02-01",
        resources={"registry": RegistryResource(home=str(home))},
    )
    (event,) = quiet.asset_materializations_for_node(asset_name(FRAUD))
    assert event.metadata["status"].value == "no data"


def test_roost_drift_json(home: Path) -> None:
    (day,) = as_json(roost(home, "drift", "fraud", "--json"))  # the newest logged day
    assert day["model"] == "fraud" and day["date"] == DRIFTED_DAY.isoformat()
    assert day["drifted"] is True and day["current_rows"] == ROWS
    assert [f["feature"] for f in day["features"]] == FRAUD_FEATURES
    assert all({"test", "score", "threshold", "drifted"} <= set(f) for f in day["features"])
    assert Path(day["report"]).is_file()

    error = failed_cleanly(roost(home, "drift", "no-such-model"))
    assert "no model spec named 'no-such-model'" in error
