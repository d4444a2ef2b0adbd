"""The prediction log's write-ahead log: group commit, durability, sealing, crash recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

import warehouse.wal as wal_module
from registry.settings import RoostSettings
from warehouse import (
    WAL_DIR,
    WAL_SCHEMA,
    Durability,
    LogUnavailable,
    ParquetSink,
    PredictionLogWriter,
    PredictionRecord,
    WalLocked,
    read_segment,
    run_query,
)
from warehouse.wal import (
    COMPACT_WAL_SCHEMA,
    list_segments,
    records_to_compact_batch,
    records_to_wal_batch,
    segment_name,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_ids = iter(range(10**9))


def fail_next_sync(monkeypatch: pytest.MonkeyPatch, *, armed: bool) -> dict[str, bool]:
    """Make the WAL's next fdatasync fail with EIO once ``fail["next"]`` is set (``armed``:
    already set); later syncs are real."""
    real = wal_module._sync_data
    fail = {"next": armed}

    def flaky_sync(fd: int) -> None:
        if fail["next"]:
            fail["next"] = False
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(wal_module, "_sync_data", flaky_sync)
    return fail


def make_record(model: str = "iris", *, request_id: str | None = None) -> PredictionRecord:
    n = next(_ids)
    return PredictionRecord(
        request_id=request_id or f"req-{n}",
        ts=T0,
        model=model,
        version=1,
        inputs='{"x": [1.0, 2.0]}',
        outputs='{"y": [0]}',
        latency_ms=1.5,
        status=200,
        user_id=None,
        protocol="v2-rest",
        error=None,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        time.sleep(0.01)


def wal_writer(
    root: Path,
    writer_id: str = "w1",
    *,
    flush_rows: int = 1000,
    flush_interval_s: float = 3600,
    durability: str = "fsync",
    sink: Any = None,
    recover_orphans: bool = False,
    sync_interval_s: float = 0.005,
) -> PredictionLogWriter:
    return PredictionLogWriter(
        sink if sink is not None else ParquetSink(root, writer_id),
        flush_rows=flush_rows,
        flush_interval_s=flush_interval_s,
        wal_dir=root / WAL_DIR,
        durability=durability,
        sync_interval_s=sync_interval_s,
        writer_id=writer_id,
        recover_orphans=recover_orphans,
    )


def logged(root: Path) -> list[tuple[str, int]]:
    _, rows = run_query(root, "select request_id, count(*) from predictions group by 1 order by 1")
    return [(r, int(n)) for r, n in rows]


def segments(root: Path, writer_id: str = "w1") -> list[Path]:
    return list_segments(root / WAL_DIR / writer_id)


def die(writer: PredictionLogWriter) -> None:
    """What a SIGKILL leaves: the threads stop, nothing is sealed, the flock goes away."""
    wal = writer.wal
    assert wal is not None
    wal._stopping.set()
    wal._wake.set()
    wal._compact_wake.set()
    for thread in wal._threads:
        thread.join()
    if wal._segment is not None:
        os.close(wal._segment.fd)
    assert wal._lock_fd is not None
    os.close(wal._lock_fd)


# -- durability ---------------------------------------------------------------------------------


def test_record_is_in_the_wal_before_append_sync_returns(tmp_path: Path) -> None:
    writer = wal_writer(tmp_path)
    writer.start()
    try:
        writer.append_sync(make_record(request_id="a"))
        [segment] = segments(tmp_path)
        contents = read_segment(segment)
        assert contents.table.column("request_id").to_pylist() == ["a"]
        assert not contents.torn
        assert logged(tmp_path) == []  # not sealed yet: only the WAL has it
        assert writer.pending == 1
        assert writer.flush() == 1
        assert logged(tmp_path) == [("a", 1)]
        assert segments(tmp_path) == []
    finally:
        writer.close()
    assert not (tmp_path / WAL_DIR / "w1").exists()  # a clean close leaves no directory


def test_concurrent_requests_share_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = 0
    real = wal_module._sync_data

    def counting_sync(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        time.sleep(0.002)  # a slow disk: requests pile up behind each sync
        real(fd)

    monkeypatch.setattr(wal_module, "_sync_data", counting_sync)
    writer = wal_writer(tmp_path, flush_rows=10**6)
    writer.start()

    async def requests(n: int) -> None:
        async def one(i: int) -> None:
            for j in range(5):
                future = writer.append_durable(make_record(request_id=f"r{i}-{j}"))
                assert future is not None
                await future

        await asyncio.gather(*(one(i) for i in range(n)))

    try:
        asyncio.run(requests(200))
        wal = writer.wal
        assert wal is not None
        assert wal.committed_total == 1000
        assert wal.groups_total < 100, "group commit should batch concurrent requests"
        assert syncs <= wal.groups_total + 1  # one per group (+ the new segment's schema)
    finally:
        writer.close()
    assert len(logged(tmp_path)) == 1000


def test_a_lone_request_syncs_on_its_own_thread_and_the_syncer_stays_asleep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alone``: the record is written at once and ``sync_here`` fdatasyncs it in the calling
    thread (the event loop's), completing the future directly; the syncer thread never syncs."""
    synced_on: list[str] = []
    real = wal_module._sync_data

    def recording_sync(fd: int) -> None:
        synced_on.append(threading.current_thread().name)
        real(fd)

    monkeypatch.setattr(wal_module, "_sync_data", recording_sync)
    writer = wal_writer(tmp_path)
    writer.start()
    wal = writer.wal
    assert wal is not None
    loop_thread = threading.current_thread().name
    try:

        async def go() -> None:
            for i in range(5):
                future = writer.append_durable(make_record(request_id=f"a{i}"), alone=True)
                assert future is not None
                assert wal.committed_total == i + 1  # written at once, not next iteration
                assert not future.done()  # not durable yet: nothing synced it
                assert writer.sync_here()
                assert future.done() and future.exception() is None  # no loop turn needed
                await future
                assert not writer.sync_here()  # nothing left to sync

        asyncio.run(go())
        assert synced_on == [loop_thread] * 5
    finally:
        writer.close()
    assert logged(tmp_path) == [(f"a{i}", 1) for i in range(5)]


def test_a_lone_request_that_does_not_sync_is_synced_by_the_syncer(tmp_path: Path) -> None:
    """An ``alone`` append whose caller awaits without ``sync_here`` still completes: a
    callback on the loop's next iteration hands the sync to the syncer thread."""
    writer = wal_writer(tmp_path)
    writer.start()
    try:

        async def go() -> None:
            future = writer.append_durable(make_record(request_id="late"), alone=True)
            assert future is not None
            await asyncio.wait_for(future, 10)

        asyncio.run(go())
        wal = writer.wal
        assert wal is not None
        assert wal.syncs_total >= 1
    finally:
        writer.close()
    assert logged(tmp_path) == [("late", 1)]


def test_write_durability_alone_completes_before_the_loop_turns(tmp_path: Path) -> None:
    writer = wal_writer(tmp_path, durability="write")
    writer.start()
    try:

        async def go() -> None:
            future = writer.append_durable(make_record(request_id="w"), alone=True)
            assert future is not None and future.done()  # written here: nothing to wait for
            assert not writer.sync_here()  # only ``fsync`` syncs on the caller's thread

        asyncio.run(go())
    finally:
        writer.close()
    assert logged(tmp_path) == [("w", 1)]


def test_buffered_durability_neither_waits_nor_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sync(fd: int) -> None:
        raise AssertionError("buffered durability must not fsync the WAL")

    monkeypatch.setattr(wal_module, "_sync_data", no_sync)
    writer = wal_writer(tmp_path, durability="buffered")
    assert writer.durability is Durability.BUFFERED
    writer.start()
    try:

        async def go() -> None:
            assert writer.append_durable(make_record(request_id="b")) is None

        asyncio.run(go())
        writer.append_sync(make_record(request_id="c"))  # returns at once as well
        wal = writer.wal
        assert wal is not None
        wait_for(lambda: wal.committed_total == 2)  # written to the segment all the same
    finally:
        writer.close()
    assert logged(tmp_path) == [("b", 1), ("c", 1)]


def test_write_durability_answers_once_written_and_syncs_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write``: the waiter completes when the record is in the segment file, while the
    background fdatasync is still held back; the sync then follows without another append."""
    release = threading.Event()
    synced: list[int] = []
    real = wal_module._sync_data

    def held_sync(fd: int) -> None:
        release.wait(30)
        real(fd)
        synced.append(fd)

    monkeypatch.setattr(wal_module, "_sync_data", held_sync)
    writer = wal_writer(tmp_path, durability="write", sync_interval_s=0.001)
    assert writer.durability is Durability.WRITE
    writer.start()
    try:

        async def go() -> None:
            for i in range(3):
                future = writer.append_durable(make_record(request_id=f"w{i}"))
                assert future is not None
                await future

        asyncio.run(go())
        writer.append_sync(make_record(request_id="w3"))  # from a thread: the syncer writes it
        [segment] = segments(tmp_path)
        contents = read_segment(segment)  # written (page cache) though no sync has finished
        assert contents.table.column("request_id").to_pylist() == ["w0", "w1", "w2", "w3"]
        assert synced == []
        release.set()
        wal = writer.wal
        assert wal is not None
        wait_for(lambda: wal.syncs_total >= 1 and wal._dirty_since is None)
        assert wal.failed_total == 0
    finally:
        release.set()
        writer.close()
    assert logged(tmp_path) == [(f"w{i}", 1) for i in range(4)]


def test_failed_background_sync_keeps_written_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``write``: a failed fdatasync cannot take back answers already given; the records stay
    and the next ones go to a new segment."""
    fail = fail_next_sync(monkeypatch, armed=True)
    writer = wal_writer(tmp_path, durability="write", sync_interval_s=0.001)
    writer.start()
    try:
        writer.append_sync(make_record(request_id="kept"))
        wal = writer.wal
        assert wal is not None
        wait_for(lambda: not fail["next"] and wal._segment is None)  # failed: retired
        writer.append_sync(make_record(request_id="next"))
        assert wal.failed_total == 0
    finally:
        writer.close()
    assert logged(tmp_path) == [("kept", 1), ("next", 1)]


def test_failed_sync_fails_the_group_and_the_next_group_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail = fail_next_sync(monkeypatch, armed=False)
    writer = wal_writer(tmp_path)
    writer.start()
    try:
        writer.append_sync(make_record(request_id="ok-1"))
        fail["next"] = True
        with pytest.raises(LogUnavailable, match="Input/output error") as excinfo:
            writer.append_sync(make_record(request_id="lost"))
        assert excinfo.value.status_code == 503
        writer.append_sync(make_record(request_id="ok-2"))
        wal = writer.wal
        assert wal is not None and wal.failed_total == 1
        # the failed group was cut off its segment, which was closed; a new one took ok-2
        assert segments(tmp_path)[-1].name.endswith("-000001.arrow")
    finally:
        writer.close()
    assert logged(tmp_path) == [("ok-1", 1), ("ok-2", 1)]


# -- segments and sealing -------------------------------------------------------------------------


def test_segments_rotate_and_rows_reach_parquet_within_seconds(tmp_path: Path) -> None:
    writer = wal_writer(tmp_path, flush_rows=10, flush_interval_s=0.2)
    writer.start()
    try:
        for i in range(25):
            writer.append_sync(make_record(request_id=f"r{i:02d}"))
        wait_for(lambda: len(logged(tmp_path)) == 25, timeout=5)
        files = sorted((tmp_path / "predictions").rglob("*.parquet"))
        assert len(files) >= 3  # 10 + 10 + 5 (the last one closed by age)
        for path in files:
            assert path.name.startswith("part-w1-")
        wait_for(lambda: segments(tmp_path) == [], timeout=5)
    finally:
        writer.close()


def test_the_next_segment_is_a_zero_filled_spare_written_in_place(tmp_path: Path) -> None:
    """Records after the first rotation go into a spare the compactor zero-filled and synced
    ahead of time (an fdatasync then need not commit a new file size); closing a segment cuts
    its unused zeros, a killed writer's zero tail is recovered, its spare removed."""
    writer = wal_writer(tmp_path, flush_rows=5)
    writer.start()
    wal = writer.wal
    assert wal is not None
    spares = tmp_path / WAL_DIR / "w1"
    for i in range(5):
        writer.append_sync(make_record(request_id=f"s{i}"))  # the first segment: 5 rows
    wait_for(lambda: wal._spare is not None)  # prepared by the compactor thread
    spare = wal._spare
    assert spare is not None and spare.capacity >= 256 * 1024
    assert spare.path.parent == spares and spare.path.name.startswith("spare-")
    inode = os.fstat(spare.fd).st_ino
    writer.append_sync(make_record(request_id="s5"))
    wait_for(lambda: len(segments(tmp_path)) == 1)  # the first one sealed
    [segment] = segments(tmp_path)
    assert segment.stat().st_ino == inode  # the spare, renamed
    assert segment.stat().st_size == spare.capacity  # written in place, not appended
    assert read_segment(segment).table.column("request_id").to_pylist() == ["s5"]
    die(writer)  # what a SIGKILL leaves: the open segment with its zero tail, maybe a spare
    rescuer = wal_writer(tmp_path, "rescuer", recover_orphans=True)
    rescuer.start()
    try:
        wait_for(lambda: not spares.exists())
    finally:
        rescuer.close()
    assert logged(tmp_path) == [(f"s{i}", 1) for i in range(6)]


def test_resealing_a_segment_replaces_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = wal_writer(tmp_path)  # not started: this test drives commit and seal itself
    wal = writer.wal
    assert wal is not None
    for i in range(5):
        writer.append(make_record(request_id=f"r{i}"))
    assert wal.commit() == 5
    wal.rotate()
    [segment] = segments(tmp_path)
    real_unlink = Path.unlink

    def crash_before_delete(self: Path, missing_ok: bool = False) -> None:
        if self == segment:
            raise OSError("killed between the Parquet rename and the segment delete")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", crash_before_delete)
    with pytest.raises(OSError, match="killed"):
        wal.seal_closed()
    first = sorted((tmp_path / "predictions").rglob("*.parquet"))
    assert len(first) == 1 and segment.exists()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert wal.seal_closed() == 5  # sealed again: the same file, replaced
    assert sorted((tmp_path / "predictions").rglob("*.parquet")) == first
    assert not segment.exists()
    writer.close()
    assert logged(tmp_path) == [(f"r{i}", 1) for i in range(5)]


def test_sink_failures_keep_segments_for_the_next_process(tmp_path: Path) -> None:
    class BrokenSink:
        writer_id = "w1"

        def write_batch(self, records: list[PredictionRecord]) -> None:
            raise OSError("disk full")

        def write_table(self, table: pa.Table, name: str) -> None:
            raise OSError("disk full")

    writer = wal_writer(tmp_path, sink=BrokenSink())
    writer.start()
    writer.append_sync(make_record(request_id="kept"))
    assert writer.flush() == 0
    writer.close()
    assert len(segments(tmp_path)) == 1  # still on disk, directory unlocked

    rescuer = wal_writer(tmp_path, "w2", recover_orphans=True)
    rescuer.start()
    try:
        # sealed, then the dead writer's directory removed (a moment later: wait for both)
        wait_for(lambda: not (tmp_path / WAL_DIR / "w1").exists())
        assert logged(tmp_path) == [("kept", 1)]
    finally:
        rescuer.close()


def test_unsafe_model_names_are_dropped_when_sealing(tmp_path: Path) -> None:
    writer = wal_writer(tmp_path)
    writer.append(make_record("iris", request_id="good"))
    writer.append(make_record("../../etc", request_id="bad"))
    writer.close()
    assert writer.rejected_total == 1
    assert logged(tmp_path) == [("good", 1)]
    assert not (tmp_path / "etc").exists()


def test_writers_without_write_table_get_records(tmp_path: Path) -> None:
    batches: list[list[PredictionRecord]] = []

    class ListSink:
        def write_batch(self, records: list[PredictionRecord]) -> None:
            batches.append(list(records))

    writer = wal_writer(tmp_path, sink=ListSink())
    record = make_record(request_id="x")
    writer.append_sync(record)
    writer.close()
    assert batches == [[record]]


# -- reading segments ----------------------------------------------------------------------------


FORMATS = ["compact", "full"]
"""Segment formats: today's (``wal_seq`` + a JSON row) and the full schema (written before, and
by erasure's rewrites of dead writers' segments)."""


def _schema_bytes(fmt: str = "compact") -> bytes:
    schema = COMPACT_WAL_SCHEMA if fmt == "compact" else WAL_SCHEMA
    return bytes(schema.serialize().to_pybytes())


def _write_segment(path: Path, *parts: bytes, fmt: str = "compact") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_schema_bytes(fmt) + b"".join(parts))


def _batch(ids: list[str], first_seq: int, fmt: str = "compact") -> bytes:
    records = [make_record(request_id=r) for r in ids]
    encode = records_to_compact_batch if fmt == "compact" else records_to_wal_batch
    return bytes(encode(records, first_seq).serialize().to_pybytes())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", [1, 7, 40, 200])
def test_torn_tail_is_truncated(tmp_path: Path, cut: int, fmt: str) -> None:
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    good = _batch(["a", "b"], 0, fmt) + _batch(["c"], 2, fmt)
    torn = _batch(["d", "e"], 3, fmt)
    _write_segment(path, good, torn[:cut], fmt=fmt)
    contents = read_segment(path, truncate=True)
    assert contents.table.column("request_id").to_pylist() == ["a", "b", "c"]
    assert contents.table.schema.equals(WAL_SCHEMA)
    assert contents.torn
    assert path.stat().st_size == contents.valid_bytes
    again = read_segment(path)
    assert not again.torn and again.table.num_rows == 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_zeroed_tail_and_empty_segments(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    _write_segment(path, _batch(["a"], 0, fmt), b"\0" * 512, fmt=fmt)  # what a power cut leaves
    contents = read_segment(path, truncate=True)
    assert contents.table.column("request_id").to_pylist() == ["a"]
    assert contents.torn
    for data in [b"", _schema_bytes(fmt)[:10], _schema_bytes(fmt)]:
        path.write_bytes(data)
        table = read_segment(path, truncate=True).table
        assert table.num_rows == 0 and table.schema.equals(WAL_SCHEMA)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_rows_in_a_segment_are_kept_once(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    batch = _batch(["a", "b"], 0, fmt)
    _write_segment(path, batch, batch, _batch(["c"], 2, fmt), fmt=fmt)
    assert read_segment(path).table.column("request_id").to_pylist() == ["a", "b", "c"]


def _varied_records() -> list[PredictionRecord]:
    """Records exercising every column: nulls, unicode, a non-UTC ``ts``, the router's fields."""
    plain = make_record(request_id="plain")
    tz = datetime(2024, 5, 1, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-7)))
    return [
        plain,
        dataclasses.replace(
            plain,
            request_id="full",
            ts=tz,
            version=2**40,
            inputs='{"s": "é\\u2028\\"q"}',
            outputs="",
            latency_ms=0.1 + 0.2,
            status=503,
            user_id="user-ü",
            error="boom\n",
            variant="b",
            experiment="exp",
            route="shadow",
            shadow=True,
            region="eu-west",
        ),  # fmt: skip
        dataclasses.replace(plain, request_id="old", ts=datetime(1969, 12, 31, 23, 59, tzinfo=UTC)),
    ]


def test_compact_rows_read_back_as_the_full_schema_exactly(tmp_path: Path) -> None:
    records = _varied_records()
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    compact = records_to_compact_batch(records, 5).serialize().to_pybytes()
    _write_segment(path, compact)
    table = read_segment(path).table
    expected = pa.Table.from_batches([records_to_wal_batch(records, 5)])
    assert table.schema.equals(WAL_SCHEMA)
    assert table.equals(expected)
    assert table.column("ts").to_pylist()[1] == records[1].ts  # same instant, read back in UTC
    assert table.column("ts").type == pa.timestamp("us", tz="UTC")


def test_compact_rows_of_another_version_get_defaults(tmp_path: Path) -> None:
    """A writer that knew other fields: those this version lacks are dropped, the missing get
    their default (the field order comes from the segment's schema metadata)."""
    names = [n for n in WAL_SCHEMA.names if n not in ("wal_seq", "region", "shadow")]
    schema = COMPACT_WAL_SCHEMA.with_metadata(
        {b"roost.wal.row_fields": orjson.dumps(["future", *reversed(names)])}
    )
    record = _varied_records()[1]
    values = [getattr(record, n) for n in reversed(names)]
    values[values.index(record.ts)] = (record.ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    batch = pa.record_batch(
        [pa.array([0], pa.int64()), pa.array([orjson.dumps(["x", *values])], pa.binary())],
        schema=schema,
    )
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    path.write_bytes(schema.serialize().to_pybytes() + batch.serialize().to_pybytes())
    [row] = read_segment(path).table.to_pylist()
    assert row["request_id"] == "full" and row["user_id"] == "user-ü"
    assert row["shadow"] is False and row["region"] is None


def test_non_finite_latency_reads_back_as_nan(tmp_path: Path) -> None:
    record = dataclasses.replace(make_record(request_id="inf"), latency_ms=float("inf"))
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    _write_segment(path, records_to_compact_batch([record], 0).serialize().to_pybytes())
    [latency] = read_segment(path).table.column("latency_ms").to_pylist()
    assert math.isnan(latency)  # JSON has no infinity: orjson writes null


def test_legacy_and_compact_segments_are_recovered_together(tmp_path: Path) -> None:
    """An upgraded gateway finds a dead writer's segments in the old full schema (or rewritten
    by erasure) next to compact ones: all are sealed, each row once, every column intact."""
    records = _varied_records()
    dead = tmp_path / WAL_DIR / "dead"
    dead.mkdir(parents=True)
    (dead / "LOCK").touch()
    full = [dataclasses.replace(r, request_id=f"legacy-{r.request_id}") for r in records]
    _write_segment(
        dead / segment_name(1, 0),
        records_to_wal_batch(full[:2], 0).serialize().to_pybytes(),
        records_to_wal_batch(full[2:], 2).serialize().to_pybytes(),
        _batch(["torn"], 3, "full")[:60],
        fmt="full",
    )
    compact = [dataclasses.replace(r, request_id=f"compact-{r.request_id}") for r in records]
    _write_segment(
        dead / segment_name(2, 1), records_to_compact_batch(compact, 3).serialize().to_pybytes()
    )
    live = wal_writer(tmp_path, "live", recover_orphans=True)
    live.start()
    try:
        wait_for(lambda: not dead.exists())
        columns = ", ".join(n for n in WAL_SCHEMA.names if n != "wal_seq")
        _, rows = run_query(tmp_path, f"select {columns} from predictions order by request_id")
    finally:
        live.close()
    expected = pa.Table.from_batches([records_to_wal_batch(compact + full, 0)])
    expected = expected.sort_by("request_id").drop_columns(["wal_seq"]).to_pylist()
    assert [r[0] for r in rows] == [e["request_id"] for e in expected]
    for row, want in zip(rows, expected, strict=True):
        got = dict(zip(columns.split(", "), row, strict=True))
        assert got["ts"] == want["ts"], got["request_id"]
        assert {k: v for k, v in got.items() if k != "ts"} == {
            k: v for k, v in want.items() if k != "ts"
        }


def test_segments_with_older_columns_are_read(tmp_path: Path) -> None:
    older = pa.schema([f for f in WAL_SCHEMA if f.name not in ("user_id", "error")])
    batch = records_to_wal_batch([make_record(request_id="old")], 0)
    old_batch = pa.RecordBatch.from_arrays([batch.column(f.name) for f in older], schema=older)
    path = tmp_path / "seg-0000000000000000001-000000.arrow"
    path.write_bytes(older.serialize().to_pybytes() + old_batch.serialize().to_pybytes())
    table = read_segment(path).table
    assert table.schema.equals(WAL_SCHEMA)
    assert table.column("request_id").to_pylist() == ["old"]
    assert table.column("user_id").to_pylist() == [None]


# -- recovery -----------------------------------------------------------------------------------


def test_dead_writers_segments_are_recovered_once(tmp_path: Path) -> None:
    dead = wal_writer(tmp_path, "dead", flush_rows=3)
    dead.start()
    for i in range(7):  # segments of 3 + 3 closed, 1 open; the compactor may seal some
        dead.append_sync(make_record(request_id=f"d{i}"))
    die(dead)
    [last] = segments(tmp_path, "dead")[-1:]
    with open(last, "ab") as handle:  # killed in the middle of writing the next group
        handle.write(_batch(["torn"], 7)[:50])

    live = wal_writer(tmp_path, "live", recover_orphans=True)
    live.start()
    try:
        wait_for(lambda: not (tmp_path / WAL_DIR / "dead").exists())
        assert logged(tmp_path) == [(f"d{i}", 1) for i in range(7)]
    finally:
        live.close()


def test_live_writers_are_left_alone_and_ids_are_exclusive(tmp_path: Path) -> None:
    alive = wal_writer(tmp_path, "alive")
    alive.start()
    try:
        alive.append_sync(make_record(request_id="mine"))
        other = wal_writer(tmp_path, "other", recover_orphans=True)
        other.start()
        wal = other.wal
        assert wal is not None
        assert wal.recover_orphans_now() == 0
        assert len(segments(tmp_path, "alive")) == 1
        with pytest.raises(WalLocked):
            wal_writer(tmp_path, "alive").start()
        other.close()
    finally:
        alive.close()
    assert logged(tmp_path) == [("mine", 1)]


_CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path

    from warehouse import ParquetSink, PredictionLogWriter, PredictionRecord

    root = Path(sys.argv[1])
    writer = PredictionLogWriter(
        ParquetSink(root, "child"), flush_rows=40, flush_interval_s=0.05, wal_dir=root / "wal",
        durability=sys.argv[2],
    )
    writer.start()
    i = 0
    while True:
        request_id = f"k{i}"
        writer.append_sync(
            PredictionRecord(
                request_id=request_id, ts=datetime.now(UTC), model="m", version=1,
                inputs="x" * (i % 2000), outputs="[]", latency_ms=0.1, status=200,
                user_id=None, protocol="test", error=None,
            )
        )
        print(request_id, flush=True)
        i += 1
    """
)


@pytest.mark.parametrize(
    ("durability", "kill_after"),
    [("fsync", 5), ("fsync", 150), ("fsync", 600), ("write", 5), ("write", 600)],
)
def test_sigkilled_writer_loses_no_acknowledged_record(
    tmp_path: Path, durability: str, kill_after: int
) -> None:
    """``fsync`` and ``write`` alike: a killed process loses no acknowledged record (``write``
    relies on the kernel's page cache, which outlives the process)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), durability],
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: list[str] = []
    assert child.stdout is not None
    try:
        deadline = time.monotonic() + 30
        while len(acked) < kill_after and time.monotonic() < deadline:
            acked.append(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert len(acked) == kill_after

    rescuer = wal_writer(tmp_path, "rescuer", recover_orphans=True)
    rescuer.start()
    try:
        wait_for(lambda: not (tmp_path / WAL_DIR / "child").exists())
    finally:
        rescuer.close()
    rows = dict(logged(tmp_path))
    assert [r for r in acked if r not in rows] == []
    assert {r: n for r, n in rows.items() if n != 1} == {}


# -- settings -------------------------------------------------------------------------------


def test_from_settings_builds_a_wal_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = RoostSettings(home=tmp_path)
    writer = PredictionLogWriter.from_settings(settings)
    assert writer.durability is Durability.FSYNC
    assert writer.wal is not None and writer.wal.root == settings.logs_dir / WAL_DIR
    monkeypatch.setenv("ROOST_LOG_DURABILITY", "buffered")
    buffered = PredictionLogWriter.from_settings(RoostSettings(home=tmp_path))
    assert buffered.durability is Durability.BUFFERED
    monkeypatch.setenv("ROOST_LOG_DURABILITY", "write")
    monkeypatch.setenv("ROOST_LOG_SYNC_INTERVAL_MS", "2.5")
    written = PredictionLogWriter.from_settings(RoostSettings(home=tmp_path))
    assert written.durability is Durability.WRITE
    assert written.wal is not None and written.wal.sync_interval_s == 0.0025
    monkeypatch.setenv("ROOST_LOG_DURABILITY", "sometimes")
    with pytest.raises(ValueError):
        RoostSettings(home=tmp_path)


def test_waiters_on_several_threads(tmp_path: Path) -> None:
    writer = wal_writer(tmp_path)
    writer.start()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                writer.append_sync(make_record(request_id=f"t{t}-{i:02d}"), timeout=10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert errors == []
    assert len(logged(tmp_path)) == 200
