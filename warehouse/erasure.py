"""Erasure (GDPR art. 17): remove every prediction and feedback row of one user, while gateways
keep writing (``roost erase --user ID [--dry-run]``).

The user's rows are matched on every form the log may store the id under
(:meth:`~warehouse.minimise.UserIdHasher.stored_forms`: its ``ROOST_USER_ID_KEY`` hash, and the
id as given, for rows logged before a key was set), and on ``ts <= erased_at``: what was logged
up to the erasure goes; a request the user makes afterwards is new data and is logged again.
Feedback rows carry no user id: those whose (``model``, ``request_id``) belong to an erased
prediction go with it.

Protocol (every step before the next):

1. **Tombstone.** Append ``sha256(stored id)`` and ``erased_at`` to
   ``<logs_dir>/erasure/tombstones.jsonl`` (fsynced) — never the id.
2. **Barrier.** Take ``erasure/SEAL.lock`` exclusively once (:meth:`Tombstones.barrier`). Every
   sealer (WAL compactor, dead-writer recovery, buffer flush; any process) holds it shared
   while it reads the tombstones, filters and publishes Parquet, so once the barrier is passed
   every seal in progress has published and every later seal drops the user's rows — including
   rows still in a live writer's memory or in its open segment.
3. **Parquet.** Rewrite each prediction file holding the user's rows without them: a temp file
   in the same directory (a name readers' ``*.parquet`` globs skip), fsync, ``rename`` over the
   original, fsync the directory; a file left empty is unlinked. Readers see the old file or
   the new one, never a mix; files sealed meanwhile are already filtered (step 2).
4. **Unsealed WAL segments.** A writer directory whose ``LOCK`` this process can take belongs
   to no live writer: holding that lock (the one recovery takes, so nobody seals them
   meanwhile) its segments are rewritten the same way (an Arrow stream without the rows). A
   live writer's segments are never touched (it appends to its open one): they are read to
   count the rows and their request ids, and the eraser waits (``wait_s``) until every segment
   created before ``erased_at`` (plus a commit lag) has been sealed — filtered, by step 2.
5. **Feedback.** Rewrite the feedback files holding rows for the erased request ids.
6. **Audit.** :func:`record_erasure` appends ``erase_user`` to the registry's audit trail with
   the user's digest, the counts and the files touched — not the rows, not the id.

``dry_run`` does steps 3-5 read-only and reports what would go; it writes nothing, not even a
tombstone. Erasers serialise on ``erasure/ERASE.lock``.

**Local only.** When ``ROOST_LOGS_URL`` puts the sealed log on object storage, :func:`erase_user`
refuses (:class:`~registry.errors.InvalidRequest`) rather than report an erasure it did not do:
the tombstones and the seal barrier (steps 1-2) are files and flocks on one host's disk, so the
gateways of other hosts would keep sealing the user's rows to the shared bucket after the
rewrite. Erasing there needs the tombstones in shared storage first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from registry.errors import InvalidRequest
from warehouse.feedback import FEEDBACK_DIR
from warehouse.minimise import UserIdHasher
from warehouse.tombstones import ERASURE_DIR, Tombstones, user_digest
from warehouse.wal import LOCK_NAME, WAL_DIR, WAL_SCHEMA, list_segments, read_segment
from warehouse.writer import PREDICTIONS_DIR

if TYPE_CHECKING:
    from registry.service import Registry
    from registry.storage import Location

ERASE_LOCK = "ERASE.lock"
COMMIT_LAG_S = 1.0
"""A record stamped before ``erased_at`` may reach a segment created this much later."""
AUDIT_ACTION = "erase_user"


@dataclass(frozen=True)
class FileChange:
    path: str
    """Relative to the logs root."""
    rows_removed: int
    rows_left: int


@dataclass
class ErasureReport:
    user_sha256: str
    erased_at: datetime
    dry_run: bool
    predictions: list[FileChange] = field(default_factory=list)
    feedback: list[FileChange] = field(default_factory=list)
    wal: list[FileChange] = field(default_factory=list)
    """Segments of dead writers, rewritten (or that would be)."""
    live_wal_rows: int = 0
    """Rows in live writers' segments, dropped when those are sealed."""
    unsealed_left: list[str] = field(default_factory=list)
    """Live writers' segments still unsealed when ``wait_s`` ran out (their rows go at seal)."""
    seconds: float = 0.0

    @property
    def prediction_rows(self) -> int:
        return sum(c.rows_removed for c in self.predictions)

    @property
    def feedback_rows(self) -> int:
        return sum(c.rows_removed for c in self.feedback)

    @property
    def wal_rows(self) -> int:
        return sum(c.rows_removed for c in self.wal) + self.live_wal_rows

    def audit_details(self) -> dict[str, Any]:
        """What the audit trail keeps: digest, time, counts, files (no rows, no id)."""
        return {
            "user_sha256": self.user_sha256,
            "erased_at": self.erased_at.isoformat(),
            "prediction_rows": self.prediction_rows,
            "feedback_rows": self.feedback_rows,
            "wal_rows": self.wal_rows,
            "files": [asdict(c) for c in (*self.predictions, *self.wal, *self.feedback)],
            "unsealed_left": self.unsealed_left,
            "seconds": round(self.seconds, 3),
        }


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``path``; yields False (not held) if non-blocking and busy."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _replace_atomically(path: Path, write: Any) -> None:
    """``write(tmp)``, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(f".tmp-erase-{path.name}")
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_path(path.parent)


def _rewrite_parquet(path: Path, table: pa.Table) -> None:
    if table.num_rows == 0:
        path.unlink(missing_ok=True)
        _fsync_path(path.parent)
        return
    _replace_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _rewrite_segment(path: Path, table: pa.Table) -> None:
    """The segment as an Arrow stream (schema, then record batches; no end marker)."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            handle.write(WAL_SCHEMA.serialize())
            for batch in table.to_batches():
                handle.write(batch.serialize())

    _replace_atomically(path, write)


def _user_mask(table: pa.Table, stored: list[str], erased_at: datetime) -> pa.ChunkedArray:
    mask = pc.and_(
        pc.is_in(table.column("user_id"), value_set=pa.array(stored, pa.string())),
        pc.less_equal(table.column("ts"), pa.scalar(erased_at, pa.timestamp("us", tz="UTC"))),
    )
    return pc.fill_null(mask, False)


def _segment_created_ns(path: Path) -> int:
    return int(path.name.split("-")[1])


class _Eraser:
    def __init__(self, logs_dir: Path, stored: list[str], report: ErasureReport) -> None:
        self.logs_dir = Path(logs_dir)
        self.stored = stored
        self.report = report
        self.request_ids: dict[str, set[str]] = {}  # model -> erased request ids
        self.live_seen: set[Path] = set()

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.logs_dir).as_posix()

    def _collect(self, models: pa.ChunkedArray | str, request_ids: pa.ChunkedArray) -> None:
        ids = request_ids.to_pylist()
        names = [models] * len(ids) if isinstance(models, str) else models.to_pylist()
        for model, rid in zip(names, ids, strict=True):
            self.request_ids.setdefault(model, set()).add(rid)

    def predictions(self) -> None:
        for path in sorted((self.logs_dir / PREDICTIONS_DIR).rglob("*.parquet")):
            try:
                file = pq.ParquetFile(path)
                mask = _user_mask(file.read(columns=["user_id", "ts"]), self.stored,
                                  self.report.erased_at)  # fmt: skip
            except FileNotFoundError:  # deleted meanwhile (retention)
                continue
            removed = int(pc.sum(mask).as_py() or 0)
            if not removed:
                continue
            table = file.read()
            model = path.parent.parent.name.removeprefix("model=")
            self._collect(model, table.filter(mask).column("request_id"))
            kept = table.filter(pc.invert(mask))
            if not self.report.dry_run:
                _rewrite_parquet(path, kept)
            self.report.predictions.append(
                FileChange(self._relative(path), removed, kept.num_rows)
            )

    def wal(self) -> None:
        root = self.logs_dir / WAL_DIR
        for directory in sorted(root.iterdir()) if root.is_dir() else []:
            if not directory.is_dir() or directory.name.startswith("."):
                continue
            try:
                with _flock(directory / LOCK_NAME, blocking=False) as dead:
                    if dead:
                        self._dead_writer(directory)
            except FileNotFoundError:  # recovered and removed meanwhile
                continue
            if not dead:
                self._live_writer(directory)

    def _dead_writer(self, directory: Path) -> None:
        for path in list_segments(directory):
            table = read_segment(path).table
            mask = _user_mask(table, self.stored, self.report.erased_at)
            removed = int(pc.sum(mask).as_py() or 0)
            if not removed:
                continue
            self._collect(table.filter(mask).column("model"),
                          table.filter(mask).column("request_id"))  # fmt: skip
            kept = table.filter(pc.invert(mask))
            if not self.report.dry_run:
                _rewrite_segment(path, kept)
            self.report.wal.append(FileChange(self._relative(path), removed, kept.num_rows))

    def _live_writer(self, directory: Path) -> list[Path]:
        """Count (once) the user's rows in a live writer's segments from before the erasure;
        return those segments still on disk."""
        cutoff = self.report.erased_at.timestamp() + COMMIT_LAG_S
        pending = []
        for path in list_segments(directory):
            if _segment_created_ns(path) / 1e9 > cutoff:
                continue
            pending.append(path)
            if path in self.live_seen:
                continue
            self.live_seen.add(path)
            try:
                table = read_segment(path).table
            except FileNotFoundError:  # sealed meanwhile: its rows were filtered
                continue
            mask = _user_mask(table, self.stored, self.report.erased_at)
            filtered = table.filter(mask)
            self.report.live_wal_rows += filtered.num_rows
            self._collect(filtered.column("model"), filtered.column("request_id"))
        return pending

    def wait_for_live_segments(self, wait_s: float) -> None:
        root = self.logs_dir / WAL_DIR
        deadline = time.monotonic() + wait_s
        while True:
            pending: list[Path] = []
            for directory in sorted(root.iterdir()) if root.is_dir() else []:
                if directory.is_dir() and not directory.name.startswith("."):
                    try:
                        with _flock(directory / LOCK_NAME, blocking=False) as dead:
                            pass
                    except FileNotFoundError:
                        continue
                    if not dead:  # a dead writer's segments were rewritten already
                        pending += self._live_writer(directory)
            if not pending or time.monotonic() >= deadline:
                self.report.unsealed_left = [self._relative(p) for p in pending]
                return
            time.sleep(0.05)

    def feedback(self) -> None:
        for path in sorted((self.logs_dir / FEEDBACK_DIR).rglob("*.parquet")):
            model = path.parent.parent.name.removeprefix("model=")
            ids = self.request_ids.get(model)
            if not ids:
                continue
            try:
                file = pq.ParquetFile(path)
                column = file.read(columns=["request_id"]).column("request_id")
            except FileNotFoundError:
                continue
            mask = pc.is_in(column, value_set=pa.array(sorted(ids), pa.string()))
            removed = int(pc.sum(mask).as_py() or 0)
            if not removed:
                continue
            kept = file.read().filter(pc.invert(mask))
            if not self.report.dry_run:
                _rewrite_parquet(path, kept)
            self.report.feedback.append(FileChange(self._relative(path), removed, kept.num_rows))


def erase_user(
    logs_dir: Path,
    user_id: str,
    *,
    hasher: UserIdHasher,
    dry_run: bool = False,
    wait_s: float = 30.0,
    now: datetime | None = None,
    logs_location: Location | None = None,
) -> ErasureReport:
    """Remove (or, ``dry_run``, find) every row of ``user_id`` logged up to now; see the module
    docstring for the protocol. ``hasher`` must hold the key the gateways store ids under.

    ``logs_location`` (:func:`registry.storage.logs_location`): where the sealed log lives;
    object storage is refused with :class:`~registry.errors.InvalidRequest` (see "Local
    only" above), before anything is read or written."""
    if not user_id:
        raise ValueError("user: expected a non-empty user id")
    if logs_location is not None and not logs_location.local:
        raise InvalidRequest(
            f"erasure works on a local prediction log only; ROOST_LOGS_URL puts the sealed log "
            f"on object storage ({logs_location.url}): nothing was erased (the tombstones and "
            f"the seal barrier are per host, so other hosts' gateways would keep sealing this "
            f"user's rows)"
        )
    started = time.monotonic()
    logs_dir = Path(logs_dir)
    stored = hasher.stored_forms(user_id)
    erased_at = (now or datetime.now(UTC)).astimezone(UTC)
    report = ErasureReport(user_digest(stored[0]), erased_at, dry_run)
    eraser = _Eraser(logs_dir, stored, report)
    if dry_run:
        eraser.predictions()
        eraser.wal()
        eraser.feedback()
    else:
        tombstones = Tombstones(logs_dir)
        (logs_dir / ERASURE_DIR).mkdir(parents=True, exist_ok=True)
        with _flock(logs_dir / ERASURE_DIR / ERASE_LOCK):
            tombstones.add(stored, erased_at)
            tombstones.barrier()
            eraser.predictions()
            eraser.wal()
            eraser.wait_for_live_segments(wait_s)
            eraser.feedback()
    report.seconds = time.monotonic() - started
    return report


def record_erasure(registry: Registry, report: ErasureReport, actor: str | None = None) -> None:
    """Append the erasure to the registry's audit trail (never for a dry run)."""
    if report.dry_run:
        raise ValueError("a dry run erased nothing: it is not audited")
    registry.record_event(AUDIT_ACTION, details=report.audit_details(), actor=actor)
