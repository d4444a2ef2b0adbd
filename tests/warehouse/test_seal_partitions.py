"""Sealing a WAL segment into Parquet: one file per (model, UTC date) the segment has rows for,
rows in WAL order; a segment of one model and one day (the usual one) is written whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse import ParquetSink, PredictionRecord
from warehouse.wal import records_to_wal_batch

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(n: int, model: str = "iris", ts: datetime = T0) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"req-{n}", ts=ts, model=model, version=1, inputs='{"x": [1.0]}',
        outputs='{"y": [0]}', latency_ms=0.5, status=200, user_id=None, protocol="v2-rest",
        error=None,
    )


def segment(records: list[PredictionRecord]) -> pa.Table:
    return pa.Table.from_batches([records_to_wal_batch(records, 0)])


def ids(path: Path) -> list[str]:
    return [str(v) for v in pq.read_table(path).column("request_id").to_pylist()]


def test_a_one_model_one_day_segment_is_one_file_in_wal_order(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "gw")
    records = [record(n) for n in range(50)]
    paths = sink.write_table(segment(records), "seg-a")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "predictions/model=iris/date=2024-05-01/seg-a.parquet"
    ]
    assert ids(paths[0]) == [f"req-{n}" for n in range(50)]
    # sealing again replaces the same file with the same rows
    assert sink.write_table(segment(records), "seg-a") == paths
    assert ids(paths[0]) == [f"req-{n}" for n in range(50)]


def test_a_mixed_segment_is_split_by_model_and_utc_date(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "gw")
    late = datetime(2024, 5, 1, 21, 0, tzinfo=timezone(timedelta(hours=-5)))  # May 2nd in UTC
    records = [
        record(0), record(1, "fraud"), record(2, ts=late), record(3), record(4, "fraud"),
        record(5, ts=late),
    ]
    paths = sink.write_table(segment(records), "seg-b")
    found = {p.relative_to(tmp_path).parent.as_posix(): ids(p) for p in paths}
    assert found == {
        "predictions/model=iris/date=2024-05-01": ["req-0", "req-3"],
        "predictions/model=fraud/date=2024-05-01": ["req-1", "req-4"],
        "predictions/model=iris/date=2024-05-02": ["req-2", "req-5"],
    }
    assert {p.name for p in paths} == {"seg-b.parquet"}
