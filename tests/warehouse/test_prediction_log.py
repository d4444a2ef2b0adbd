"""The prediction log: buffered writer, Parquet sink and DuckDB view, on real files."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from registry.errors import InvalidRequest
from registry.settings import RoostSettings
from warehouse import (
    PREDICTION_SCHEMA,
    ParquetSink,
    PredictionLogWriter,
    PredictionRecord,
    RejectedRecords,
    connect,
    default_writer_id,
    run_query,
    validate_model_name,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_ids = iter(range(10**9))


def make_record(
    model: str = "iris",
    ts: datetime = T0,
    *,
    version: int = 1,
    status: int = 200,
    request_id: str | None = None,
) -> PredictionRecord:
    n = next(_ids)
    return PredictionRecord(
        request_id=request_id or f"req-{n}",
        ts=ts,
        model=model,
        version=version,
        inputs='{"x": [1.0, 2.0]}',
        outputs='{"y": [0]}' if status == 200 else "",
        latency_ms=1.5,
        status=status,
        user_id=None if n % 2 else "alice",
        protocol="v2-rest",
        error=None if status == 200 else "boom",
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        time.sleep(0.01)


def parquet_files(root: Path) -> list[Path]:
    return sorted((root / "predictions").rglob("*.parquet"))


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "predictions").rglob("*") if p.is_file())


class ListSink:
    """Records batches in memory; fails the first ``failures`` writes."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[PredictionRecord]] = []
        self.calls = 0

    def write_batch(self, records: list[PredictionRecord]) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise OSError("disk on fire")
        self.batches.append(list(records))

    @property
    def ids(self) -> list[str]:
        return [r.request_id for batch in self.batches for r in batch]


# -- records -----------------------------------------------------------------------------------


def test_record_requires_aware_ts_and_normalises_to_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_record(ts=datetime(2024, 5, 1, 12, 0))
    local = datetime(2024, 5, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    record = make_record(ts=local)
    assert record.ts == local
    assert record.ts.tzinfo is UTC
    assert record.utc_date == date(2024, 5, 2)


def test_schema_leaves_partition_keys_out_of_files() -> None:
    assert "model" not in PREDICTION_SCHEMA.names
    assert "date" not in PREDICTION_SCHEMA.names
    assert "version" in PREDICTION_SCHEMA.names
    assert str(PREDICTION_SCHEMA.field("ts").type) == "timestamp[us, tz=UTC]"


@pytest.mark.parametrize("name", ["iris", "fraud-v2", "my_model.onnx", "A1", "-x", "_"])
def test_safe_model_names(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", ".hidden", "a/b", "../etc", "a b", "a=b", "ü", "x" * 201,
     "__HIVE_DEFAULT_PARTITION__", "a\\b", "a%2Fb"],
)  # fmt: skip
def test_unsafe_model_names_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a safe partition name"):
        validate_model_name(name)
    sink = ParquetSink(tmp_path, "w1")
    with pytest.raises(RejectedRecords) as excinfo:
        sink.write_batch([make_record("iris"), make_record(name)])
    assert isinstance(excinfo.value, ValueError)
    assert [r.model for r in excinfo.value.records] == [name]
    # nothing of the batch was written, not even the valid record
    assert not (tmp_path / "predictions").exists() or all_files(tmp_path) == []
    with pytest.raises(ValueError):
        sink.partition_dir(name, date(2024, 5, 1))


def test_unsafe_writer_id_rejected(tmp_path: Path) -> None:
    for bad in ["", "a/b", ".x", "a b"]:
        with pytest.raises(ValueError, match="writer_id"):
            ParquetSink(tmp_path, bad)
    ids = {default_writer_id() for _ in range(20)}
    assert len(ids) == 20
    for writer_id in ids:
        ParquetSink(tmp_path, writer_id)  # default ids are valid


# -- Parquet sink and layout -------------------------------------------------------------------


def test_partition_layout_and_query(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "gw1")
    late = datetime(2024, 5, 1, 21, 0, tzinfo=timezone(timedelta(hours=-5)))  # 2024-05-02 UTC
    records = (
        [make_record("iris", T0) for _ in range(3)]
        + [make_record("iris", late, version=2)]
        + [make_record("fraud", T0, status=500) for _ in range(2)]
    )
    paths = sink.write_batch(records)

    rel = sorted(p.relative_to(tmp_path).parent.as_posix() for p in paths)
    assert rel == [
        "predictions/model=fraud/date=2024-05-01",
        "predictions/model=iris/date=2024-05-01",
        "predictions/model=iris/date=2024-05-02",
    ]
    assert sorted(paths) == parquet_files(tmp_path) == all_files(tmp_path)  # no temp files left
    for path in paths:
        assert re.fullmatch(r"part-gw1-\d+-\d+\.parquet", path.name), path.name

    columns, rows = run_query(
        tmp_path,
        "select model, date, count(*) as n from predictions group by all order by model, date",
    )
    assert columns == ["model", "date", "n"]
    assert rows == [
        ("fraud", date(2024, 5, 1), 2),
        ("iris", date(2024, 5, 1), 3),
        ("iris", date(2024, 5, 2), 1),
    ]

    _, rows = run_query(
        tmp_path,
        "select ts, version, status, outputs, error, protocol from predictions "
        "where model = 'iris' and date = DATE '2024-05-02'",
    )
    assert rows == [(late.astimezone(UTC), 2, 200, '{"y": [0]}', None, "v2-rest")]
    assert rows[0][0].utcoffset() == timedelta(0)
    _, rows = run_query(tmp_path, "select error, outputs from predictions where status = 500")
    assert rows == [("boom", ""), ("boom", "")]


def test_failed_staging_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pq.write_table
    calls = 0

    def flaky_write_table(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", flaky_write_table)
    sink = ParquetSink(tmp_path, "w1")
    batch = [make_record("a"), make_record("b")]
    with pytest.raises(OSError, match="disk full"):
        sink.write_batch(batch)
    assert all_files(tmp_path) == []  # first group's temp file was removed, nothing published
    assert len(sink.write_batch(batch)) == 2  # the retry writes both, once
    assert run_query(tmp_path, "select count(*) from predictions")[1] == [(2,)]


def test_two_writers_same_partition_do_not_clobber(tmp_path: Path) -> None:
    sinks = [ParquetSink(tmp_path, "gw-a"), ParquetSink(tmp_path, "gw-b")]
    barrier = threading.Barrier(len(sinks))
    written: list[Path] = []
    lock = threading.Lock()

    def work(sink: ParquetSink) -> None:
        barrier.wait()
        for _ in range(20):
            paths = sink.write_batch([make_record("iris") for _ in range(5)])
            with lock:
                written.extend(paths)

    threads = [threading.Thread(target=work, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    files = parquet_files(tmp_path)
    assert len(files) == len(set(written)) == 40
    assert {p.parent.name for p in files} == {"date=2024-05-01"}
    assert sum("part-gw-a-" in p.name for p in files) == 20
    _, rows = run_query(tmp_path, "select count(*), count(distinct request_id) from predictions")
    assert rows == [(200, 200)]


# -- buffered writer ---------------------------------------------------------------------------


def test_concurrent_appends_land_exactly_once(tmp_path: Path) -> None:
    writer = PredictionLogWriter(ParquetSink(tmp_path), flush_rows=250, flush_interval_s=0.05)
    writer.start()
    n_threads, per_thread = 8, 500
    barrier = threading.Barrier(n_threads)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            model = "iris" if i % 2 else "fraud"
            writer.append(make_record(model, request_id=f"t{t}-{i}"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()

    total = n_threads * per_thread
    assert writer.pending == 0
    assert writer.written_total == total
    assert not writer.running
    _, rows = run_query(tmp_path, "select count(*), count(distinct request_id) from predictions")
    assert rows == [(total, total)]
    _, rows = run_query(tmp_path, "select model, count(*) from predictions group by 1 order by 1")
    assert rows == [("fraud", total // 2), ("iris", total // 2)]


def test_flush_by_row_count(tmp_path: Path) -> None:
    sink = ListSink()
    with PredictionLogWriter(sink, flush_rows=10, flush_interval_s=3600) as writer:
        for _ in range(9):
            writer.append(make_record())
        assert writer.pending == 9
        writer.append(make_record())
        wait_for(lambda: writer.written_total == 10)
        assert [len(b) for b in sink.batches] == [10]
        for _ in range(5):
            writer.append(make_record())
        assert writer.pending == 5  # below flush_rows and far from the interval: stays buffered
    assert writer.pending == 0
    assert [len(b) for b in sink.batches] == [10, 5]  # close() flushed the rest


def test_flush_by_interval(tmp_path: Path) -> None:
    writer = PredictionLogWriter(ParquetSink(tmp_path), flush_rows=1000, flush_interval_s=0.1)
    writer.start()
    try:
        for _ in range(3):
            writer.append(make_record())
        wait_for(lambda: writer.written_total == 3)
        assert writer.pending == 0
        assert run_query(tmp_path, "select count(*) from predictions")[1] == [(3,)]
        writer.append(make_record())
        wait_for(lambda: writer.written_total == 4)
    finally:
        writer.close()
    assert len(parquet_files(tmp_path)) == 2


def test_failing_sink_keeps_records_until_next_flush(caplog: pytest.LogCaptureFixture) -> None:
    sink = ListSink(failures=2)
    writer = PredictionLogWriter(sink, flush_rows=100, flush_interval_s=60)
    first = [make_record() for _ in range(3)]
    for r in first:
        writer.append(r)
    with caplog.at_level(logging.ERROR, logger="warehouse.writer"):
        assert writer.flush() == 0
    assert "disk on fire" in caplog.text
    assert writer.pending == 3 and writer.written_total == 0

    second = [make_record() for _ in range(2)]
    for r in second:
        writer.append(r)
    assert writer.flush() == 0  # fails again: all five stay buffered, in order
    assert writer.pending == 5

    assert writer.flush() == 5
    assert sink.ids == [r.request_id for r in first + second]
    assert writer.pending == 0 and writer.written_total == 5
    assert writer.flush() == 0 and sink.calls == 3  # nothing left: the sink is not called


def test_background_thread_retries_failed_writes(tmp_path: Path) -> None:
    sink = ListSink(failures=1)
    writer = PredictionLogWriter(sink, flush_rows=2, flush_interval_s=0.05)
    writer.start()
    try:
        writer.append(make_record())
        writer.append(make_record())
        wait_for(lambda: writer.written_total == 2)
        assert sink.calls == 2 and writer.pending == 0
        assert writer.running
    finally:
        writer.close()


def test_close_flushes_and_writer_still_accepts_records() -> None:
    sink = ListSink()
    writer = PredictionLogWriter(sink, flush_rows=1000, flush_interval_s=3600)
    writer.start()
    writer.append(make_record())
    writer.close()
    assert writer.written_total == 1 and not writer.running
    writer.append(make_record())
    writer.close()  # idempotent, flushes what came after
    assert writer.written_total == 2


def test_writer_drops_rejected_records_and_writes_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = PredictionLogWriter(ParquetSink(tmp_path), flush_rows=100, flush_interval_s=60)
    writer.append(make_record("iris"))
    writer.append(make_record("../../etc"))
    writer.append(make_record("iris"))
    with caplog.at_level(logging.ERROR, logger="warehouse.writer"):
        assert writer.flush() == 2
    assert "unsafe model names" in caplog.text
    assert writer.rejected_total == 1 and writer.pending == 0 and writer.written_total == 2
    assert not (tmp_path / "etc").exists()
    assert run_query(tmp_path, "select model, count(*) from predictions group by 1")[1] == [
        ("iris", 2)
    ]


def test_writer_validates_policy_and_reads_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PredictionLogWriter(ListSink(), flush_rows=0)
    with pytest.raises(ValueError):
        PredictionLogWriter(ListSink(), flush_interval_s=0)
    settings = RoostSettings(home=tmp_path, log_flush_rows=7, log_flush_interval_s=0.5)
    writer = PredictionLogWriter.from_settings(settings)
    assert (writer.flush_rows, writer.flush_interval_s) == (7, 0.5)
    assert isinstance(writer.sink, ParquetSink)
    writer.append(make_record())
    writer.close()
    assert len(parquet_files(settings.logs_dir)) == 1


# -- SQL -----------------------------------------------------------------------------------------


EXPECTED_COLUMNS = [
    ("model", "VARCHAR"),
    ("date", "DATE"),
    ("request_id", "VARCHAR"),
    ("ts", "TIMESTAMP WITH TIME ZONE"),
    ("version", "BIGINT"),
    ("inputs", "VARCHAR"),
    ("outputs", "VARCHAR"),
    ("latency_ms", "DOUBLE"),
    ("status", "INTEGER"),
    ("user_id", "VARCHAR"),
    ("protocol", "VARCHAR"),
    ("error", "VARCHAR"),
    ("variant", "VARCHAR"),
    ("experiment", "VARCHAR"),
    ("route", "VARCHAR"),
    ("shadow", "BOOLEAN"),
    ("region", "VARCHAR"),
]


def test_empty_view_has_columns_and_no_rows(tmp_path: Path) -> None:
    con = connect(tmp_path / "never-written")
    try:
        described = con.execute("describe predictions").fetchall()
        assert [(row[0], row[1]) for row in described] == EXPECTED_COLUMNS
        assert con.execute("select count(*) from predictions").fetchall() == [(0,)]
    finally:
        con.close()
    columns, rows = run_query(
        tmp_path, "select model, date, count(*) from predictions group by 1, 2"
    )
    assert columns == ["model", "date", "count_star()"]
    assert rows == []


def test_view_columns_match_with_files(tmp_path: Path) -> None:
    ParquetSink(tmp_path, "w").write_batch([make_record("123")])  # numeric-looking model name
    con = connect(tmp_path)
    try:
        described = con.execute("describe predictions").fetchall()
        assert [(row[0], row[1]) for row in described] == EXPECTED_COLUMNS
        assert con.execute("select model from predictions").fetchall() == [("123",)]
    finally:
        con.close()


def test_view_sees_files_written_after_connect(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, "w")
    sink.write_batch([make_record()])
    con = connect(tmp_path)
    try:
        sink.write_batch([make_record("other")])
        assert con.execute("select count(*) from predictions").fetchall() == [(2,)]
    finally:
        con.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("selec * from predictions", "syntax error"),
        ("select nope from predictions", "nope"),
        ("select * from no_such_table", "no_such_table"),
        ("", "exactly one"),
        ("select 1; select 2", "exactly one"),
        ("create table t (a int)", "read-only"),
        ("copy (select 1) to 'out.csv'", "read-only"),
        ("attach 'other.duckdb'", "read-only"),
    ],
)
def test_bad_sql_is_invalid_request(tmp_path: Path, query: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as excinfo:
        run_query(tmp_path, query)
    assert excinfo.value.status_code == 400


def test_queries_cannot_read_outside_the_log(tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    ParquetSink(tmp_path / "logs", "w").write_batch([make_record()])
    with pytest.raises(InvalidRequest, match="(?i)permission|disabled"):
        run_query(tmp_path / "logs", f"select * from read_csv('{secret.as_posix()}')")
    with pytest.raises(InvalidRequest):
        run_query(tmp_path / "logs", "select * from predictions, (set enable_external_access=1)")
    assert run_query(tmp_path / "logs", "select count(*) from predictions")[1] == [(1,)]
