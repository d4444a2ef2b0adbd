"""The warehouse's DuckDB views over real files: predictions joined to feedback (shadows apart),
audit from the registry, drift scores, alerts with their resolve time, and ``roost sql --out``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from registry import Registry
from warehouse import ParquetSink, PredictionRecord, connect, run_query
from warehouse.feedback import FeedbackRecord, write_feedback
from warehouse.sql import DRIFT_SCORES_DIR, DRIFT_SCORES_SCHEMA

T0 = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def _record(
    rid: str, *, shadow: bool = False, version: int = 1, model: str = "m"
) -> PredictionRecord:
    return PredictionRecord(
        request_id=rid, ts=T0, model=model, version=version, inputs="{}",
        outputs='[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}]', latency_ms=1.0,
        status=200, user_id="u", protocol="rest", error=None, shadow=shadow,
        route="shadow" if shadow else "production",
    )  # fmt: skip


def _seed_predictions(logs: Path) -> None:
    ParquetSink(logs, "w1").write_batch(
        [_record("r1"), _record("r2"), _record("r3"), _record("r1", shadow=True, version=2),
         _record("r2", shadow=True, version=2), _record("r1", model="other")]
    )  # fmt: skip
    write_feedback(logs, [
        FeedbackRecord("r1", "m", 1, None, 1.0, None, T0 + timedelta(minutes=1)),
        FeedbackRecord("r1", "m", 1, None, 0.0, None, T0 + timedelta(minutes=2)),
        FeedbackRecord("r1", "m", 1, None, None, 0.5, T0 + timedelta(minutes=3)),
        FeedbackRecord("r2", "m", 1, None, 1.0, None, T0 + timedelta(minutes=1)),
    ])  # fmt: skip


def test_predictions_with_feedback_one_row_per_served_prediction(tmp_path: Path) -> None:
    _seed_predictions(tmp_path)
    _, rows = run_query(
        tmp_path,
        "select request_id, version, label, reward, feedback_rows, feedback_ts is not null "
        "from predictions_with_feedback where model = 'm' order by request_id",
    )
    # r1: the latest label (0.0 at +2 min) and the reward; r3 has no feedback; no shadow rows
    assert rows == [("r1", 1, 0.0, 0.5, 3, True), ("r2", 1, 1.0, None, 1, True),
                    ("r3", 1, None, None, 0, False)]  # fmt: skip
    _, rows = run_query(
        tmp_path,
        "select request_id, version, shadow, label from shadow_predictions_with_feedback "
        "order by request_id",
    )
    assert rows == [("r1", 2, True, 0.0), ("r2", 2, True, 1.0)]
    # feedback for model m's r1 never attaches to model other's r1
    _, rows = run_query(
        tmp_path, "select label, feedback_rows from predictions_with_feedback where model='other'"
    )
    assert rows == [(None, 0)]


def test_views_exist_and_are_empty_without_data(tmp_path: Path) -> None:
    con = connect(tmp_path)
    try:
        for view in ("predictions", "feedback", "predictions_with_feedback",
                     "shadow_predictions_with_feedback", "audit", "drift_scores", "alerts",
                     "experiment_results"):  # fmt: skip
            assert con.execute(f"select count(*) from {view}").fetchone() == (0,), view
        columns = [d[0] for d in con.execute("select * from drift_scores").description or []]
        assert columns == DRIFT_SCORES_SCHEMA.names
        columns = [d[0] for d in con.execute("select * from alerts").description or []]
        assert "ends_at" in columns
    finally:
        con.close()


def test_audit_view_reads_the_registry(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    try:
        registry.record_event("retention", details={"rows_removed": 7, "partitions": ["a"]})
        registry.record_event("erase_user", details={"rows_removed": 3}, actor="dpo")
        columns, rows = run_query(
            tmp_path / "logs",
            "select id, actor, action, details->>'rows_removed', typeof(ts), length(hash) "
            "from audit order by id",
            registry=registry,
        )
    finally:
        registry.close()
    assert rows == [(1, "roost", "retention", "7", "TIMESTAMP WITH TIME ZONE", 64),
                    (2, "dpo", "erase_user", "3", "TIMESTAMP WITH TIME ZONE", 64)]  # fmt: skip


def test_drift_scores_view_reads_parquet(tmp_path: Path) -> None:
    directory = tmp_path / DRIFT_SCORES_DIR
    directory.mkdir(parents=True)
    now = datetime.now(UTC)
    table = pa.Table.from_pylist(
        [
            {"model": "m", "date": date(2025, 3, 10), "feature": f, "test": "ks",
             "statistic": stat, "p_value": p, "score": p, "threshold": 0.05,
             "drifted": p < 0.05, "share_drifted": 0.5, "reference_rows": 1000,
             "current_rows": 200, "computed_at": now}
            for f, stat, p in (("age", 0.4, 0.001), ("amount", 0.05, 0.7))
        ],
        schema=DRIFT_SCORES_SCHEMA,
    )  # fmt: skip
    pq.write_table(table, directory / "m-2025-03-10.parquet")
    _, rows = run_query(
        tmp_path, "select model, date, feature, drifted, share_drifted from drift_scores "
        "order by feature",
    )
    assert rows == [("m", date(2025, 3, 10), "age", True, 0.5),
                    ("m", date(2025, 3, 10), "amount", False, 0.5)]  # fmt: skip


def test_alerts_view_has_the_resolve_time(tmp_path: Path) -> None:
    from orchestration.alert_events import alerts_path, emit_alert

    emit_alert(tmp_path, alertname="Drift", model="m", version=1, summary="s", description="d",
               starts_at=T0)  # fmt: skip
    resolved = {"status": "resolved", "labels": {"alertname": "Drift", "model": "m"},
                "annotations": {"summary": "s"}, "startsAt": T0.isoformat(),
                "endsAt": (T0 + timedelta(hours=1)).isoformat(), "fingerprint": "f"}  # fmt: skip
    with alerts_path(tmp_path).open("a") as handle:
        handle.write(json.dumps(resolved) + "\n")
    _, rows = run_query(tmp_path, "select status, starts_at, ends_at from alerts order by status")
    assert rows == [("firing", T0, None), ("resolved", T0, T0 + timedelta(hours=1))]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_roost_sql_writes_out_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   suffix: str) -> None:  # fmt: skip
    from orchestration import cli

    home = tmp_path / ".roost"
    Registry(f"sqlite:///{home / 'registry.db'}", home / "artifacts").close()
    _seed_predictions(home / "logs")
    monkeypatch.setenv("ROOST_HOME", str(home))
    cli._home.cache_clear()
    out = tmp_path / f"rows.{suffix}"
    result = CliRunner().invoke(
        cli.main, ["sql", "select request_id, label from predictions_with_feedback "
                   "where model = 'm' order by 1", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 row(s)" in result.output
    if suffix == "csv":
        assert out.read_text().splitlines() == ["request_id,label", "r1,0.0", "r2,1.0", "r3,"]
    else:
        assert pq.read_table(out).to_pylist() == [
            {"request_id": "r1", "label": 0.0}, {"request_id": "r2", "label": 1.0},
            {"request_id": "r3", "label": None},
        ]
    result = CliRunner().invoke(cli.main, ["sql", "select action from audit"])
    assert result.exit_code == 0, result.output
