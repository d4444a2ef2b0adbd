"""The ``region`` column: on every prediction and feedback row, and absent from older files.

Logs written before the column existed still read: a WAL segment without it is recovered (the
rows get NULL), and the ``predictions`` / ``feedback`` views read old Parquet files (NULL) next
to new ones, and old files alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from registry import RoostSettings
from warehouse import (
    PREDICTION_SCHEMA,
    WAL_SCHEMA,
    PredictionLogWriter,
    PredictionRecord,
    records_from_table,
    run_query,
)
from warehouse.feedback import FEEDBACK_SCHEMA, FeedbackRecord, write_feedback
from warehouse.wal import LOCK_NAME, WAL_DIR, records_to_wal_batch

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(request_id: str, region: str | None = None) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id, ts=T0, model="iris", version=1, inputs="{}", outputs="[]",
        latency_ms=1.0, status=200, user_id=None, protocol="v2-rest", error=None, region=region,
    )  # fmt: skip


def without_region(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f for f in schema if f.name != "region"])


def test_schemas_have_a_nullable_region() -> None:
    for schema in (PREDICTION_SCHEMA, WAL_SCHEMA, FEEDBACK_SCHEMA):
        assert schema.field("region").type == pa.string()
        assert schema.field("region").nullable


def test_old_wal_segment_without_region_is_recovered(tmp_path: Path) -> None:
    """A segment a dead writer of an older release left: sealed, its rows' region NULL."""
    settings = RoostSettings(home=tmp_path / "home", region="eu")
    dead = settings.logs_dir / WAL_DIR / "dead-writer"
    dead.mkdir(parents=True)
    (dead / LOCK_NAME).touch()
    old = without_region(WAL_SCHEMA)
    batch = records_to_wal_batch([record("old-1"), record("old-2")], 0)
    old_batch = pa.RecordBatch.from_arrays([batch.column(f.name) for f in old], schema=old)
    segment = dead / "seg-0000000000000000001-000000.arrow"
    segment.write_bytes(old.serialize().to_pybytes() + old_batch.serialize().to_pybytes())

    writer = PredictionLogWriter.from_settings(settings)
    writer.start()
    writer.append(record("new-1", region="eu"))
    writer.close()

    assert not segment.exists()
    _, rows = run_query(
        settings.logs_dir, "select request_id, region from predictions order by request_id"
    )
    assert rows == [("new-1", "eu"), ("old-1", None), ("old-2", None)]


def test_views_read_parquet_files_without_region(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    part = logs / "predictions" / "model=iris" / "date=2024-05-01"
    part.mkdir(parents=True)
    old = pa.Table.from_pylist(
        [{n: getattr(record("old"), n) for n in without_region(PREDICTION_SCHEMA).names}],
        schema=without_region(PREDICTION_SCHEMA),
    )
    pq.write_table(old, part / "old.parquet")
    fb = logs / "feedback" / "model=iris" / "date=2024-05-01"
    fb.mkdir(parents=True)
    old_fb = pa.Table.from_pylist(
        [{"request_id": "old", "ts": T0, "version": 1, "experiment": None, "label": 1.0,
          "reward": None}],
        schema=without_region(FEEDBACK_SCHEMA),
    )  # fmt: skip
    pq.write_table(old_fb, fb / "old.parquet")

    # old files alone: the column is there, NULL
    _, rows = run_query(logs, "select request_id, region from predictions")
    assert rows == [("old", None)]
    _, rows = run_query(logs, "select request_id, region from feedback")
    assert rows == [("old", None)]

    # next to new files
    pq.write_table(
        pa.Table.from_pylist(
            [{n: getattr(record("new", "us"), n) for n in PREDICTION_SCHEMA.names}],
            schema=PREDICTION_SCHEMA,
        ),
        part / "new.parquet",
    )
    write_feedback(logs, [FeedbackRecord("new", "iris", 1, None, 0.0, None, T0, "us")])
    _, rows = run_query(logs, "select request_id, region from predictions order by 1")
    assert rows == [("new", "us"), ("old", None)]
    _, rows = run_query(logs, "select request_id, region from feedback order by 1")
    assert rows == [("new", "us"), ("old", None)]
    _, rows = run_query(
        logs, "select count(*) from predictions where region = 'us' and date = '2024-05-01'"
    )
    assert rows == [(1,)]


def test_records_from_an_older_table_keep_the_default_region() -> None:
    table = pa.Table.from_pylist(
        [{**{n: getattr(record("r"), n) for n in without_region(PREDICTION_SCHEMA).names},
          "model": "iris"}]
    )  # fmt: skip
    [back] = records_from_table(table)
    assert back.request_id == "r" and back.region is None
