"""Retention deletes exactly the partitions past their period (the day 29/30/31 boundary), of
predictions (shadows included), feedback and dated features, and audits what it deleted."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from registry import Registry, RoostSettings
from warehouse import ParquetSink, PredictionRecord, run_query
from warehouse.feedback import FeedbackRecord, write_feedback
from warehouse.retention import apply_retention, is_expired

TODAY = date(2025, 3, 31)


def _at(days_ago: int, today: date = TODAY) -> datetime:
    return datetime.combine(today - timedelta(days=days_ago), time(12), tzinfo=UTC)


def _seed(
    logs: Path, ages: tuple[int, ...] = (0, 29, 30, 31, 45), today: date = TODAY
) -> None:
    sink = ParquetSink(logs, "w1")
    for age in ages:
        records = [
            PredictionRecord(
                request_id=f"r{age}-{i}", ts=_at(age, today), model="m", version=1, inputs="{}",
                outputs="[]", latency_ms=1.0, status=200, user_id="u", protocol="rest",
                error=None, shadow=i == 2,
            )
            for i in range(3)
        ]  # fmt: skip
        sink.write_batch(records)
        label = FeedbackRecord(f"r{age}-0", "m", 1, None, 1.0, None, _at(age, today))
        write_feedback(logs, [label])


def _seed_features(home: Path) -> None:
    for age in (6, 7, 8):
        directory = home / "features" / "logs" / f"date={(TODAY - timedelta(days=age))}"
        directory.mkdir(parents=True)
        pq.write_table(pa.table({"x": [1, 2]}), directory / "part-0.parquet")
    (home / "features" / "customer_activity.parquet").write_bytes(b"not dated")


def test_boundary() -> None:
    assert not is_expired(TODAY - timedelta(days=29), TODAY, 30)
    assert not is_expired(TODAY - timedelta(days=30), TODAY, 30)
    assert is_expired(TODAY - timedelta(days=31), TODAY, 30)


def test_retention_deletes_only_expired_partitions_and_audits_them(tmp_path: Path) -> None:
    settings = RoostSettings(home=tmp_path)
    _seed(settings.logs_dir)
    _seed(tmp_path / "logs-staging", ages=(31,))
    _seed_features(tmp_path)
    registry = Registry(settings.registry_url, settings.artifacts_dir)
    try:
        dry = apply_retention(settings, registry=registry, dry_run=True, today=TODAY)
        assert run_query(settings.logs_dir, "select count(*) from predictions")[1] == [(15,)]
        report = apply_retention(settings, registry=registry, today=TODAY)
        records = [r for r in registry.audit_records() if r.action == "retention"]
    finally:
        registry.close()
    assert [(p.kind, p.path, p.rows) for p in dry.partitions] == [
        (p.kind, p.path, p.rows) for p in report.partitions
    ]
    _, rows = run_query(settings.logs_dir,
                        "select distinct date from predictions order by 1")  # fmt: skip
    assert [r[0] for r in rows] == [TODAY - timedelta(days=a) for a in (30, 29, 0)]
    _, rows = run_query(settings.logs_dir, "select count(*) filter (where shadow), count(*) "
                        "from predictions")  # fmt: skip
    assert rows == [(3, 9)]
    _, rows = run_query(settings.logs_dir, "select request_id from feedback order by 1")
    assert rows == [("r0-0",), ("r29-0",), ("r30-0",)]
    features = sorted(p.name for p in (tmp_path / "features" / "logs").iterdir())
    assert features == [f"date={TODAY - timedelta(days=a)}" for a in (7, 6)]
    assert (tmp_path / "features" / "customer_activity.parquet").exists()

    deleted = {(p.kind, p.path, p.files, p.rows) for p in report.partitions}
    day31, day45 = TODAY - timedelta(days=31), TODAY - timedelta(days=45)
    assert deleted == {
        ("predictions", f"logs/predictions/model=m/date={day31}", 1, 3),
        ("predictions", f"logs/predictions/model=m/date={day45}", 1, 3),
        ("feedback", f"logs/feedback/model=m/date={day31}", 1, 1),
        ("feedback", f"logs/feedback/model=m/date={day45}", 1, 1),
        ("predictions", f"logs-staging/predictions/model=m/date={day31}", 1, 3),
        ("feedback", f"logs-staging/feedback/model=m/date={day31}", 1, 1),
        ("features", f"features/logs/date={TODAY - timedelta(days=8)}", 1, 2),
    }
    assert report.rows == 14
    (record,) = records  # the dry run is not audited
    assert record.details["rows"] == 14
    assert {p["path"] for p in record.details["partitions"]} == {d[1] for d in deleted}
    # nothing left to delete: nothing audited
    assert apply_retention(settings, today=TODAY).partitions == []


def test_retention_periods_come_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_PREDICTION_RETENTION_DAYS", "29")
    monkeypatch.setenv("ROOST_FEATURE_RETENTION_DAYS", "6")
    settings = RoostSettings(home=tmp_path)
    _seed(settings.logs_dir)
    _seed_features(tmp_path)
    report = apply_retention(settings, today=TODAY)
    assert sorted({p.day for p in report.partitions if p.kind == "predictions"}) == [
        TODAY - timedelta(days=a) for a in (45, 31, 30)
    ]
    assert [p.day for p in report.partitions if p.kind == "features"] == [
        TODAY - timedelta(days=a) for a in (8, 7)
    ]


def test_retention_asset_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster import materialize

    from assets.resources import RegistryResource
    from assets.retention import retention
    from orchestration import cli

    monkeypatch.setenv("ROOST_HOME", str(tmp_path))
    settings = RoostSettings(home=tmp_path)
    Registry(settings.registry_url, settings.artifacts_dir).close()
    today = datetime.now(UTC).date()
    _seed(settings.logs_dir, ages=(400, 1), today=today)
    result = materialize([retention], resources={"registry": RegistryResource()})
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["partitions_deleted"].value == 2 and metadata["rows_deleted"].value == 4
    _seed(settings.logs_dir, ages=(500,), today=today)
    cli._home.cache_clear()
    out = CliRunner().invoke(cli.main, ["retention", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "would delete 2 partition(s), 4 row(s)" in out.output
    out = CliRunner().invoke(cli.main, ["sql", "select count(*) as n from audit "
                                        "where action = 'retention'"])  # fmt: skip
    assert "1" in out.output.splitlines()[1]
