"""The prediction log's write-ahead log: durable before the response, Parquet within seconds.

Layout: ``<logs_dir>/wal/<writer_id>/`` holds one writer's segments, ``seg-<ns>-<n>.arrow``
(``<ns>``: the segment's creation time in nanoseconds, ``<n>``: a per-writer counter; names sort
in write order), and a ``LOCK`` file the writer holds an exclusive ``flock`` on while it lives.
Each segment is an Arrow IPC *stream*: the schema message, then one record-batch message per
commit group (no end-of-stream marker), in :data:`COMPACT_WAL_SCHEMA`: ``wal_seq`` (the record's
sequence number in its writer) and ``row``, the record's fields as one JSON array (``orjson``; in
the order the schema's metadata names, ``ts`` as integer microseconds since the epoch, UTC). That
costs a few microseconds per group on the event loop, where building the ~16 typed columns cost
tens; :func:`read_segment` converts a segment to the full :data:`WAL_SCHEMA` (the Parquet columns
plus ``model`` and ``wal_seq``) once, when it is read to be sealed, recovered or erased. Segments
in the full schema (written before, or rewritten by erasure) are read as they are.

Group commit: :meth:`WriteAheadLog.append` puts the record on a list under a lock. On an event
loop it schedules one callback on that loop (``call_soon``), which runs after the callbacks that
are ready now and so takes *every* record appended in that loop iteration: it serializes them as
one record batch and writes it with one ``write(2)`` on the loop (microseconds, no thread
hop). Appends from other threads are written the same way by the syncer thread. Then, by
``durability`` (:class:`Durability`; the three levels of MySQL's
``innodb_flush_log_at_trx_commit``, see docs/durability.md):

* ``fsync``: the group's waiters wait for the syncer thread, which fdatasyncs the segment (and,
  once, its directory) and completes every waiter written before the sync began (asyncio futures
  through one ``call_soon_threadsafe`` per event loop and round). Groups written while a sync
  runs are covered by the next one, so a sync's cost is shared by every request in flight, and
  the loop never waits for the disk.
* ``write``: the waiters complete as soon as the group is written (the page cache survives a
  killed process); the syncer fdatasyncs within ``sync_interval_s`` of the first unsynced write,
  which bounds what a power loss can take.
* ``buffered``: nobody waits and nothing is synced.

Spare segments: with ``fsync`` or ``write``, the compactor thread prepares the next segment
ahead of time (``prealloc_bytes``, 0 to turn this off): ``spare-<n>.arrow``, its schema
written, then filled with zeros to the size the last segment reached with a quarter more (at
least 256 KiB, at most ``segment_bytes``) and fsynced. When a new segment is needed the spare
is renamed to it (the directory is fsynced before a record in it is acknowledged, as for any
new segment), and records overwrite the zeros in place (``pwrite``), so an fdatasync flushes
data blocks only: appending grows the file, and ext4 (like most file systems) must then commit
the new size through its journal on every fdatasync (on this project's disk about 190 -> 120 us
per sync). PostgreSQL zero-fills its WAL segments for the same reason. A segment is closed when
its zeros are used up and cut to its written size when it is closed. A zero tail reads as the
end of a segment's stream, so the unused end of a crashed process's open segment is read and
recovered like any other segment; a spare left behind holds no record and is removed.

Nothing that can take milliseconds runs on the loop: a new segment is created there (``open``
and the schema's ``write``) but its directory entry is fsynced by the syncer before the first
record in it is acknowledged; closed segments are synced and closed by the syncer, and sealed
(Parquet, fsyncs, unlink) by the compactor thread.

A segment is closed once it holds ``segment_rows`` rows, ``segment_bytes`` bytes, or its first
row is ``segment_age_s`` old; the compactor thread then *seals* it: it reads the segment, drops
duplicate rows, hands the table to a ``sealer`` (the Parquet sink writes it under a name derived
from the segment's, staged as a temp file, fsynced, renamed, directory fsynced), and only then
deletes the segment (and fsyncs the directory). Sealing a segment twice writes the same files
again under the same names, so a crash anywhere in between never duplicates a row.

Recovery: a writer directory whose ``LOCK`` can be locked belongs to no live process. At start-up
(and every ``orphan_scan_s`` after) the compactor seals every segment of such directories —
truncating a torn tail, the partial record batch a crash left mid-write, first — and removes the
directory. A new writer directory is created under a dot-name, locked, and renamed into place, so
a recovering process never takes the directory of a writer that is still starting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import logging
import operator
import os
import re
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import accumulate
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from registry.errors import ServiceUnavailable
from warehouse.records import PREDICTION_SCHEMA, PredictionRecord

logger = logging.getLogger(__name__)

WAL_DIR = "wal"
"""Directory under the logs root that holds one directory of segments per writer."""

LOCK_NAME = "LOCK"
SPARE_PREFIX = "spare-"
"""``spare-<n>.arrow``: a writer's next segment, zero-filled ahead of time (holds no record)."""
SEGMENT_SUFFIX = ".arrow"

WAL_SCHEMA: pa.Schema = pa.schema(
    [
        *PREDICTION_SCHEMA,
        pa.field("model", pa.string(), nullable=False),
        pa.field("wal_seq", pa.int64(), nullable=False),
    ]
)
"""Columns of a WAL segment: the Parquet columns, the ``model`` partition key and ``wal_seq``."""

_WAL_STRUCT = pa.struct(list(WAL_SCHEMA))
_ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in WAL_SCHEMA if f.name != "wal_seq")
_record_fields = operator.attrgetter(*_ROW_FIELDS)
_ROW_FIELDS_KEY = b"roost.wal.row_fields"

COMPACT_WAL_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("wal_seq", pa.int64(), nullable=False),
        pa.field("row", pa.binary(), nullable=False),
    ],
    metadata={_ROW_FIELDS_KEY: orjson.dumps(_ROW_FIELDS)},
)
"""Columns of a WAL segment as written: ``wal_seq`` and ``row``, a JSON array of the record's
fields in the order the metadata's ``roost.wal.row_fields`` names (``ts``: epoch microseconds)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_SEGMENT = re.compile(r"seg-(\d{19})-(\d{6,})\.arrow")
_NEW_DIR_PREFIX = ".new-"
_STALE_NEW_DIR_S = 600.0

Waiter = asyncio.Future[None] | concurrent.futures.Future[None]
Sealer = Callable[[pa.Table, str], object]
"""``sealer(table, name)``: persist a closed segment's rows (WAL_SCHEMA) under file name
``name`` (no suffix); raise if it could not. Called again with the same arguments after a crash."""


class Durability(StrEnum):
    """How the gateway treats a prediction-log record before it answers the request (the
    trio of MySQL's ``innodb_flush_log_at_trx_commit`` 1 / 2 / 0; docs/durability.md)."""

    FSYNC = "fsync"
    """The response waits until the record is written and fdatasynced (RPO 0, also on power
    loss)."""
    WRITE = "write"
    """The response waits until the record is written to the segment (``write(2)``: in the
    kernel's page cache, so a killed process loses nothing); a background fdatasync follows
    within ``sync_interval_s``, which bounds what a power loss can take."""
    BUFFERED = "buffered"
    """The response does not wait and nothing is fsynced: a crash of the process can lose the
    records of the last moments, a crash of the machine what the kernel had not written back."""


class LogUnavailable(ServiceUnavailable):
    """The prediction log could not make a record durable; the request is not acknowledged
    (503 with ``Retry-After: 1``)."""

    retry_after_s = 1.0


class SegmentSchemaError(Exception):
    """A segment's columns cannot be read as prediction records (it is left alone)."""


class WalLocked(RuntimeError):
    """Another live process holds this writer directory."""


@dataclass(slots=True)
class SegmentContents:
    """What :func:`read_segment` found: the valid rows and where the valid prefix ends."""

    table: pa.Table
    valid_bytes: int
    file_bytes: int

    @property
    def torn(self) -> bool:
        return self.valid_bytes < self.file_bytes


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sync_data: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def segment_name(created_ns: int, number: int) -> str:
    return f"seg-{created_ns:019d}-{number:06d}{SEGMENT_SUFFIX}"


def sealed_name(writer_id: str, segment: Path) -> str:
    """The Parquet file name (no suffix) a segment is sealed under: ``part-<writer>-<ns>-<n>``."""
    match = _SEGMENT.fullmatch(segment.name)
    if match is None:
        raise ValueError(f"not a WAL segment name: {segment.name}")
    return f"part-{writer_id}-{match.group(1)}-{match.group(2)}"


def list_segments(directory: Path) -> list[Path]:
    """The segments in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / n for n in sorted(names) if _SEGMENT.fullmatch(n)]


def _epoch_us(value: object) -> int:
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MICROSECOND  # exact, where ``timestamp()`` is a float
    raise TypeError(f"prediction record field of type {type(value).__name__} is not JSON")


def records_to_compact_batch(records: Sequence[PredictionRecord], first_seq: int) -> pa.RecordBatch:
    """The records as one record batch in :data:`COMPACT_WAL_SCHEMA`, numbered from
    ``first_seq``: one ``orjson.dumps`` per record and two arrays built from buffers."""
    rows = [
        orjson.dumps(_record_fields(r), default=_epoch_us, option=orjson.OPT_PASSTHROUGH_DATETIME)
        for r in records
    ]
    n = len(rows)
    offsets = array("i", accumulate(map(len, rows), initial=0))
    seqs = array("q", range(first_seq, first_seq + n))
    return pa.RecordBatch.from_arrays(
        [
            pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(seqs)]),
            pa.Array.from_buffers(
                pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(rows))]
            ),
        ],
        schema=COMPACT_WAL_SCHEMA,
    )


def records_to_wal_batch(records: Sequence[PredictionRecord], first_seq: int) -> pa.RecordBatch:
    """The records as one record batch in the full :data:`WAL_SCHEMA`, numbered from
    ``first_seq`` (the format segments had before :data:`COMPACT_WAL_SCHEMA`; erasure still
    rewrites segments in it)."""
    # One conversion of row tuples to a struct array: about a third of the time of one
    # ``pa.array`` per column for the lone record of a request at one connection.
    rows = [(*_record_fields(r), first_seq + i) for i, r in enumerate(records)]
    return pa.RecordBatch.from_struct_array(pa.array(rows, type=_WAL_STRUCT))


def warm_up() -> None:
    """Pay pyarrow's one-time costs (time-zone data, compute kernels, the Parquet writer) now,
    not in the first commit group or the first seal, where they would hold the GIL for a
    hundred milliseconds or more while requests wait."""
    record = PredictionRecord(
        request_id="warm-up", ts=datetime.now(UTC), model="warm-up", version=0, inputs="",
        outputs="", latency_ms=0.0, status=0, user_id=None, protocol="", error=None,
    )  # fmt: skip
    batch = records_to_compact_batch([record], 0)
    compact = pa.ipc.read_record_batch(batch.serialize(), COMPACT_WAL_SCHEMA)
    table = _expand(pa.Table.from_batches([compact]))
    dates = pc.cast(table.column("ts"), pa.date32())
    keys = pa.table({"model": table.column("model"), "date": dates, "row": [0]})
    keys.group_by(["model", "date"], use_threads=False).aggregate([("row", "list")])
    part = table.take(pa.array([0], pa.int64())).select(PREDICTION_SCHEMA.names)
    pq.write_table(part.cast(PREDICTION_SCHEMA), pa.BufferOutputStream(), compression="zstd")


def read_segment(path: Path, *, truncate: bool = False) -> SegmentContents:
    """Read a segment's valid prefix: every complete, well-formed record batch before the first
    partial or malformed message. With ``truncate``, cut the file there (and fsync it).

    Rows that appear twice (same ``wal_seq``; a segment never legitimately holds one twice) are
    kept once, first occurrence first.
    """
    data = path.read_bytes()
    table = _read_whole(data, path)
    if table is not None:
        return _dedupe(path, SegmentContents(table, len(data), len(data)))
    reader = pa.BufferReader(pa.py_buffer(data))
    batches: list[pa.RecordBatch] = []
    valid = 0
    try:
        messages = pa.ipc.MessageReader.open_stream(reader)
        schema = pa.ipc.read_schema(messages.read_next_message())
    except (StopIteration, pa.ArrowException, OSError) as exc:
        schema = None  # a crash while the segment was being created: nothing in it
        if data:
            logger.warning("prediction log: %s: no complete schema message (%s)", path, exc)
    compact = schema is not None and _is_compact(schema)
    if schema is not None:
        if not compact and ("wal_seq" not in schema.names or "request_id" not in schema.names):
            raise SegmentSchemaError(f"{path}: not a prediction-log WAL segment (schema {schema})")
        valid = reader.tell()
        try:
            while True:
                message = messages.read_next_message()
                if message.type != "record batch":
                    raise ValueError(f"unexpected {message.type} message")
                batch = pa.ipc.read_record_batch(message, schema)
                batch.validate(full=True)
                batches.append(batch if compact else _conform(batch))
                valid = reader.tell()
        except StopIteration:
            pass
        except (pa.ArrowException, OSError, ValueError) as exc:
            if data.count(0, valid) != len(data) - valid:  # not a spare's unused end
                logger.warning(
                    "prediction log: %s: torn tail after byte %d (%s)", path, valid, exc
                )
    if compact:
        assert schema is not None
        table = _expand(pa.Table.from_batches(batches, schema=schema), path)
    else:
        table = pa.Table.from_batches(batches, schema=WAL_SCHEMA)
    contents = _dedupe(path, SegmentContents(table, valid, len(data)))
    zeros = contents.torn and data.count(0, valid) == len(data) - valid  # a spare's unused end
    if truncate and zeros:
        os.truncate(path, valid)
    elif truncate and contents.torn:
        with open(path, "r+b") as handle:
            handle.truncate(valid)
            handle.flush()
            os.fsync(handle.fileno())
        logger.warning(
            "prediction log: truncated torn tail of %s (%d -> %d bytes)", path, len(data), valid
        )
    return contents


def _read_whole(data: bytes, path: Path) -> pa.Table | None:
    """The common case in one call (Arrow's C++ reader, not a Python loop per message, so a
    seal holds the GIL for less): a segment in the compact or the full schema whose every
    message is whole, in :data:`WAL_SCHEMA`. None when it is not (an older schema, a torn or
    malformed tail): read it message by message."""
    reader = pa.BufferReader(pa.py_buffer(data))
    try:
        stream = pa.ipc.open_stream(reader)
        compact = _is_compact(stream.schema)
        if not compact and not stream.schema.equals(WAL_SCHEMA):
            return None
        table = stream.read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError):
        return None
    if reader.tell() != len(data):
        return None
    return _expand(table, path) if compact else table.combine_chunks()


def _is_compact(schema: pa.Schema) -> bool:
    return bool(schema.equals(COMPACT_WAL_SCHEMA))


EXPAND_CHUNK_ROWS = 256
"""Rows decoded per ``orjson.loads`` when a compact segment is expanded: one C call holds the
GIL for all of its work (about 1.6 us per row here), so a whole 5,000-row segment in one call
kept the event loop from running for ~8 ms, whatever the switch interval; 256 rows is ~0.4 ms."""


def _expand(table: pa.Table, path: Path | None = None) -> pa.Table:
    """A table in :data:`COMPACT_WAL_SCHEMA` as one in :data:`WAL_SCHEMA`: the rows' JSON
    decoded ``EXPAND_CHUNK_ROWS`` at a time (so a seal on the compactor thread never holds the
    GIL for long), transposed and converted one column at a time (fields the segment's writer
    did not know get their defaults, fields this version does not know are dropped)."""
    metadata = table.schema.metadata or {}
    try:
        names = tuple(orjson.loads(metadata.get(_ROW_FIELDS_KEY, b"null")) or _ROW_FIELDS)
        known = [(i, WAL_SCHEMA.field(n).with_nullable(True)) for i, n in enumerate(names)
                 if n in WAL_SCHEMA.names]  # fmt: skip
        schema = pa.schema([f for _, f in known] + [WAL_SCHEMA.field("wal_seq")])
        raw = table.column("row").combine_chunks()  # one C call that releases the GIL
        seqs = table.column("wal_seq").combine_chunks()
        batches = []
        for start in range(0, len(raw), EXPAND_CHUNK_ROWS):
            chunk = raw.slice(start, EXPAND_CHUNK_ROWS).to_pylist()
            rows = orjson.loads(b"[" + b",".join(chunk) + b"]")
            columns = list(zip(*rows, strict=True))
            if len(columns) != len(names):
                raise ValueError(f"a row has {len(columns)} fields, the segment names {len(names)}")
            arrays = [pa.array(columns[i], type=f.type) for i, f in known]
            arrays.append(seqs.slice(start, len(chunk)))
            batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
        expanded = pa.Table.from_batches(batches, schema=schema).combine_chunks()
    except (orjson.JSONDecodeError, pa.ArrowException, IndexError, TypeError, ValueError) as exc:
        raise SegmentSchemaError(f"{path}: a WAL row cannot be decoded: {exc}") from exc
    # orjson writes a non-finite float as null; the full schema's floats are not nullable
    for name in ("latency_ms",):
        if name in expanded.schema.names:
            index = expanded.schema.get_field_index(name)
            filled = pc.fill_null(expanded.column(index), float("nan"))
            expanded = expanded.set_column(index, expanded.schema.field(index), filled)
    batch = expanded.to_batches()[0] if expanded.num_rows else pa.RecordBatch.from_pylist(
        [], schema=expanded.schema
    )
    return pa.Table.from_batches([_conform(batch)], schema=WAL_SCHEMA)


def _dedupe(path: Path, contents: SegmentContents) -> SegmentContents:
    """Rows that appear twice (same ``wal_seq``) kept once, first occurrence first."""
    table = contents.table
    if table.num_rows:
        seq = table.column("wal_seq").to_numpy()
        _, first = np.unique(seq, return_index=True)
        if len(first) < table.num_rows:
            logger.warning(
                "prediction log: %s: dropping %d duplicate row(s)",
                path,
                table.num_rows - len(first),
            )
            contents.table = table.take(pa.array(np.sort(first)))
    return contents


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch written with an older (or newer) schema, in :data:`WAL_SCHEMA`: columns it lacks
    get the record's default (null when there is none), columns it has extra are dropped."""
    if batch.schema.equals(WAL_SCHEMA):
        return batch
    if batch.schema.names == WAL_SCHEMA.names and batch.schema.types == WAL_SCHEMA.types:
        # the same columns, only nullability differs (a decoded compact segment)
        return pa.RecordBatch.from_arrays(batch.columns, schema=WAL_SCHEMA)
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(PredictionRecord)
        if f.default is not dataclasses.MISSING
    }
    arrays = []
    for field in WAL_SCHEMA:
        index = batch.schema.get_field_index(field.name)
        if index >= 0:
            arrays.append(batch.column(index).cast(field.type))
        elif field.name in defaults or field.nullable:
            arrays.append(pa.array([defaults.get(field.name)] * batch.num_rows, field.type))
        else:
            raise SegmentSchemaError(f"WAL record batch lacks the required column {field.name!r}")
    return pa.RecordBatch.from_arrays(arrays, schema=WAL_SCHEMA)


def _lock(path: Path) -> int | None:
    """Open ``path`` and take an exclusive, non-blocking flock: the fd, or None if held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


@dataclass(slots=True)
class _OpenSegment:
    path: Path
    fd: int
    created: float  # monotonic
    rows: int = 0
    size: int = 0  # bytes written
    synced: int = 0  # bytes known to be on disk (fdatasync returned after they were written)
    synced_rows: int = 0
    dir_synced: bool = False  # the directory entry was fsynced
    capacity: int = 0  # a spare's zero-filled size (0: grows by appending)
    waiters: list[Waiter] = dataclasses.field(default_factory=list)  # fsync: written, unsynced


class WriteAheadLog:
    """One writer's segments under ``root/<writer_id>/``: group commit, rotation, sealing.

    ``open()`` (or ``start()``) takes the directory; ``append`` may be called from any thread
    before or after. ``start()`` runs the committer and compactor threads; without them,
    ``commit()`` and ``seal_closed()`` do the same work in the calling thread. ``close()`` commits
    and seals everything and gives the directory up.
    """

    def __init__(
        self,
        root: Path,
        writer_id: str,
        sealer: Sealer,
        *,
        durability: Durability | str = Durability.FSYNC,
        sync_interval_s: float = 0.005,
        segment_rows: int = 5000,
        segment_age_s: float = 2.0,
        segment_bytes: int = 64 * 1024 * 1024,
        prealloc_bytes: int = 1024 * 1024,
        recover_orphans: bool = True,
        orphan_scan_s: float = 10.0,
        max_retry_backoff_s: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.writer_id = writer_id
        self.directory = self.root / writer_id
        self.sealer = sealer
        self.durability = Durability(durability)
        if not sync_interval_s > 0:
            raise ValueError(f"sync_interval_s must be > 0, got {sync_interval_s}")
        self.sync_interval_s = sync_interval_s
        self.segment_rows = segment_rows
        self.segment_age_s = segment_age_s
        self.segment_bytes = segment_bytes
        self.prealloc_bytes = (
            0 if self.durability is Durability.BUFFERED else min(prealloc_bytes, segment_bytes)
        )
        """Zeros a spare segment starts with (0: no spares); adapts to the segments' sizes."""
        self.recover_orphans = recover_orphans
        self.orphan_scan_s = orphan_scan_s
        self.max_retry_backoff_s = max_retry_backoff_s

        self._lock = threading.Lock()  # guards _pending, _waiters, _flush_loop, _closed
        self._pending: list[PredictionRecord] = []
        self._waiters: list[Waiter] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # a loop flush is scheduled
        self._closed: list[tuple[Path, int]] = []  # closed segments (path, rows), oldest first
        self._wake = _Wakeup()  # the syncer's
        self._compact_wake = threading.Event()
        self._commit_lock = threading.Lock()  # one write at a time; guards the segments, _seq
        self._sync_lock = threading.Lock()  # one sync round at a time (it closes retired fds)
        self._retiring: list[_OpenSegment] = []  # written to, to be synced, closed and sealed
        self._dirty_since: float | None = None  # monotonic time of the first unsynced write
        self._syncing = False  # a sync round is running (a hint: no lock)
        self._seal_lock = threading.Lock()  # one sealer at a time
        self._segment: _OpenSegment | None = None
        self._spare: _OpenSegment | None = None  # zero-filled, synced; the next segment
        self._spare_lock = threading.Lock()  # one spare being prepared at a time
        self._spares_made = 0
        self._seq = 0
        self._segment_number = 0
        self._last_created_ns = 0
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seal_failures = 0
        self._seal_retry_at = 0.0
        self._next_orphan_scan = 0.0

        self.committed_total = 0
        """Rows made durable (or, buffered, written) to a segment."""
        self.sealed_total = 0
        """Rows of this writer's segments handed to the sealer."""
        self.recovered_total = 0
        """Rows sealed from segments of dead writers (and of an earlier life of this one)."""
        self.groups_total = 0
        """Commit groups written (one ``write`` each)."""
        self.syncs_total = 0
        """fdatasyncs of segments (one covers every group written to the segment before it)."""
        self.failed_total = 0
        """Rows whose group could not be written: their waiters got :class:`LogUnavailable`."""

    # -- state ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def started(self) -> bool:
        """Whether ``start()`` ran and ``close()`` did not since (cheap: for the hot path)."""
        return bool(self._threads)

    @property
    def uncommitted(self) -> int:
        return len(self._pending)

    @property
    def unsealed(self) -> int:
        """Rows committed to segments of this writer and not sealed yet."""
        segment = self._segment
        with self._lock:
            closed = sum(max(rows, 0) for _, rows in self._closed)
        return closed + (segment.rows if segment is not None else 0)

    # -- opening ----------------------------------------------------------------------------

    def open(self) -> None:
        """Create (or take over) ``root/<writer_id>`` and lock it; ``WalLocked`` if held."""
        if self._lock_fd is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self.directory.is_dir():
            fd = _lock(self.directory / LOCK_NAME)
            if fd is None:
                raise WalLocked(f"{self.directory} is locked by another live process")
            _remove_spares(self.directory)  # an earlier life's
            leftovers = list_segments(self.directory)
            if leftovers:
                logger.warning(
                    "prediction log: %d segment(s) left in %s by an earlier process; sealing them",
                    len(leftovers),
                    self.directory,
                )
            with self._lock:
                self._closed = [(p, -1) for p in leftovers] + self._closed
        else:
            staging = self.root / f"{_NEW_DIR_PREFIX}{self.writer_id}"
            staging.mkdir(exist_ok=True)
            fd = _lock(staging / LOCK_NAME)
            if fd is None:
                raise WalLocked(f"{staging} is locked by another live process")
            try:
                os.rename(staging, self.directory)
                _fsync_path(self.root)
            except BaseException:
                os.close(fd)
                raise
        self._lock_fd = fd

    # -- hot path ---------------------------------------------------------------------------

    def append(
        self, record: PredictionRecord, waiter: Waiter | None = None, *, alone: bool = False
    ) -> None:
        """Queue ``record`` for the next commit group; ``waiter`` completes once the record is
        written (``write``), or written and fdatasynced (``fsync``), or gets
        :class:`LogUnavailable`. Thread-safe.

        Called on an event loop (and after ``start()``), the group is written by a callback on
        that loop, after the callbacks that are ready now, so every record appended in one loop
        iteration shares one ``write``; from a thread, the syncer thread writes it. With
        ``fsync``, a record that finds the syncer idle is written at once, here, and the sync
        starts while the caller goes on (e.g. encodes its response): waiting for the rest of
        the loop iteration would only delay a sync that nobody shares.

        ``alone``: the caller is the only request in flight and will call :meth:`sync_here`
        before it awaits ``waiter`` (the HTTP edge at concurrency 1). The record is written at
        once (``write`` too) and, with ``fsync``, the syncer is not woken: the caller's own
        fdatasync on the loop saves the two thread hand-offs (waking the syncer, and the
        syncer waking the loop) that nobody else would share. Should the caller not sync
        before the loop's next iteration, a callback hands the sync to the syncer after all.
        """
        loop = _running_loop()
        with self._lock:
            self._pending.append(record)
            if waiter is not None:
                self._waiters.append(waiter)
            if loop is not None and self._threads:
                if self._flush_loop is not None:
                    return  # a flush is scheduled (on this loop or another): it takes this too
                segment = self._segment  # idle: no sync running, none about to start
                idle = not self._syncing and not (segment is not None and segment.waiters)
                now = idle and (alone or self.durability is Durability.FSYNC)
                if not now:
                    self._flush_loop = loop
            else:
                loop = None
        if loop is None:
            if not self._wake.is_set():
                self._wake.set()
        elif not now:
            loop.call_soon(self._flush_on_loop)
        elif alone and self.durability is Durability.FSYNC:
            self._flush_on_loop(wake=False)
            loop.call_soon(self._wake_if_unsynced)
        else:
            self._flush_on_loop()

    def _flush_on_loop(self, wake: bool = True) -> None:
        try:
            self._write_pending(wake)
        except Exception:  # never raise into the event loop; the waiters got their error
            logger.exception("prediction log: writing a commit group failed")

    def _wake_if_unsynced(self) -> None:
        """After an ``alone`` append: the caller did not sync on the loop; the syncer does."""
        segment = self._segment
        if (self._retiring or (segment is not None and segment.waiters)) and (
            not self._wake.is_set()
        ):
            self._wake.set()

    def sync_here(self) -> bool:
        """``fsync``: make what is written durable now, in this thread (on the event loop it
        blocks the loop for one fdatasync), completing the waiters directly; nothing if a sync
        round is running already (its waiters complete through it) or nothing waits. For the
        one request in flight (see ``alone`` in :meth:`append`); returns whether it synced."""
        if self.durability is not Durability.FSYNC:
            return False
        segment = self._segment
        if not (self._retiring or (segment is not None and segment.waiters)):
            return False
        if not self._sync_lock.acquire(blocking=False):
            return False
        try:
            self._syncing = True
            self._sync_locked()
        finally:
            self._syncing = False
            self._sync_lock.release()
        return True

    # -- committing -------------------------------------------------------------------------

    def _new_segment(self) -> _OpenSegment:
        """The next segment (caller holds ``_commit_lock``): the spare if one is ready, else
        a new file with its schema written. Not synced here (it may run on the event loop): the
        syncer fsyncs the directory and the file before it acknowledges a record in it."""
        path = self._next_path()
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                os.rename(spare.path, path)
            except OSError as exc:
                logger.warning("prediction log: could not use the spare segment: %s", exc)
                with contextlib.suppress(OSError):
                    os.close(spare.fd)
            else:
                spare.path, spare.created = path, time.monotonic()
                self._compact_wake.set()  # prepare the one after it
                return spare
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        schema = COMPACT_WAL_SCHEMA.serialize()
        try:
            _write_all(fd, schema, 0)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if self.prealloc_bytes:
            self._compact_wake.set()  # a spare for the next one
        return _OpenSegment(path, fd, time.monotonic(), size=len(schema))

    def _next_path(self) -> Path:
        """The next segment's name (caller holds ``_commit_lock``): names sort in write order."""
        created = max(time.time_ns(), self._last_created_ns + 1)
        self._last_created_ns = created
        number = self._segment_number
        self._segment_number += 1
        return self.directory / segment_name(created, number)

    def _prepare_spare(self) -> None:
        """Compactor thread: create, zero-fill and sync the next segment as ``spare-<n>.arrow``
        (see the module's docstring), unless one is ready."""
        if not self.prealloc_bytes or self._lock_fd is None or self._spare is not None:
            return
        if not self._spare_lock.acquire(blocking=False):
            return
        self._spares_made += 1
        path = self.directory / f"{SPARE_PREFIX}{self._spares_made}{SEGMENT_SUFFIX}"
        fd = -1
        try:
            schema = COMPACT_WAL_SCHEMA.serialize()
            capacity = max(self.prealloc_bytes, len(schema) + 4096)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            _write_all(fd, schema, 0)
            _write_zeros(fd, len(schema), capacity - len(schema))
            os.fsync(fd)
            spare = _OpenSegment(path, fd, time.monotonic(), size=len(schema), capacity=capacity)
            spare.synced = len(schema)
            with self._commit_lock:
                if self._lock_fd is not None:
                    self._spare, fd = spare, -1
        except OSError as exc:
            logger.warning("prediction log: could not prepare a spare segment: %s", exc)
        finally:
            self._spare_lock.release()
            if fd >= 0:
                os.close(fd)
                with contextlib.suppress(OSError):
                    path.unlink()

    def write_pending(self) -> int:
        """Write every record appended so far as one record batch with one ``write``; return
        how many. ``fsync``: the waiters wait for the syncer; otherwise they complete now.
        Thread-safe; never waits for a sync."""
        return self._write_pending()

    def _write_pending(self, wake: bool = True) -> int:
        with self._commit_lock:
            with self._lock:
                records, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                self._flush_loop = None
            if not records:
                return 0
            try:
                if self._lock_fd is None:
                    self.open()
                segment = self._segment
                if segment is None:
                    segment = self._segment = self._new_segment()
                data = records_to_compact_batch(records, self._seq).serialize()
                try:
                    _write_all(segment.fd, data, segment.size)
                except BaseException:
                    # After a failed write the file's state is unknown: cut it back to the last
                    # good group and start a new segment for the next one.
                    with contextlib.suppress(OSError):
                        os.ftruncate(segment.fd, segment.size)
                    self._retire()
                    raise
            except Exception as exc:
                self.failed_total += len(records)
                logger.error("prediction log: could not write %d record(s): %s", len(records), exc)
                _settle(waiters, f"the prediction log could not store the record: {exc}")
                return 0
            self._seq += len(records)
            segment.rows += len(records)
            segment.size += len(data)
            self.committed_total += len(records)
            self.groups_total += 1
            was_dirty = self._dirty_since is not None
            if self.durability is not Durability.BUFFERED and not was_dirty:
                self._dirty_since = time.monotonic()
            if self.durability is Durability.FSYNC:
                segment.waiters.extend(waiters)
            else:
                _settle(waiters, None)
            if (
                segment.rows >= self.segment_rows
                or segment.size >= self.segment_bytes
                or (segment.capacity and segment.size >= segment.capacity)
                or time.monotonic() - segment.created >= self.segment_age_s
            ):
                self._retire()
        if (wake and self.durability is Durability.FSYNC) or (
            self.durability is Durability.WRITE and not was_dirty
        ):
            if not self._wake.is_set():
                self._wake.set()
        return len(records)

    def _retire(self) -> None:
        """Stop writing to the open segment (caller holds ``_commit_lock``); the syncer syncs
        and closes it and queues it for sealing."""
        segment, self._segment = self._segment, None
        if segment is not None:
            self._retiring.append(segment)
            self._wake.set()

    def _sync_round(self) -> None:
        """Make what was written durable: fdatasync each segment written since its last sync
        (and, once, its directory), complete the waiters, close retired segments and queue them
        for sealing. ``buffered`` never syncs."""
        with self._sync_lock:
            self._syncing = True
            try:
                self._sync_locked()
            finally:
                self._syncing = False

    def _sync_locked(self) -> None:
        with self._commit_lock:
            retiring, self._retiring = self._retiring, []
            work = []
            for segment in (*retiring, self._segment):
                if segment is None:
                    continue
                work.append((segment, segment.size, segment.rows, segment.waiters))
                segment.waiters = []
            self._dirty_since = None
        for segment, size, rows, waiters in work:
            if size > segment.synced and self.durability is not Durability.BUFFERED:
                try:
                    if not segment.dir_synced:
                        _fsync_path(self.directory)  # the new file's directory entry
                        segment.dir_synced = True
                    _sync_data(segment.fd)
                except Exception as exc:
                    self._sync_failed(segment, waiters, exc)
                    continue
                self.syncs_total += 1
                segment.synced, segment.synced_rows = size, rows
            _settle(waiters, None)
        for segment in retiring:
            self._fit_prealloc(segment.size)
            with contextlib.suppress(OSError):
                if segment.capacity > segment.size:
                    os.ftruncate(segment.fd, segment.size)  # the unused zeros
                os.close(segment.fd)
            with self._lock:
                self._closed.append((segment.path, segment.rows))
        if retiring:
            self._compact_wake.set()

    def _fit_prealloc(self, used: int) -> None:
        """Size the next spares to what segments reach (with a quarter to spare)."""
        if self.prealloc_bytes:
            wanted = max(256 * 1024, used + used // 4)
            self.prealloc_bytes = min(self.segment_bytes, -(-wanted // 65536) * 65536)

    def _sync_failed(self, segment: _OpenSegment, waiters: list[Waiter], exc: Exception) -> None:
        """A failed fdatasync: the segment's unsynced bytes are in an unknown state. ``fsync``:
        cut them off and fail every record in them; ``write``: their records were already
        acknowledged, so keep them. Either way the next record goes to a new segment."""
        with self._commit_lock:
            waiters = waiters + segment.waiters
            segment.waiters = []
            if self._segment is segment:
                self._retire()
            if self.durability is Durability.FSYNC:
                with contextlib.suppress(OSError):
                    os.ftruncate(segment.fd, segment.synced)
                segment.size, segment.rows = segment.synced, segment.synced_rows
        self.failed_total += len(waiters)
        logger.error(
            "prediction log: fdatasync of %s failed (%d waiting record(s) refused): %s",
            segment.path, len(waiters), exc,
        )  # fmt: skip
        _settle(waiters, f"the prediction log could not store the record: {exc}")

    def commit(self) -> int:
        """Write every record appended so far as one group and sync it now, in this thread;
        return how many records were written."""
        written = self._write_pending()
        self._sync_round()
        return written

    def rotate(self) -> None:
        """Close the open segment now (it becomes sealable)."""
        with self._commit_lock:
            self._retire()
        self._sync_round()

    def _rotate_if_old(self) -> None:
        with self._commit_lock:
            segment = self._segment
            if segment is not None and time.monotonic() - segment.created >= self.segment_age_s:
                self._retire()

    def _next_round_in(self) -> float:
        """Seconds until the syncer has work: records to write or sync, a segment to close."""
        if self._retiring:
            return 0.0
        if self._pending:
            return 0.0 if self._flush_loop is None else 0.01  # a loop flush takes them
        segment = self._segment
        if segment is None:
            return self.segment_age_s
        if segment.waiters:
            return 0.0
        now = time.monotonic()
        due = segment.created + self.segment_age_s
        dirty_since = self._dirty_since
        if dirty_since is not None:
            due = min(due, dirty_since + self.sync_interval_s)
        return max(0.0, due - now)

    def _commit_loop(self) -> None:
        """The syncer: writes records appended from threads, syncs (at once for ``fsync``
        waiters, within ``sync_interval_s`` for ``write``), closes old segments."""
        while True:
            timeout = self._next_round_in()
            if timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()
            try:
                self._write_pending()
                if self._due():
                    self._sync_round()
                self._rotate_if_old()
            except Exception:  # never let the syncer die
                logger.exception("prediction log: sync thread error")
                time.sleep(0.1)
            if self._stopping.is_set() and not self._pending:
                return

    def _due(self) -> bool:
        """Whether a sync round is due now (waiters, a retired segment, or ``write``'s
        interval elapsed)."""
        segment = self._segment
        if self._retiring or (segment is not None and segment.waiters):
            return True
        dirty_since = self._dirty_since
        return dirty_since is not None and (
            time.monotonic() - dirty_since >= self.sync_interval_s or self._stopping.is_set()
        )

    # -- sealing ----------------------------------------------------------------------------

    def seal_closed(self) -> int:
        """Seal every closed segment of this writer, oldest first; return the rows sealed.

        Stops at the first failure (the rest stay queued; the error is raised).
        """
        done = 0
        with self._seal_lock:
            while True:
                with self._lock:
                    if not self._closed:
                        return done
                    path, _rows = self._closed[0]
                rows = self._seal_segment(self.directory, path)
                with self._lock:
                    self._closed.pop(0)
                done += rows
                self.sealed_total += rows

    def _seal_segment(self, directory: Path, path: Path) -> int:
        """Seal one segment (truncating a torn tail first), then delete it; return its rows."""
        if not path.exists():
            return 0
        contents = read_segment(path, truncate=True)
        if contents.table.num_rows:
            self.sealer(contents.table, sealed_name(directory.name, path))
        path.unlink()
        _fsync_path(directory)
        return int(contents.table.num_rows)

    def recover_orphans_now(self) -> int:
        """Seal the segments of every writer directory no live process holds; return rows."""
        total = 0
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return 0
        for name in entries:
            directory = self.root / name
            if name == self.writer_id or not directory.is_dir():
                continue
            if name.startswith(_NEW_DIR_PREFIX):
                _remove_stale_staging(directory)
                continue
            total += self._recover_dir(directory)
        return total

    def _recover_dir(self, directory: Path) -> int:
        try:
            fd = _lock(directory / LOCK_NAME)
        except FileNotFoundError:  # removed meanwhile
            return 0
        if fd is None:
            return 0  # a live writer
        rows = 0
        try:
            if not directory.is_dir():
                return 0
            _remove_spares(directory)  # they hold no record
            segments = list_segments(directory)
            if segments:
                logger.warning(
                    "prediction log: recovering %d segment(s) of dead writer %s",
                    len(segments),
                    directory.name,
                )
            with self._seal_lock:
                for path in segments:
                    rows += self._seal_segment(directory, path)
            self.recovered_total += rows
            if not list_segments(directory):
                (directory / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    directory.rmdir()
                    _fsync_path(self.root)
        finally:
            os.close(fd)
        if rows:
            logger.warning(
                "prediction log: recovered %d row(s) of dead writer %s", rows, directory.name
            )
        return rows

    def _compact_once(self) -> None:
        self._prepare_spare()
        now = time.monotonic()
        if now >= self._seal_retry_at:
            try:
                self.seal_closed()
            except Exception as exc:
                self._seal_failed(exc)
            else:
                self._seal_failures = 0
                self._seal_retry_at = 0.0
        if self.recover_orphans and now >= self._next_orphan_scan:
            self._next_orphan_scan = now + self.orphan_scan_s
            try:
                self.recover_orphans_now()
            except Exception:
                logger.exception("prediction log: recovering dead writers' segments failed")

    def _seal_failed(self, exc: Exception) -> None:
        self._seal_failures += 1
        backoff = min(0.5 * 2 ** min(self._seal_failures - 1, 30), self.max_retry_backoff_s)
        self._seal_retry_at = time.monotonic() + backoff
        logger.error(
            "prediction log: sealing a segment failed (attempt %d, retry in %.1fs): %s",
            self._seal_failures,
            backoff,
            exc,
            exc_info=exc,
        )

    def _compact_loop(self) -> None:
        while not self._stopping.is_set():
            self._compact_once()
            now = time.monotonic()
            deadline = self._next_orphan_scan if self.recover_orphans else now + 60.0
            with self._lock:
                queued = bool(self._closed)
            if queued:
                deadline = min(deadline, self._seal_retry_at)
            self._compact_wake.wait(max(0.0, deadline - now))
            self._compact_wake.clear()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the directory and start the committer and compactor threads."""
        self.open()
        if self.running:
            return
        warm_up()
        self._stopping.clear()
        self._next_orphan_scan = 0.0
        self._threads = [
            threading.Thread(target=self._commit_loop, name="roost-wal-commit", daemon=True),
            threading.Thread(target=self._compact_loop, name="roost-wal-compact", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop the threads, commit what is queued, seal every segment, release the directory.

        Segments that cannot be sealed stay on disk (and the directory stays): the next process
        recovers them.
        """
        self._stopping.set()
        self._wake.set()
        self._compact_wake.set()
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)
        if self._lock_fd is None:
            if self._pending:
                self.open()
            else:
                return
        self.commit()
        self.rotate()
        self._drop_spare()
        try:
            self.seal_closed()
        except Exception as exc:
            logger.error(
                "prediction log: %d row(s) left unsealed in %s (the next start recovers them): %s",
                self.unsealed,
                self.directory,
                exc,
                exc_info=exc,
            )
        fd, self._lock_fd = self._lock_fd, None
        try:
            if not list_segments(self.directory) and not self._pending:
                (self.directory / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.directory.rmdir()
                    _fsync_path(self.root)
        finally:
            if fd is not None:
                os.close(fd)


    def _drop_spare(self) -> None:
        with self._spare_lock, self._commit_lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(OSError):
                os.close(spare.fd)
                spare.path.unlink()


class _Wakeup:
    """Wakes the syncer: a binary semaphore. ``set`` is one C call, where
    ``threading.Event.set`` takes a Condition's lock and notifies in Python on the event loop;
    ``wait`` sleeps in the kernel until set (consuming it) or the timeout."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held: not set

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)

    def clear(self) -> None:
        self._lock.acquire(blocking=False)


def _remove_spares(directory: Path) -> None:
    for spare in directory.glob(f"{SPARE_PREFIX}*{SEGMENT_SUFFIX}"):
        spare.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes | pa.Buffer, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


_ZEROS = bytes(64 * 1024)


def _write_zeros(fd: int, offset: int, count: int) -> None:
    while count > 0:
        chunk = min(count, len(_ZEROS))
        _write_all(fd, memoryview(_ZEROS)[:chunk], offset)
        offset += chunk
        count -= chunk


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _settle(waiters: list[Waiter], error: str | None) -> None:
    """Complete the waiters: directly on this thread's running loop, else one
    ``call_soon_threadsafe`` per event loop."""
    if not waiters:
        return
    current = _running_loop()
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiter in waiters:
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append(waiter)
        elif not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(LogUnavailable(error))
    for loop, futures in by_loop.items():
        if loop is current:
            _settle_futures(futures, error)
            continue
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle_futures, futures, error)


def _settle_futures(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():  # cancelled: the request went away
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(LogUnavailable(error))


def _remove_stale_staging(directory: Path) -> None:
    """Remove a ``.new-*`` directory a writer left when it died while creating it."""
    try:
        if time.time() - directory.stat().st_mtime < _STALE_NEW_DIR_S:
            return
        fd = _lock(directory / LOCK_NAME)
    except OSError:
        return
    if fd is None:
        return
    try:
        if not list_segments(directory):
            (directory / LOCK_NAME).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()
    finally:
        os.close(fd)
