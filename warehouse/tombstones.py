"""Erased users the prediction log's sealers keep out of Parquet (see :mod:`warehouse.erasure`).

``<logs_dir>/erasure/tombstones.jsonl`` holds one JSON line per erasure:
``{"user": sha256(stored user id), "erased_at": ISO time}`` — a digest of the id as the log
stores it (itself an HMAC when ``ROOST_USER_ID_KEY`` is set), never the id. A row whose user's
digest is listed and whose ``ts`` is at or before that ``erased_at`` is dropped when its WAL
segment (or buffer) is sealed; rows logged after the erasure are new data and are kept.

``<logs_dir>/erasure/SEAL.lock`` is the seal barrier: every sealer holds a *shared* ``flock``
on it while it reads the tombstones, filters and publishes its Parquet files
(:meth:`Tombstones.sealing`); the eraser appends its tombstone and then takes the lock
*exclusively* once (:meth:`Tombstones.barrier`), which waits for every seal that may have read
the older list. After the barrier every seal, in any process, sees the new tombstone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from warehouse.records import PredictionRecord

ERASURE_DIR = "erasure"
TOMBSTONES_FILE = "tombstones.jsonl"
SEAL_LOCK = "SEAL.lock"


def user_digest(stored_user_id: str) -> str:
    """The tombstone key of a user id as the log stores it: its SHA-256, hex."""
    return hashlib.sha256(stored_user_id.encode("utf-8")).hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Tombstones:
    """The tombstone list and seal barrier of one logs root."""

    def __init__(self, logs_dir: Path) -> None:
        self.directory = Path(logs_dir) / ERASURE_DIR
        self.path = self.directory / TOMBSTONES_FILE
        self._cache_key: tuple[int, int] | None = None
        self._cache: dict[str, datetime] = {}
        self._cache_lock = threading.Lock()

    def add(self, stored_user_ids: Sequence[str], erased_at: datetime) -> None:
        """Append (durably) a tombstone for each stored form of a user's id."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"user": user_digest(u), "erased_at": erased_at.isoformat()}) + "\n"
            for u in stored_user_ids
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, lines.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_path(self.directory)

    def load(self) -> dict[str, datetime]:
        """Digest -> latest erasure time (re-read only when the file changed)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (stat.st_mtime_ns, stat.st_size)
        with self._cache_lock:
            if key != self._cache_key:
                tombstones: dict[str, datetime] = {}
                for line in self.path.read_text().splitlines():
                    if not line.strip():
                        continue
                    entry = json.loads(line)
                    at = datetime.fromisoformat(entry["erased_at"])
                    previous = tombstones.get(entry["user"])
                    tombstones[entry["user"]] = at if previous is None else max(previous, at)
                self._cache, self._cache_key = tombstones, key
            return self._cache

    @contextlib.contextmanager
    def _flock(self, operation: int) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / SEAL_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def sealing(self) -> Iterator[dict[str, datetime]]:
        """Hold the seal barrier shared while publishing; yields the current tombstones."""
        with self._flock(fcntl.LOCK_SH):
            yield self.load()

    def barrier(self) -> None:
        """Wait for every seal in progress (any process) to finish; later seals see the list."""
        with self._flock(fcntl.LOCK_EX):
            pass

    @staticmethod
    def filter_table(
        table: pa.Table, tombstones: dict[str, datetime]
    ) -> tuple[pa.Table, int]:
        """``table`` (``user_id`` and ``ts`` columns) minus tombstoned rows; (kept, dropped)."""
        if not tombstones or table.num_rows == 0:
            return table, 0
        mask = erased_mask(table, tombstones)
        if mask is None:
            return table, 0
        dropped = int(pc.sum(mask).as_py() or 0)
        return table.filter(pc.invert(mask)), dropped

    @staticmethod
    def filter_records(
        records: list[PredictionRecord], tombstones: dict[str, datetime]
    ) -> tuple[list[PredictionRecord], int]:
        """``records`` minus tombstoned ones; (kept, dropped)."""
        if not tombstones:
            return records, 0
        kept = [
            r
            for r in records
            if r.user_id is None
            or (at := tombstones.get(user_digest(r.user_id))) is None
            or r.ts > at
        ]
        return kept, len(records) - len(kept)


def erased_mask(table: pa.Table, tombstones: dict[str, datetime]) -> pa.ChunkedArray | None:
    """True for rows of a tombstoned user at or before its erasure time; None if there are none."""
    users = table.column("user_id")
    mask: pa.ChunkedArray | None = None
    for user in pc.unique(users).to_pylist():
        if user is None:
            continue
        at = tombstones.get(user_digest(user))
        if at is None:
            continue
        hit = pc.and_(pc.equal(users, user), pc.less_equal(table.column("ts"), pa.scalar(at)))
        mask = hit if mask is None else pc.or_(mask, hit)
    if mask is None:
        return None
    return pc.fill_null(mask, False)
