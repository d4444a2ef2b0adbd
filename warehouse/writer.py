"""Writing the prediction log: a write-ahead log, or an in-memory buffer, in front of a sink.

* :class:`PredictionLogWriter` takes records on the request hot path. Built by
  :meth:`PredictionLogWriter.from_settings` (as the gateway does) it puts them in a write-ahead
  log (:mod:`warehouse.wal`): group commit with one ``write`` per group and one ``fdatasync``
  per round of groups, and :meth:`~PredictionLogWriter.append_durable` gives the caller a future
  that completes once its record is durable, so the gateway answers only then
  (``durability="fsync"``, RPO 0; ``"write"``: once it is in the WAL file, synced within
  ``sync_interval_s``; docs/durability.md). Closed
  WAL segments are sealed into the sink by a compactor thread within
  ``flush_interval_s``-and-a-bit. Built without ``wal_dir`` it is the plain buffer it always was:
  records sit in memory until ``flush_rows`` rows are buffered or the oldest is
  ``flush_interval_s`` old, and are lost if the process dies first.
* a :class:`RecordSink` persists one batch. :class:`ParquetSink` writes Parquet files, partitioned
  ``model=<model>/date=<YYYY-MM-DD>``, each published by an atomic rename; its
  :meth:`~ParquetSink.write_table` writes a sealed WAL segment under a name derived from the
  segment, so sealing the same segment again replaces the same files.

Delivery (buffer mode): a batch the sink fails to write stays buffered and is retried (with
back-off) on the next flush. A sink that can never write some records raises
:class:`RejectedRecords`; the writer drops those (and logs them) and writes the rest. In WAL mode a
segment the sink fails to take stays on disk and is retried; records with unsafe model names are
dropped (and logged) when their segment is sealed.

Privacy (:mod:`warehouse.minimise`, :mod:`warehouse.erasure`): the writer stores each record's
``user_id`` as its keyed hash (``user_ids``) the moment it takes the record, and every seal
(or buffer flush) drops the rows of erased users (:class:`~warehouse.tombstones.Tombstones`,
consulted under the seal barrier).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.minimise import UserIdHasher
from warehouse.records import (
    PREDICTION_SCHEMA,
    PredictionRecord,
    records_from_table,
    records_to_table,
    validate_model_name,
)
from warehouse.tombstones import Tombstones
from warehouse.wal import WAL_DIR, Durability, WriteAheadLog

if TYPE_CHECKING:
    from registry.settings import RoostSettings
    from registry.storage import Location

logger = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
"""Directory under the logs root that holds the partitioned prediction log."""
UPLOAD_DIR = "upload"
"""Under the local logs directory: where sealed files are staged before an upload to object
storage (``ROOST_LOGS_URL=s3://...``)."""

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


class RecordSink(Protocol):
    """Persists batches of prediction records.

    ``write_batch`` either writes the whole batch or raises; after it raises, the caller retries
    the same records later. It must not keep or mutate the list it is given.
    """

    def write_batch(self, records: list[PredictionRecord], /) -> object: ...


class RejectedRecords(ValueError):
    """A sink can never write ``records`` (e.g. an unsafe model name); it wrote nothing."""

    def __init__(self, message: str, records: Sequence[PredictionRecord]) -> None:
        super().__init__(message)
        self.records = list(records)


def default_writer_id() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, safe as part of a file name."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()).lstrip(".")[:48] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ParquetSink:
    """Writes each batch as Parquet files under ``root/predictions/model=<m>/date=<d>/``.

    One file per (model, UTC date) in the batch, named
    ``part-<writer_id>-<ts_ns>-<seq>.parquet``. Each file is written as ``.tmp-part-...`` (a name
    that does not end in ``.parquet``, so readers' ``*.parquet`` globs never see it) in the same
    directory and renamed into place once complete. All files of a batch are staged before any is
    renamed, and renamed ones are removed again if a later rename fails, so a failed batch can be
    retried without duplicating rows.

    ``writer_id`` must be unique among the processes writing to ``root``; the default
    (:func:`default_writer_id`) is. Create the sink in the process that uses it (not before a
    fork).
    """

    def __init__(
        self,
        root: Path,
        writer_id: str | None = None,
        *,
        compression: str = "zstd",
        fsync: bool = True,
    ) -> None:
        if writer_id is None:
            writer_id = default_writer_id()
        if _SAFE_ID.fullmatch(writer_id) is None:
            raise ValueError(
                f"writer_id {writer_id!r} must be 1-100 letters, digits, '-', '_' or '.', "
                "not starting with '.'"
            )
        self.root = Path(root)
        self.writer_id = writer_id
        self.compression = compression
        self.fsync = fsync
        self._seq = itertools.count()
        self._seq_lock = threading.Lock()

    @property
    def predictions_dir(self) -> Path:
        return self.root / PREDICTIONS_DIR

    def partition_dir(self, model: str, day: date) -> Path:
        """``root/predictions/model=<model>/date=<YYYY-MM-DD>``; ``ValueError`` on unsafe names."""
        validate_model_name(model)
        return self.predictions_dir / f"model={model}" / f"date={day.isoformat()}"

    def _next_name(self) -> str:
        with self._seq_lock:
            seq = next(self._seq)
        return f"part-{self.writer_id}-{time.time_ns()}-{seq:06d}"

    def write_batch(self, records: list[PredictionRecord]) -> list[Path]:
        """Write ``records``, one file per (model, date); return the paths of the new files.

        Raises :class:`RejectedRecords` (a ``ValueError``), before writing anything, if any
        record's model name is not a safe path component.
        """
        if not records:
            return []
        groups: dict[tuple[str, date], list[PredictionRecord]] = {}
        rejected: list[PredictionRecord] = []
        bad_names: set[str] = set()
        for record in records:
            try:
                validate_model_name(record.model)
            except ValueError:
                rejected.append(record)
                bad_names.add(repr(record.model))
                continue
            groups.setdefault((record.model, record.utc_date), []).append(record)
        if rejected:
            names = ", ".join(sorted(bad_names))
            raise RejectedRecords(
                f"{len(rejected)} record(s) have unsafe model names: {names}", rejected
            )

        staged: list[tuple[Path, Path]] = []
        try:
            for (model, day), group in groups.items():
                directory = self.partition_dir(model, day)
                directory.mkdir(parents=True, exist_ok=True)
                name = self._next_name()
                tmp = directory / f".tmp-{name}"
                staged.append((tmp, directory / f"{name}.parquet"))
                pq.write_table(records_to_table(group), tmp, compression=self.compression)
                if self.fsync:
                    _fsync_path(tmp)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise

        published: list[Path] = []
        try:
            for tmp, final in staged:
                os.replace(tmp, final)
                published.append(final)
        except BaseException:
            for path in published:
                with contextlib.suppress(OSError):
                    path.unlink()
            for tmp, _ in staged[len(published) :]:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        if self.fsync:
            for directory in {final.parent for final in published}:
                with contextlib.suppress(OSError):
                    _fsync_path(directory)
        return published


    def write_table(self, table: pa.Table, name: str) -> list[Path]:
        """Write ``table`` (the Parquet columns plus ``model``) as ``<name>.parquet`` in each
        (model, UTC date) partition it has rows for; return the paths.

        The WAL's sealer: ``name`` is derived from the segment, so writing the same segment again
        replaces the same files with the same rows. Each file is staged as ``.tmp-<name>``,
        fsynced, renamed into place, and its directory fsynced (when ``fsync``). Raises
        ``ValueError`` before writing anything if a model name is not a safe path component.
        """
        if _SAFE_ID.fullmatch(name) is None:
            raise ValueError(f"file name {name!r} is not safe")
        if table.num_rows == 0:
            return []
        models = pc.unique(table.column("model")).to_pylist()
        for model in models:
            validate_model_name(model)
        staged: list[tuple[Path, Path]] = []
        try:
            for model, day, part in _partitions(table, models):
                directory = self.partition_dir(model, day)
                directory.mkdir(parents=True, exist_ok=True)
                part = part.select(PREDICTION_SCHEMA.names).cast(PREDICTION_SCHEMA)
                tmp = directory / f".tmp-{name}"
                staged.append((tmp, directory / f"{name}.parquet"))
                pq.write_table(part, tmp, compression=self.compression)
                if self.fsync:
                    _fsync_path(tmp)
            for tmp, final in staged:
                os.replace(tmp, final)
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise
        if self.fsync:
            for directory in {final.parent for _, final in staged}:
                _fsync_path(directory)
        return [final for _, final in staged]


def _partitions(table: pa.Table, models: list[str]) -> Iterator[tuple[str, date, pa.Table]]:
    """``table``'s rows per (model, UTC date), in row order within each.

    The usual segment (one model, one day) is passed through whole: grouping and taking rows
    would hold the GIL for milliseconds in the compactor thread while requests wait for it.
    """
    dates = pc.cast(table.column("ts"), pa.date32())
    span = pc.min_max(dates).as_py()
    if len(models) == 1 and span["min"] == span["max"]:
        yield models[0], span["min"], table
        return
    keys = pa.table(
        {
            "model": table.column("model"),
            "date": dates,
            "row": pa.array(range(table.num_rows), pa.int64()),
        }
    )
    groups = keys.group_by(["model", "date"], use_threads=False).aggregate([("row", "list")])
    for model, day, rows in zip(
        groups.column("model").to_pylist(),
        groups.column("date").to_pylist(),
        groups.column("row_list").to_pylist(),
        strict=True,
    ):
        yield model, day, table.take(pa.array(sorted(rows), pa.int64()))


class ObjectStoreSink:
    """A :class:`ParquetSink` whose files end up in object storage (``ROOST_LOGS_URL=s3://...``).

    Each file is written and fsynced locally under ``staging`` (by a :class:`ParquetSink`, in its
    ``predictions/model=<m>/date=<d>/`` layout), then uploaded to the same relative key under
    ``location`` in one PUT, which makes the object visible whole or not at all, so readers'
    ``*.parquet`` globs never see a partial file; then the local copy is removed. A failed
    upload raises (the WAL keeps the segment and seals it again later: the same name, so the
    same keys are overwritten with the same rows).
    """

    def __init__(self, location: Location, staging: Path, writer_id: str | None = None) -> None:
        self.location = location
        self.local = ParquetSink(staging, writer_id)
        self.writer_id = self.local.writer_id

    def _upload(self, paths: list[Path]) -> list[str]:
        urls = []
        for path in paths:
            relative = path.relative_to(self.local.root).as_posix()
            urls.append(self.location.upload(path, relative))
            path.unlink()
        return urls

    def write_batch(self, records: list[PredictionRecord]) -> list[str]:
        return self._upload(self.local.write_batch(records))

    def write_table(self, table: pa.Table, name: str) -> list[str]:
        return self._upload(self.local.write_table(table, name))


def sink_for(settings: RoostSettings) -> RecordSink:
    """Where sealed files go: a :class:`ParquetSink` for a ``file://`` ``logs_location``, an
    :class:`ObjectStoreSink` (staging in ``logs_dir/upload``) for object storage."""
    from registry.storage import Location, is_local, local_path

    url = settings.logs_location
    if is_local(url):
        return ParquetSink(local_path(url))
    return ObjectStoreSink(
        Location.open(url, settings.s3_endpoint_url), settings.logs_dir / UPLOAD_DIR
    )


class SegmentSink(RecordSink, Protocol):
    """A :class:`RecordSink` that can also write a sealed WAL segment idempotently."""

    def write_table(self, table: pa.Table, name: str, /) -> object: ...


class PredictionLogWriter:
    """Takes prediction records on the hot path and gets them into ``sink``.

    **WAL mode** (``wal_dir`` given; what :meth:`from_settings` builds): records go to a
    :class:`~warehouse.wal.WriteAheadLog` in ``wal_dir/<writer_id>``. With
    ``durability="fsync"``, :meth:`append_durable` returns a future that completes once the
    record's commit group is fsynced (:meth:`append_sync` blocks instead); with ``"write"``
    once it is written to the segment (fsynced within ``sync_interval_s``); with ``"buffered"``
    nothing waits and nothing is fsynced. A WAL segment is closed at ``flush_rows`` rows,
    ``segment_bytes`` bytes or ``flush_interval_s`` age and then sealed into ``sink`` (its
    ``write_table`` when it has one, so sealing is idempotent; else ``write_batch``) by a
    background thread, which also recovers segments that dead processes left in ``wal_dir``.
    ``flush()`` commits, closes and seals everything now; ``close()`` does so and releases the
    directory. ``start()`` must run (it is implied by the first ``append_durable``) for commits
    to happen on their own.

    **Buffer mode** (no ``wal_dir``): ``append`` is cheap and thread-safe. After ``start()``, a
    daemon thread flushes once ``flush_rows`` rows are buffered or the oldest buffered row is
    ``flush_interval_s`` old. ``flush()`` writes everything buffered now, from any thread;
    ``close()`` stops the thread and flushes. A failed write keeps the records buffered (in
    order, ahead of newer ones) and the thread retries with exponential back-off, from
    ``flush_interval_s`` up to ``max_retry_backoff_s``. After ``close()`` the writer still
    accepts records, which the next ``flush()``/``close()`` writes (in both modes).
    """

    def __init__(
        self,
        sink: RecordSink,
        flush_rows: int = 5000,
        flush_interval_s: float = 2.0,
        *,
        max_retry_backoff_s: float = 30.0,
        wal_dir: Path | None = None,
        durability: Durability | str = Durability.FSYNC,
        sync_interval_s: float = 0.005,
        segment_bytes: int = 64 * 1024 * 1024,
        writer_id: str | None = None,
        recover_orphans: bool = True,
        user_ids: UserIdHasher | None = None,
        tombstones: Tombstones | None = None,
    ) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.sink = sink
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_retry_backoff_s = max(max_retry_backoff_s, flush_interval_s)

        self._lock = threading.Lock()  # guards _buffer and _oldest
        self._buffer: list[PredictionRecord] = []
        self._oldest = 0.0  # monotonic time the oldest buffered row was appended
        self._flush_lock = threading.Lock()  # one flush at a time; taken before _lock
        self._retry_at = 0.0  # monotonic time before which the thread does not retry
        self._failures = 0  # consecutive failed flushes
        self._written_total = 0
        self._rejected_total = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.user_ids = user_ids if user_ids is not None else UserIdHasher(None)
        """How ``user_id`` is stored (keyed hash, or as given)."""
        if tombstones is None:  # the logs root: the WAL's parent, else the sink's root
            root = Path(wal_dir).parent if wal_dir is not None else getattr(sink, "root", None)
            tombstones = Tombstones(Path(root)) if root is not None else None
        self.tombstones = tombstones
        self.erased_total = 0
        """Rows dropped at seal time because their user was erased meanwhile."""

        self.wal: WriteAheadLog | None = None
        if wal_dir is not None:
            if writer_id is None:
                writer_id = getattr(sink, "writer_id", None) or default_writer_id()
            if _SAFE_ID.fullmatch(writer_id) is None:
                raise ValueError(f"writer_id {writer_id!r} is not safe as a directory name")
            self.wal = WriteAheadLog(
                Path(wal_dir),
                writer_id,
                self._seal,
                durability=durability,
                sync_interval_s=sync_interval_s,
                segment_rows=flush_rows,
                segment_age_s=flush_interval_s,
                segment_bytes=segment_bytes,
                recover_orphans=recover_orphans,
                max_retry_backoff_s=self.max_retry_backoff_s,
            )

    @classmethod
    def from_settings(
        cls, settings: RoostSettings, sink: RecordSink | None = None
    ) -> PredictionLogWriter:
        """A WAL-mode writer with the settings' policy, to a :class:`ParquetSink` at
        ``logs_dir`` (WAL in ``logs_dir/wal``, ``durability`` from ``log_durability``)."""
        return cls(
            sink if sink is not None else sink_for(settings),
            flush_rows=settings.log_flush_rows,
            flush_interval_s=settings.log_flush_interval_s,
            wal_dir=settings.logs_dir / WAL_DIR,
            durability=settings.log_durability,
            sync_interval_s=settings.log_sync_interval_ms / 1000.0,
            segment_bytes=settings.log_segment_bytes,
            user_ids=UserIdHasher.from_settings(settings),
            tombstones=Tombstones(settings.logs_dir),
        )

    @property
    def durability(self) -> Durability | None:
        """The WAL's durability, or None in buffer mode (nothing is durable before a flush)."""
        return self.wal.durability if self.wal is not None else None

    # -- counters ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows buffered (or in the WAL) and not yet written to the sink."""
        if self.wal is not None:
            return self.wal.uncommitted + self.wal.unsealed
        return len(self._buffer)

    @property
    def written_total(self) -> int:
        """Rows the sink has written since this writer was created (WAL mode: including rows
        recovered from dead writers' segments)."""
        if self.wal is not None:
            return self.wal.sealed_total + self.wal.recovered_total
        return self._written_total

    @property
    def rejected_total(self) -> int:
        """Rows dropped because the sink raised :class:`RejectedRecords` for them."""
        return self._rejected_total

    @property
    def running(self) -> bool:
        """Whether the background threads are running."""
        if self.wal is not None:
            return self.wal.running
        return self._thread is not None and self._thread.is_alive()

    # -- hot path ---------------------------------------------------------------------------

    def append(self, record: PredictionRecord) -> None:
        """Take one record without waiting for it to be durable.

        WAL mode: it joins the next commit group. Buffer mode: it is buffered; the flush thread
        wakes once ``flush_rows`` rows are buffered.
        """
        record = self._minimise(record)
        if self.wal is not None:
            self.wal.append(record)
            return
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(record)
            full = len(self._buffer) >= self.flush_rows
        if full and not self._wake.is_set():
            self._wake.set()

    def append_durable(
        self, record: PredictionRecord, *, alone: bool = False
    ) -> asyncio.Future[None] | None:
        """Take one record; return a future of the running event loop that completes once the
        record is durable (``fsync``: written and fdatasynced; ``write``: written to the WAL
        file) or fails with :class:`~warehouse.wal.LogUnavailable`; None when there is nothing
        to wait for (``durability="buffered"``, or buffer mode).

        Call it from a coroutine. Starts the WAL's threads if they are not running. ``alone``:
        the caller is the only request in flight and calls :meth:`sync_here` before it awaits
        the future (:meth:`warehouse.wal.WriteAheadLog.append`).
        """
        wal = self.wal
        if wal is None or wal.durability is Durability.BUFFERED:
            self.append(record)
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not wal.started:
            self.start()
        wal.append(self._minimise(record), future, alone=alone)
        return future

    def sync_here(self) -> bool:
        """Make the records written so far durable in this thread, now (``fsync`` only; see
        :meth:`warehouse.wal.WriteAheadLog.sync_here`); returns whether it synced."""
        wal = self.wal
        return wal is not None and wal.sync_here()

    def append_sync(self, record: PredictionRecord, timeout: float | None = None) -> None:
        """:meth:`append_durable` for threads: block until the record is durable.

        Raises :class:`~warehouse.wal.LogUnavailable` if it could not be made durable, and
        ``TimeoutError`` after ``timeout`` seconds.
        """
        wal = self.wal
        if wal is None or wal.durability is Durability.BUFFERED:
            self.append(record)
            return
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not wal.started:
            self.start()
        wal.append(self._minimise(record), future)
        if wal.durability is Durability.WRITE:
            wal.write_pending()  # here, not behind the syncer's fdatasync
        future.result(timeout)

    def _minimise(self, record: PredictionRecord) -> PredictionRecord:
        """The record as it is stored: ``user_id`` as its keyed hash (a copy; once)."""
        if record.user_id is None or not self.user_ids.keyed:
            return record
        return dataclasses.replace(record, user_id=self.user_ids(record.user_id))

    @contextlib.contextmanager
    def _sealing(self) -> Iterator[dict[str, datetime]]:
        """The seal barrier (shared) and the erased users' tombstones, if this writer has any."""
        if self.tombstones is None:
            yield {}
            return
        with self.tombstones.sealing() as tombstones:
            yield tombstones

    def _write_batch(self, batch: list[PredictionRecord]) -> None:
        """Buffer mode: write ``batch`` minus erased users' rows, under the seal barrier."""
        with self._sealing() as tombstones:
            kept, erased = Tombstones.filter_records(batch, tombstones)
            if erased:
                self.erased_total += erased
                logger.info("prediction log: dropped %d row(s) of erased users", erased)
            if kept:
                self.sink.write_batch(kept)

    # -- flushing ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything buffered now; return how many rows were written.

        Sink errors are logged, not raised: the failed rows stay buffered (see ``pending``).
        WAL mode: commits what was appended, closes the open segment and seals every closed
        one into the sink.
        """
        if self.wal is not None:
            before = self.wal.sealed_total
            try:
                self.wal.commit()
                self.wal.rotate()
                self.wal.seal_closed()
            except Exception as exc:
                logger.error("prediction log: flush failed: %s", exc, exc_info=exc)
            return self.wal.sealed_total - before
        with self._flush_lock:
            with self._lock:
                batch, oldest = self._buffer, self._oldest
                self._buffer = []
            if not batch:
                return 0
            while True:
                try:
                    self._write_batch(batch)
                except RejectedRecords as exc:
                    dropped = {id(r) for r in exc.records}
                    remaining = [r for r in batch if id(r) not in dropped]
                    if len(remaining) < len(batch):
                        logger.error(
                            "prediction log: dropping %d record(s) the sink rejected: %s",
                            len(batch) - len(remaining),
                            exc,
                        )
                        self._rejected_total += len(batch) - len(remaining)
                        batch = remaining
                        if batch:
                            continue
                        return 0
                    self._failed(batch, oldest, exc)
                    return 0
                except Exception as exc:
                    self._failed(batch, oldest, exc)
                    return 0
                self._written_total += len(batch)
                self._failures = 0
                self._retry_at = 0.0
                return len(batch)

    def _failed(self, batch: list[PredictionRecord], oldest: float, exc: Exception) -> None:
        """Put ``batch`` back in front of the buffer and schedule a retry."""
        with self._lock:
            self._buffer = batch + self._buffer
            self._oldest = oldest
            pending = len(self._buffer)
        self._failures += 1
        backoff = min(
            self.flush_interval_s * 2 ** min(self._failures - 1, 30), self.max_retry_backoff_s
        )
        self._retry_at = time.monotonic() + backoff
        logger.error(
            "prediction log: writing %d record(s) failed (%d pending, attempt %d, "
            "next retry in %.1fs): %s",
            len(batch),
            pending,
            self._failures,
            backoff,
            exc,
            exc_info=exc,
        )

    def _seconds_until_due(self) -> float:
        with self._lock:
            rows, oldest = len(self._buffer), self._oldest
        now = time.monotonic()
        if rows == 0:
            return self.flush_interval_s
        due = now if rows >= self.flush_rows else oldest + self.flush_interval_s
        return max(due, self._retry_at) - now

    def _run(self) -> None:
        while not self._stopping.is_set():
            delay = self._seconds_until_due()
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self._seconds_until_due() <= 0:
                try:
                    self.flush()
                except Exception:  # never let the flush thread die
                    logger.exception("prediction log: flush thread error")

    def _seal(self, table: pa.Table, name: str) -> None:
        """The WAL's sealer: write a closed segment's rows to the sink, minus unsafe names."""
        bad = []
        for model in pc.unique(table.column("model")).to_pylist():
            try:
                validate_model_name(model)
            except ValueError:
                bad.append(model)
        if bad:
            mask = pc.is_in(table.column("model"), value_set=pa.array(bad, pa.string()))
            dropped = int(pc.sum(mask).as_py() or 0)
            table = table.filter(pc.invert(mask))
            self._rejected_total += dropped
            logger.error(
                "prediction log: dropping %d record(s) with unsafe model names: %s",
                dropped,
                ", ".join(sorted(repr(m) for m in bad)),
            )
        if table.num_rows == 0:
            return
        with self._sealing() as tombstones:
            table, erased = Tombstones.filter_table(table, tombstones)
            if erased:
                self.erased_total += erased
                logger.info("prediction log: dropped %d row(s) of erased users", erased)
            if table.num_rows == 0:
                return
            write_table = getattr(self.sink, "write_table", None)
            if callable(write_table):
                write_table(table, name)
            else:
                self.sink.write_batch(records_from_table(table))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background threads (daemons); a no-op if they are running.

        WAL mode: takes the writer directory first (``WalLocked`` if a live process holds it).
        """
        if self.wal is not None:
            self.wal.start()
            return
        if self.running:
            return
        self._stopping.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="roost-prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the threads (waiting up to ``timeout`` seconds) and flush what is buffered.

        WAL mode: commits, seals every segment and releases the writer directory; segments that
        cannot be sealed stay on disk for the next process to recover.
        """
        if self.wal is not None:
            self.wal.close(timeout)
            return
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self.flush()
        if self.pending:
            logger.error("prediction log: closed with %d record(s) not written", self.pending)

    def __enter__(self) -> PredictionLogWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
