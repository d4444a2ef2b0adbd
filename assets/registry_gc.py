"""The ``registry_gc`` asset: archive long-deprecated versions and delete their artifacts.

Versions at scale: a model may have tens of versions, and each artifact can be gigabytes. Once a
day (``ROOST_REGISTRY_GC_SCHEDULE``) :func:`collect_garbage`

1. moves every DEPRECATED version deprecated more than ``ROOST_DEPRECATED_RETENTION_DAYS`` ago
   (read from the audit trail's last transition to DEPRECATED) to ARCHIVED, audited as a
   transition by the actor ``roost-gc``, and
2. deletes from the artifact store the file of every ARCHIVED version whose sha256 no
   non-archived version of ANY model shares (the store is content-addressed), audited as
   ``gc_delete_artifact`` with the hash and size.

Never touched, whatever their age: a version any traffic policy can send traffic or mirrored
traffic to (production, canary, experiment variants, shadows, segments, bandit arms), and each
model's rollback target, the version ``roost rollback`` would bring back
(:func:`registry.rollback.previous_production`). Each step runs inside one registry write
transaction, so a concurrent rollback or registration is seen either wholly before or after.
``roost gc [--dry-run]`` runs the same code (:mod:`orchestration.cli_gc`).
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from assets.resources import RegistryResource
from assets.schedules import asset_cron_schedule
from registry import Registry, RoostSettings, State, audit
from registry.errors import Conflict
from registry.policies import policy_of
from registry.rollback import previous_production
from registry.tables import AuditRow, DeploymentRow, VersionRow

ASSET = "registry_gc"
JOB = "registry_gc_job"
SCHEDULE = "registry_gc_schedule"
GROUP = "registry"
ACTOR = "roost-gc"


@dataclass
class GcReport:
    """What a run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    retention_days: float
    archived: list[tuple[str, int]] = field(default_factory=list)
    kept: dict[tuple[str, int], str] = field(default_factory=dict)
    """DEPRECATED versions left alone, with why."""
    deleted: list[str] = field(default_factory=list)
    """sha256 of artifacts deleted from the store."""
    freed_bytes: int = 0

    def lines(self) -> list[str]:
        verb = "would " if self.dry_run else ""
        out = [f"{verb}archive {m} v{v}" for m, v in self.archived]
        out += [f"keep {m} v{v}: {why}" for (m, v), why in sorted(self.kept.items())]
        out += [f"{verb}delete artifact sha256:{d}" for d in self.deleted]
        out.append(
            f"{len(self.archived)} version(s) {verb}archived, {len(self.deleted)} artifact(s) "
            f"{verb}deleted ({self.freed_bytes / 1e6:.1f} MB), retention "
            f"{self.retention_days:g} day(s)"
        )
        return out


def protected_versions(session: Session) -> dict[tuple[str, int], str]:
    """Every version that serves or could be rolled back to, with why."""
    protected: dict[tuple[str, int], str] = {}
    for deployment in session.execute(select(DeploymentRow)).scalars():
        policy = policy_of(deployment)
        for version in policy.versions():
            protected[(deployment.model, version)] = "routed by the traffic policy"
        if deployment.production_version is not None:
            protected[(deployment.model, deployment.production_version)] = "production"
        try:
            target = previous_production(session, deployment.model, deployment.production_version)
        except Conflict:
            continue
        protected.setdefault((deployment.model, target), "rollback target")
    return protected


def deprecated_since(
    session: Session, rows: Iterable[VersionRow]
) -> dict[tuple[str, int], datetime]:
    """When each version last moved to DEPRECATED (audit trail; ``updated_at`` if none)."""
    wanted = {(r.model, r.version): r for r in rows}
    since: dict[tuple[str, int], datetime] = {}
    moves = session.execute(
        select(AuditRow.model, AuditRow.version, AuditRow.ts, AuditRow.details)
        .where(AuditRow.action == "transition")
        .order_by(AuditRow.id)
    ).all()
    for model, version, ts, details in moves:
        key = (model, version)
        if key in wanted and (details or {}).get("to") == State.DEPRECATED.value:
            since[key] = datetime.fromisoformat(ts)
    for key, row in wanted.items():
        if key not in since:
            updated = row.updated_at
            since[key] = updated if updated.tzinfo else updated.replace(tzinfo=UTC)
    return since


def _archive(
    registry: Registry, report: GcReport, cutoff: datetime, session: Session
) -> None:
    deprecated = list(
        session.execute(select(VersionRow).where(VersionRow.state == State.DEPRECATED.value))
        .scalars()
    )
    protected = protected_versions(session)
    since = deprecated_since(session, deprecated)
    for row in sorted(deprecated, key=lambda r: (r.model, r.version)):
        key = (row.model, row.version)
        if key in protected:
            report.kept[key] = protected[key]
        elif since[key] > cutoff:
            report.kept[key] = f"deprecated {since[key]:%Y-%m-%d}, within retention"
        else:
            report.archived.append(key)
            if not report.dry_run:
                reason = (f"registry gc: deprecated since {since[key]:%Y-%m-%d}, longer than "
                          f"the {report.retention_days:g}-day retention")
                registry._transition(session, row, State.ARCHIVED, ACTOR, reason)


def _delete_artifacts(registry: Registry, report: GcReport, session: Session) -> None:
    rows = session.execute(select(VersionRow.sha256, VersionRow.state, VersionRow.size_bytes,
                                  VersionRow.model, VersionRow.version)).all()
    archived_now = set(report.archived)
    live: set[str] = set()
    candidates: dict[str, tuple[int, str, int]] = {}
    for sha, state, size, model, version in rows:
        if state == State.ARCHIVED.value or (model, version) in archived_now:
            candidates.setdefault(sha, (size, model, version))
        else:
            live.add(sha)
    for sha, (size, model, version) in sorted(candidates.items()):
        if sha in live or not registry.artifacts.exists(sha):
            continue
        report.deleted.append(sha)
        report.freed_bytes += size
        if report.dry_run:
            continue
        registry.artifacts.delete(sha)
        audit.append(session, actor=ACTOR, action="gc_delete_artifact", model=model,
                     version=version, details={"sha256": sha, "size_bytes": size,
                                               "store": registry.artifacts.url})


def collect_garbage(
    registry: Registry,
    *,
    retention_days: float,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Archive DEPRECATED versions past retention, then delete unshared archived artifacts."""
    report = GcReport(dry_run=dry_run, retention_days=retention_days)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    transaction = registry._read if dry_run else registry._write
    with transaction() as session:
        _archive(registry, report, cutoff, session)
        if not dry_run:
            session.flush()
    with transaction() as session:  # its own transaction: sees every archive committed
        _delete_artifacts(registry, report, session)
    return report


@asset(name=ASSET, group_name=GROUP, compute_kind="python",
       description="Archive DEPRECATED versions past ROOST_DEPRECATED_RETENTION_DAYS and delete "
                   "their artifacts (never a serving version or a rollback target).")
def registry_gc(
    context: AssetExecutionContext, registry: RegistryResource
) -> MaterializeResult:  # type: ignore[type-arg]
    """Run :func:`collect_garbage` with the configured retention."""
    settings = registry.settings()
    reg = registry.get_registry()
    try:
        report = collect_garbage(reg, retention_days=settings.deprecated_retention_days)
    finally:
        reg.close()
    for line in report.lines():
        context.log.info(line)
    metadata: dict[str, Any] = {
        "archived": len(report.archived),
        "artifacts_deleted": len(report.deleted),
        "freed_mb": round(report.freed_bytes / 1e6, 3),
        "kept": len(report.kept),
        "retention_days": settings.deprecated_retention_days,
        "summary": MetadataValue.md("\n".join(f"- {line}" for line in report.lines())),
    }
    return MaterializeResult(metadata=metadata)


def registry_gc_schedule(settings: RoostSettings | None = None) -> ScheduleDefinition:
    """The schedule (``ROOST_REGISTRY_GC_SCHEDULE``, daily) that runs :data:`ASSET`."""
    return asset_cron_schedule(
        ASSET, job=JOB, schedule=SCHEDULE,
        cron=(settings or RoostSettings()).registry_gc_schedule,
        job_description="Archive old DEPRECATED versions, delete their artifacts.",
        description="Registry garbage collection.",
    )


def registry_gc_definitions(
    settings: RoostSettings | None = None,
) -> tuple[list[AssetsDefinition], list[ScheduleDefinition]]:
    """The asset and its schedule, for the code location."""
    return [registry_gc], [registry_gc_schedule(settings)]
