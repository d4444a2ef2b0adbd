"""Writing the prediction log: an in-memory buffer with a flush policy, in front of a sink.

Two layers, so that a write-ahead log can later sit between them:

* :class:`PredictionLogWriter` buffers records on the request hot path (``append`` is a list
  append under a lock) and hands them to its sink in batches, from a background thread, when
  ``flush_rows`` rows are buffered or the oldest one is ``flush_interval_s`` old.
* a :class:`RecordSink` persists one batch. :class:`ParquetSink` writes Parquet files, partitioned
  ``model=<model>/date=<YYYY-MM-DD>``, each published by an atomic rename.

Delivery: a batch the sink fails to write stays buffered and is retried (with back-off) on the
next flush, so records are not lost while the process lives. A sink that can never write some
records raises :class:`RejectedRecords`; the writer drops those (and logs them) and writes the
rest. Records still buffered when the process dies are lost until the write-ahead log lands.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import pyarrow.parquet as pq

from warehouse.records import PredictionRecord, records_to_table, validate_model_name

if TYPE_CHECKING:
    from registry.settings import RoostSettings

logger = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
"""Directory under the logs root that holds the partitioned prediction log."""

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


class PredictionLogWriter:
    """Buffers prediction records and flushes them to ``sink`` in batches.

    ``append`` is cheap and thread-safe. After ``start()``, a daemon thread flushes once
    ``flush_rows`` rows are buffered or the oldest buffered row is ``flush_interval_s`` old.
    ``flush()`` writes everything buffered now, from any thread; ``close()`` stops the thread and
    flushes. A failed write keeps the records buffered (in order, ahead of newer ones) and the
    thread retries with exponential back-off, from ``flush_interval_s`` up to
    ``max_retry_backoff_s``. After ``close()`` the writer still accepts records, which the next
    ``flush()``/``close()`` writes.
    """

    def __init__(
        self,
        sink: RecordSink,
        flush_rows: int = 5000,
        flush_interval_s: float = 2.0,
        *,
        max_retry_backoff_s: float = 30.0,
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

    @classmethod
    def from_settings(
        cls, settings: RoostSettings, sink: RecordSink | None = None
    ) -> PredictionLogWriter:
        """A writer with the settings' flush policy, to a :class:`ParquetSink` at ``logs_dir``."""
        return cls(
            sink if sink is not None else ParquetSink(settings.logs_dir),
            flush_rows=settings.log_flush_rows,
            flush_interval_s=settings.log_flush_interval_s,
        )

    # -- counters ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written."""
        return len(self._buffer)

    @property
    def written_total(self) -> int:
        """Rows the sink has written since this writer was created."""
        return self._written_total

    @property
    def rejected_total(self) -> int:
        """Rows dropped because the sink raised :class:`RejectedRecords` for them."""
        return self._rejected_total

    @property
    def running(self) -> bool:
        """Whether the background flush thread is running."""
        return self._thread is not None and self._thread.is_alive()

    # -- hot path ---------------------------------------------------------------------------

    def append(self, record: PredictionRecord) -> None:
        """Buffer one record; wakes the flush thread once ``flush_rows`` rows are buffered."""
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(record)
            full = len(self._buffer) >= self.flush_rows
        if full and not self._wake.is_set():
            self._wake.set()

    # -- flushing ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Write everything buffered now; return how many rows were written.

        Sink errors are logged, not raised: the failed rows stay buffered (see ``pending``).
        """
        with self._flush_lock:
            with self._lock:
                batch, oldest = self._buffer, self._oldest
                self._buffer = []
            if not batch:
                return 0
            while True:
                try:
                    self.sink.write_batch(batch)
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

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background flush thread (a daemon); a no-op if it is running."""
        if self.running:
            return
        self._stopping.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="roost-prediction-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the flush thread (waiting up to ``timeout`` seconds) and flush what is buffered."""
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
