"""Retention: delete ``date=`` partitions once they are past their retention period; audited.

* **Predictions** (served and shadow answers alike: shadows are rows of the same partitions,
  ``shadow = true``) and **feedback** are kept ``ROOST_PREDICTION_RETENTION_DAYS`` (30), in every
  logs root of the home (``logs``, and ``logs-<scope>`` of other scopes, e.g. staging).
* **Features** are kept ``ROOST_FEATURE_RETENTION_DAYS`` (7): every ``date=YYYY-MM-DD``
  partition directory under ``$ROOST_HOME/features``. Today the project keeps no dated feature
  files there: Feast's offline source is one snapshot file (``customer_activity.parquet``) that
  the pipeline regenerates whole, whose rows must span the 30-day window features, and the
  online features a request used are logged inside the prediction's ``inputs`` (so they go with
  the prediction). The rule is in place for dated feature logs (e.g. a Feast logging
  destination partitioned by date) and deletes nothing until one exists.

A partition is expired when its date is **more than** the period before today (UTC): with 30
days, on 2025-03-31 the partition ``date=2025-03-01`` (30 days old) is kept and
``date=2025-02-28`` (31) is deleted. Its files are deleted, then the directory (if nothing new
landed in it meanwhile) and its parent is fsynced. The run appends one ``retention`` record to
the registry's audit trail listing each partition deleted with its files and row count (from
the Parquet footers); nothing is recorded when nothing expired.

**Object storage.** When ``ROOST_LOGS_URL`` puts the sealed prediction log elsewhere (e.g.
``s3://bucket/logs``, and ``<url>-staging`` for the staging scope), the predictions of every
scope are expired there too: the objects of each expired ``date=`` partition are listed, their
footers read for the row count, then deleted (``fs.rm``; an object store has no directories to
remove). Their ``path`` in the report is the partition's URL. Feedback always stays local.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from registry.storage import Location, local_path, logs_location
from warehouse.feedback import FEEDBACK_DIR
from warehouse.writer import PREDICTIONS_DIR

if TYPE_CHECKING:
    from registry.service import Registry
    from registry.settings import RoostSettings

SCOPES = ("production", "staging")
"""The scopes whose object-storage prefixes retention visits (``<url>``, ``<url>-staging``)."""

AUDIT_ACTION = "retention"
FEATURES_DIR = "features"


@dataclass(frozen=True)
class ExpiredPartition:
    kind: str
    """``predictions``, ``feedback`` or ``features``."""
    path: str
    """Relative to the home (absolute outside it; the partition's URL on object storage)."""
    day: date
    files: int
    rows: int


@dataclass
class RetentionReport:
    today: date
    dry_run: bool
    prediction_days: int
    feature_days: int
    partitions: list[ExpiredPartition] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    def audit_details(self) -> dict[str, Any]:
        return {
            "today": self.today.isoformat(),
            "dry_run": self.dry_run,
            "prediction_retention_days": self.prediction_days,
            "feature_retention_days": self.feature_days,
            "rows": self.rows,
            "partitions": [
                {**asdict(p), "day": p.day.isoformat()} for p in self.partitions
            ],
        }


def partition_day(directory: Path) -> date | None:
    """The date of a ``date=YYYY-MM-DD`` directory, or None for any other name."""
    if not directory.name.startswith("date="):
        return None
    try:
        return date.fromisoformat(directory.name.removeprefix("date="))
    except ValueError:
        return None


def is_expired(day: date, today: date, days: int) -> bool:
    """Whether a partition of ``day`` is past a ``days``-day retention on ``today``."""
    return (today - day).days > days


def expired_partitions(root: Path, days: int, today: date) -> list[Path]:
    """Every ``date=`` directory under ``root`` (any depth) past ``days``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for directory in root.rglob("date=*"):
        day = partition_day(directory)
        if directory.is_dir() and day is not None and is_expired(day, today, days):
            found.append((day, directory))
    return [d for _, d in sorted(found)]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _count_rows(files: list[Path]) -> int:
    rows = 0
    for path in files:
        with contextlib.suppress(OSError, ValueError):  # unreadable: deleted all the same
            rows += pq.ParquetFile(path).metadata.num_rows
    return rows


def _delete_partition(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # a late row landed in it: the next run deletes it
        directory.rmdir()
    _fsync_dir(directory.parent)


def _scope_of(root: Path) -> str | None:
    """The scope whose logs root ``root`` is (``logs``: production, ``logs-<scope>``)."""
    if root.name == "logs":
        return "production"
    return root.name.removeprefix("logs-") if root.name.startswith("logs-") else None


def _sealed_location(settings: RoostSettings, scope: str) -> Location:
    return logs_location(settings.model_copy(update={"scope": scope}))


def _targets(settings: RoostSettings) -> list[tuple[str, Path, int]]:
    roots = {settings.logs_dir}
    if settings.home.is_dir():
        roots |= {p for p in settings.home.glob("logs-*") if p.is_dir()}
    days = settings.prediction_retention_days
    targets = []
    for root in sorted(roots):
        targets.append((PREDICTIONS_DIR, root / PREDICTIONS_DIR, days))
        targets.append((FEEDBACK_DIR, root / FEEDBACK_DIR, days))
        scope = _scope_of(root)
        if settings.logs_url and scope in SCOPES:  # ROOST_LOGS_URL on another local directory
            location = _sealed_location(settings, scope)
            if location.local and local_path(location.url) != root:
                targets.append((PREDICTIONS_DIR, local_path(location.url) / PREDICTIONS_DIR, days))
    targets.append((FEATURES_DIR, settings.home / FEATURES_DIR, settings.feature_retention_days))
    return targets


def _remote_locations(settings: RoostSettings) -> list[Location]:
    """The sealed log's location of every scope, when ``ROOST_LOGS_URL`` is object storage."""
    if not settings.logs_url:
        return []
    locations = [_sealed_location(settings, scope) for scope in SCOPES]
    return [loc for loc in locations if not loc.local]


def _count_remote_rows(location: Location, files: list[str]) -> int:
    rows = 0
    for path in files:
        with contextlib.suppress(OSError, ValueError), location.fs.open(path, "rb") as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
    return rows


def _remote_expired(
    location: Location, days: int, today: date
) -> list[tuple[date, str, list[str]]]:
    """(day, partition path in ``location.fs``, its files) of every expired ``date=`` partition
    of the sealed predictions at ``location``, oldest first (one recursive listing)."""
    partitions: dict[str, list[str]] = {}
    for path in location.glob(f"{PREDICTIONS_DIR}/**/*.parquet"):
        partitions.setdefault(path.rsplit("/", 1)[0], []).append(path)
    found = []
    for directory, files in partitions.items():
        day = partition_day(Path(directory.rsplit("/", 1)[-1]))
        if day is not None and is_expired(day, today, days):
            found.append((day, directory, sorted(files)))
    return sorted(found)


def _relative_to_home(directory: Path, home: Path) -> str:
    try:
        return directory.relative_to(home).as_posix()
    except ValueError:  # ROOST_LOGS_URL on a local directory outside the home
        return directory.as_posix()


def apply_retention(
    settings: RoostSettings,
    *,
    registry: Registry | None = None,
    dry_run: bool = False,
    today: date | None = None,
    actor: str | None = None,
) -> RetentionReport:
    """Delete (or, ``dry_run``, list) every expired partition; audit the deletions in
    ``registry`` when given."""
    today = today or datetime.now(UTC).date()
    report = RetentionReport(
        today, dry_run, settings.prediction_retention_days, settings.feature_retention_days
    )
    for kind, root, days in _targets(settings):
        for directory in expired_partitions(root, days, today):
            files = sorted(directory.glob("*.parquet"))
            day = partition_day(directory)
            assert day is not None
            report.partitions.append(
                ExpiredPartition(
                    kind, _relative_to_home(directory, settings.home), day, len(files),
                    _count_rows(files),
                )
            )
            if not dry_run:
                _delete_partition(directory)
    for location in _remote_locations(settings):
        days = settings.prediction_retention_days
        for day, partition, remote_files in _remote_expired(location, days, today):
            relative = partition.removeprefix(location.root).lstrip("/")
            report.partitions.append(
                ExpiredPartition(PREDICTIONS_DIR, location.url_of(relative), day,
                                 len(remote_files), _count_remote_rows(location, remote_files))
            )
            if not dry_run:
                location.fs.rm(remote_files)
    if registry is not None and not dry_run and report.partitions:
        registry.record_event(AUDIT_ACTION, details=report.audit_details(), actor=actor)
    return report
