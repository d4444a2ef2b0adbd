"""The registry: models, versions, lifecycle, deployments and audit over one SQLAlchemy database.

Every write runs in one transaction that first locks the ``generation`` counter row, so the audit
chain and version numbers stay consistent under concurrent writers on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from registry import audit, migrations
from registry.artifacts import ArtifactStore, sha256_bytes
from registry.dburl import RegistryUnavailable, connect_args, describe, unavailable
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.lifecycle import DEPLOY_PATH, ROUTABLE, SERVABLE, State, check_transition
from registry.notify import send as notify_change
from registry.notify import sqlalchemy_url
from registry.onnx_rewrite import servable_signature
from registry.policies import Change, PolicyStore, policy_of
from registry.rollback import rollback_in
from registry.rollout import RolloutMethods
from registry.rollout_store import RolloutStore
from registry.serving_config import ServingConfig
from registry.settings import RoostSettings
from registry.signature import Signature
from registry.tables import (
    AuditRow,
    CounterRow,
    DeploymentRow,
    ModelRow,
    VersionRow,
    utcnow,
)
from registry.traffic import TrafficPolicy

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"model name {name!r} is invalid: use 1-128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    sha256: str
    size_bytes: int
    state: State
    signature: Signature
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    tags: dict[str, Any]
    config: dict[str, Any]
    registered_by: str
    description: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: VersionRow) -> VersionInfo:
        return cls(
            model=row.model,
            version=row.version,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            state=State(row.state),
            signature=Signature.from_dict(row.signature),
            metrics=dict(row.metrics or {}),
            lineage=dict(row.lineage or {}),
            tags=dict(row.tags or {}),
            config=dict(row.config or {}),
            registered_by=row.registered_by,
            description=row.description,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "state": self.state.value,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "signature": self.signature.to_dict(),
            "metrics": self.metrics,
            "lineage": self.lineage,
            "tags": self.tags,
            "config": self.config,
            "registered_by": self.registered_by,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class RegistrationResult:
    """What :meth:`Registry.register` did: ``created`` is False when the model already had a
    version with these bytes (``version``, in whatever state it is now)."""

    version: VersionInfo
    created: bool


@dataclass(frozen=True)
class DeploymentInfo:
    model: str
    production_version: int | None
    generation: int
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "production_version": self.production_version,
            "generation": self.generation,
            "policy": self.policy,
        }


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    versions: int
    production_version: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "versions": self.versions,
            "production_version": self.production_version,
        }


def _make_engine(url: str, *, immediate: bool) -> Engine:
    if not url.startswith("sqlite"):
        # PostgreSQL (psycopg 3): READ COMMITTED; writers serialise on the counter row lock.
        # pre-ping: after a failover pooled connections to the old server are replaced, and
        # libpq picks the server the URL's target_session_attrs asks for (registry/dburl.py).
        return create_engine(
            sqlalchemy_url(url), pool_pre_ping=True, connect_args=connect_args(url)
        )
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that BEGIN IMMEDIATE below is honoured.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front: no deadlock between two read-then-write transactions.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _use_wal(cursor: Any) -> None:
    """Put the SQLite file in WAL mode (persistent: later connections find it set). Switching
    needs an exclusive lock that SQLite may refuse at once ("database is locked") while other
    connections open the same fresh file, busy timeout or not, so the switch is retried."""
    for attempt in range(50):
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.02 * (attempt + 1))


class Registry(RolloutMethods):
    """Models, versions, their lifecycle, deployments and the audit trail.

    Staged rollouts live in ``self.rollouts`` (:mod:`registry.rollout_store`); the rollout
    methods (``start_rollout``, ``advance_rollout`` ...) come from
    :class:`~registry.rollout.RolloutMethods`.

    Traffic policies live in ``self.traffic`` (a :class:`~registry.policies.PolicyStore`, every
    change one transaction with a generation compare-and-set); the policy methods below are its
    public face.
    """

    def __init__(
        self,
        url: str,
        artifacts_dir: Path | ArtifactStore,
        actor: str = "roost",
        *,
        read_url: str | None = None,
    ) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        # reads (polls, snapshots, listings) may go to a replica: ROOST_DATABASE_READ_URL
        self.read_url = read_url or url
        self.engine = _make_engine(url, immediate=True)
        self._read_engine = (
            _make_engine(self.read_url, immediate=False)
            if url.startswith("sqlite") or self.read_url != url
            else self.engine
        )
        self.artifacts = (  # a directory, or a store built from ROOST_ARTIFACTS_URL
            artifacts_dir if isinstance(artifacts_dir, ArtifactStore)
            else ArtifactStore(artifacts_dir)
        )
        self.default_actor = actor
        self.traffic = PolicyStore(self)
        self.rollouts = RolloutStore(self)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        # the schema is Alembic's (registry/migrations): upgraded to head, a create_all-era
        # database stamped first; the generation counter row is created there too
        self._notify = self.engine.dialect.name == "postgresql"
        try:
            migrations.upgrade(self.engine, check=self._read_engine)
        except DBAPIError as exc:
            if self._notify and unavailable(exc):
                raise self._unavailable(exc, "checking the schema") from exc
            raise

    @classmethod
    def from_settings(cls, settings: RoostSettings) -> Registry:
        return cls(
            settings.registry_url,
            ArtifactStore.from_settings(settings),
            settings.actor,
            read_url=settings.database_read_url,
        )

    def close(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()

    def _unavailable(self, exc: DBAPIError, what: str) -> RegistryUnavailable:
        """A registry that cannot take the statement (down, or a read-only standby): 503."""
        return RegistryUnavailable(
            f"registry is read-only or unreachable, {what} failed (a failover in progress?): "
            f"{describe(exc)}"
        )

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self._read_sessions() as session, session.begin():
                yield session
        except DBAPIError as exc:
            if self._notify and unavailable(exc):
                raise self._unavailable(exc, "reading") from exc
            raise

    @contextmanager
    def _write(self) -> Iterator[Session]:
        try:
            with self._sessions() as session, session.begin():
                # Serialise writers (PostgreSQL: row lock; SQLite: BEGIN IMMEDIATE already did).
                counter = session.execute(
                    select(CounterRow).where(CounterRow.name == "generation").with_for_update()
                ).scalar_one()
                before = counter.value
                yield session
                if self._notify and counter.value != before:  # delivered at commit only
                    notify_change(session, counter.value)
        except DBAPIError as exc:
            if self._notify and unavailable(exc):
                raise self._unavailable(exc, "the write") from exc
            raise

    def _bump_generation(self, session: Session) -> int:
        counter = session.get(CounterRow, "generation")
        assert counter is not None
        counter.value += 1
        return counter.value

    # -- models and versions ------------------------------------------------------------------

    def register_version(
        self,
        model: str,
        artifact: bytes | Path,
        *,
        feature_names: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        registered_by: str | None = None,
        description: str = "",
    ) -> VersionInfo:
        """Store an ONNX artifact and register it as the model's next version (REGISTERED).

        Idempotent: registering the same bytes for the same model returns the existing version,
        whatever its state; :meth:`register` says which of the two happened.
        """
        return self.register(
            model,
            artifact,
            feature_names=feature_names,
            metrics=metrics,
            lineage=lineage,
            tags=tags,
            config=config,
            registered_by=registered_by,
            description=description,
        ).version

    def register(
        self,
        model: str,
        artifact: bytes | Path,
        *,
        feature_names: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        registered_by: str | None = None,
        description: str = "",
    ) -> RegistrationResult:
        """:meth:`register_version`, saying whether it created a version or found one.

        A scikit-learn classifier exported with ZipMap (``seq(map(...))`` output) is rewritten
        first (:mod:`registry.onnx_rewrite`): the stored file, whose sha256 the version carries,
        has the probability tensor as that output, and the lineage records
        ``rewritten_from_sha256`` and ``rewrite``.
        """
        check_model_name(model)
        data = artifact.read_bytes() if isinstance(artifact, Path) else artifact
        try:
            data, signature, rewrite = servable_signature(data, feature_names)
        except ValueError as exc:
            raise InvalidRequest(f"artifact: {exc}") from None
        except Exception as exc:  # onnxruntime raises its own types for a non-ONNX file
            raise InvalidRequest(f"artifact is not a loadable ONNX model: {exc}") from None
        if rewrite is not None:
            lineage = {**(lineage or {}), **rewrite.lineage()}
        ServingConfig.from_config(config or {})
        digest = sha256_bytes(data)
        actor = registered_by or self.default_actor
        with self._write() as session:
            existing = session.execute(
                select(VersionRow).where(VersionRow.model == model, VersionRow.sha256 == digest)
            ).scalar_one_or_none()
            if existing is not None:
                return RegistrationResult(VersionInfo.from_row(existing), created=False)
            self.artifacts.put(data)
            if session.get(ModelRow, model) is None:
                session.add(ModelRow(name=model, description=description))
                session.flush()
                audit.append(session, actor=actor, action="create_model", model=model)
            number = (
                session.execute(
                    select(func.max(VersionRow.version)).where(VersionRow.model == model)
                ).scalar_one_or_none()
                or 0
            ) + 1
            row = VersionRow(
                model=model,
                version=number,
                sha256=digest,
                size_bytes=len(data),
                state=State.REGISTERED.value,
                signature=signature.to_dict(),
                metrics=dict(metrics or {}),
                lineage=dict(lineage or {}),
                tags=dict(tags or {}),
                config=dict(config or {}),
                registered_by=actor,
                description=description,
            )
            session.add(row)
            session.flush()
            audit.append(
                session,
                actor=actor,
                action="register",
                model=model,
                version=number,
                details={"sha256": digest, "size_bytes": len(data)},
            )
            return RegistrationResult(VersionInfo.from_row(row), created=True)

    def _version_row(self, session: Session, model: str, version: int) -> VersionRow:
        row = session.execute(
            select(VersionRow).where(VersionRow.model == model, VersionRow.version == version)
        ).scalar_one_or_none()
        if row is None:
            if session.get(ModelRow, model) is None:
                raise NotFound(f"unknown model '{model}'")
            raise NotFound(f"model '{model}' has no version {version}")
        return row

    def get_version(self, model: str, version: int) -> VersionInfo:
        with self._read() as session:
            return VersionInfo.from_row(self._version_row(session, model, version))

    def list_models(self) -> list[ModelInfo]:
        with self._read() as session:
            counts = dict(
                session.execute(
                    select(VersionRow.model, func.count()).group_by(VersionRow.model)
                ).all()
            )
            deployed = {
                d.model: d.production_version
                for d in session.execute(select(DeploymentRow)).scalars()
            }
            return [
                ModelInfo(m.name, m.description, counts.get(m.name, 0), deployed.get(m.name))
                for m in session.execute(select(ModelRow).order_by(ModelRow.name)).scalars()
            ]

    def list_versions(self, model: str) -> list[VersionInfo]:
        with self._read() as session:
            if session.get(ModelRow, model) is None:
                raise NotFound(f"unknown model '{model}'")
            rows = session.execute(
                select(VersionRow).where(VersionRow.model == model).order_by(VersionRow.version)
            ).scalars()
            return [VersionInfo.from_row(r) for r in rows]

    def update_metrics(self, model: str, version: int, metrics: dict[str, Any]) -> VersionInfo:
        with self._write() as session:
            row = self._version_row(session, model, version)
            row.metrics = {**(row.metrics or {}), **metrics}
            row.updated_at = utcnow()
            return VersionInfo.from_row(row)

    def set_config(
        self,
        model: str,
        version: int,
        updates: dict[str, Any],
        *,
        reason: str = "configure",
        actor: str | None = None,
    ) -> VersionInfo:
        """Merge serving knobs into a version's config (checked; None removes a key).

        Bumps the generation so gateways reload the version with its new settings.
        """
        with self._write() as session:
            row = self._version_row(session, model, version)
            merged = {**(row.config or {}), **updates}
            merged = {k: v for k, v in merged.items() if v is not None}
            ServingConfig.from_config(merged)
            row.config = merged
            row.updated_at = utcnow()
            self._bump_generation(session)
            audit.append(
                session,
                actor=actor or self.default_actor,
                action="configure",
                model=model,
                version=version,
                details={"updates": updates, "reason": reason},
            )
            return VersionInfo.from_row(row)

    def load_artifact(self, model: str, version: int) -> bytes:
        """The version's ONNX bytes, verified against its sha256 (raises on mismatch)."""
        info = self.get_version(model, version)
        return self.artifacts.get(info.sha256)

    # -- lifecycle ----------------------------------------------------------------------------

    def _transition(
        self,
        session: Session,
        row: VersionRow,
        target: State,
        actor: str,
        reason: str,
        *,
        rollback: bool = False,
    ) -> None:
        current = State(row.state)
        check_transition(current, target, rollback=rollback)
        row.state = target.value
        row.updated_at = utcnow()
        audit.append(
            session,
            actor=actor,
            action="transition",
            model=row.model,
            version=row.version,
            details={"from": current.value, "to": target.value, "reason": reason},
        )
        self.rollouts.note_transition(session, row, target, actor, reason)
        if session.get(DeploymentRow, row.model) is None:
            return
        if target not in ROUTABLE or target not in SERVABLE:
            # a version leaving service leaves the policy (production too, if it was that)
            version = row.version
            leaves = target not in ROUTABLE

            def strip(policy: TrafficPolicy) -> TrafficPolicy:
                if leaves:
                    return policy.without_version(version)
                return policy.with_production(None) if policy.production == version else policy

            self.traffic.apply(session, row.model, strip, reason=None, actor=actor)

    def _touch(self, session: Session, deployment: DeploymentRow) -> None:
        deployment.generation = self._bump_generation(session)
        deployment.updated_at = utcnow()

    def transition(
        self,
        model: str,
        version: int,
        target: State,
        *,
        reason: str,
        actor: str | None = None,
        force: bool = False,
    ) -> VersionInfo:
        """Move a version to ``target`` if the state machine allows it; audited.

        Moving a model's production version out of PRODUCTION would leave nothing to answer
        its requests: refused (Conflict, pointing at ``roost rollback`` / ``roost promote``)
        unless ``force``, which is audited with "forced" in the reason.
        """
        if not reason.strip():
            raise InvalidRequest("reason: a non-empty reason is required for a transition")
        with self._write() as session:
            row = self._version_row(session, model, version)
            check_transition(State(row.state), target)
            deployment = session.get(DeploymentRow, model)
            if (
                row.state == State.PRODUCTION.value
                and target is not State.PRODUCTION
                and deployment is not None
                and deployment.production_version == version
            ):
                if not force:
                    raise Conflict(
                        f"version {version} is the production version of '{model}' and no other "
                        "version would serve it: every request would fail. Use `roost rollback "
                        f"{model}` to bring back the previous version, or `roost promote {model} "
                        "VERSION` to roll out another; pass --force (force=True) to take it "
                        "offline anyway"
                    )
                reason = f"{reason} (forced: left '{model}' without a production version)"
            self._transition(session, row, target, actor or self.default_actor, reason)
            return VersionInfo.from_row(row)

    def deploy(
        self, model: str, version: int, *, reason: str = "deploy", actor: str | None = None
    ) -> DeploymentInfo:
        """Make a VALIDATED version the model's production version.

        Walks STAGING -> STAGING_TESTED -> CANARY -> PRODUCTION (each step audited) and moves the
        version it replaces to DEPRECATED. Deploying the current production version is a no-op.
        """
        with self._write() as session:
            return self._deploy_in(
                session, model, version, reason=reason, actor=actor or self.default_actor
            )

    def _deploy_in(
        self, session: Session, model: str, version: int, *, reason: str, actor: str
    ) -> DeploymentInfo:
        row = self._version_row(session, model, version)
        deployment = session.get(DeploymentRow, model)
        if (
            deployment is not None
            and deployment.production_version == version
            and row.state == State.PRODUCTION.value
        ):
            return self._deployment_info(deployment)
        running = self.rollouts.active(session, model)
        if running is not None and running.version != version:
            raise Conflict(
                f"model '{model}' has an active rollout of version {running.version} "
                f"({running.phase}); let it finish or cancel it (`roost rollout cancel {model}`) "
                f"before deploying version {version}"
            )
        if row.state == State.CANARY.value:  # promoting the canary
            self._transition(session, row, State.PRODUCTION, actor, reason)
        elif row.state == State.VALIDATED.value:
            for step in DEPLOY_PATH:
                self._transition(session, row, step, actor, reason)
        else:
            raise Conflict(
                f"version {version} of '{model}' is {row.state}; only a VALIDATED version "
                "(or the CANARY being promoted) can be deployed"
            )
        if deployment is None:
            deployment = DeploymentRow(model=model, policy={}, generation=0)
            session.add(deployment)
        previous = deployment.production_version
        if previous is not None and previous != version:
            old = self._version_row(session, model, previous)
            if old.state == State.PRODUCTION.value:
                self._transition(
                    session, old, State.DEPRECATED, actor, f"replaced by version {version}"
                )
        # the policy change (production, and the canary cleared if it was this version)
        self.traffic.apply(
            session, model, lambda p: p.with_production(version), reason=None, actor=actor
        )
        audit.append(
            session,
            actor=actor,
            action="deploy",
            model=model,
            version=version,
            details={"previous": previous, "reason": reason},
        )
        session.flush()
        session.refresh(deployment)
        return self._deployment_info(deployment)

    def rollback(
        self,
        model: str,
        *,
        to_version: int | None = None,
        reason: str,
        actor: str | None = None,
    ) -> VersionInfo:
        """Bring a previous production version back, in ONE transaction; returns it.

        ``to_version`` defaults to the version most recently moved PRODUCTION -> DEPRECATED
        (a second rollback undoes the first). See :func:`registry.rollback.rollback_in`.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidRequest("reason: a non-empty reason is required for a rollback")
        with self._write() as session:
            row = rollback_in(
                self, session, model, to_version, reason.strip(), actor or self.default_actor
            )
            return VersionInfo.from_row(row)

    # -- traffic policies (registry/policies.py) ----------------------------------------------

    def get_policy(self, model: str) -> TrafficPolicy:
        return self.traffic.get(model)

    def get_policy_and_generation(self, model: str) -> tuple[TrafficPolicy, int]:
        """The policy and its deployment generation (what ``expected_generation`` compares)."""
        return self.traffic.read(model)

    def policies(self) -> dict[str, TrafficPolicy]:
        """The traffic policy of every deployment whose serving is enabled."""
        return self.traffic.serving()

    def edit_policy(
        self,
        model: str,
        change: Change,
        *,
        reason: str,
        actor: str | None = None,
        expected_generation: int | None = None,
    ) -> TrafficPolicy:
        """Apply ``change`` (e.g. ``lambda p: p.with_shadow(3, 10)``) in ONE write transaction,
        conditional on the generation read (Conflict if ``expected_generation`` is stale)."""
        return self.traffic.edit(
            model, change, reason=reason, actor=actor, expected_generation=expected_generation
        )

    def set_policy(
        self,
        model: str,
        data: dict[str, Any],
        *,
        reason: str = "traffic policy",
        actor: str | None = None,
        expected_generation: int | None = None,
    ) -> TrafficPolicy:
        """Replace every route of the policy but production (which changes with deploy);
        every version named must be routable. A refused policy leaves the running one."""
        return self.traffic.set(
            model, data, reason=reason, actor=actor, expected_generation=expected_generation
        )

    def start_canary(
        self, model: str, version: int, percent: float, *, actor: str | None = None
    ) -> TrafficPolicy:
        """Walk a VALIDATED version to CANARY and give it ``percent`` of the units."""
        return self.traffic.start_canary(model, version, percent, actor=actor)

    def promote_canary(self, model: str, *, actor: str | None = None) -> TrafficPolicy:
        return self.traffic.promote_canary(model, actor=actor)

    def rollback_canary(
        self, model: str, *, reason: str, actor: str | None = None
    ) -> TrafficPolicy:
        """Take all traffic off the canary and move it CANARY -> ROLLBACK (audited)."""
        return self.traffic.rollback_canary(model, reason=reason, actor=actor)

    def record_rewards(
        self, model: str, bandit: str, rewards: dict[int, tuple[float, float]]
    ) -> None:
        self.traffic.record_rewards(model, bandit, rewards)

    def bandit_stats(self) -> dict[tuple[str, str], dict[int, tuple[float, float]]]:
        return self.traffic.bandit_stats()

    # -- deployments --------------------------------------------------------------------------

    @staticmethod
    def _deployment_info(row: DeploymentRow) -> DeploymentInfo:
        return DeploymentInfo(row.model, row.production_version, row.generation, dict(row.policy))

    def get_deployment(self, model: str) -> DeploymentInfo | None:
        with self._read() as session:
            row = session.get(DeploymentRow, model)
            return None if row is None else self._deployment_info(row)

    def list_deployments(self) -> list[DeploymentInfo]:
        with self._read() as session:
            rows = session.execute(select(DeploymentRow).order_by(DeploymentRow.model)).scalars()
            return [self._deployment_info(r) for r in rows]

    def served_versions(self) -> list[VersionInfo]:
        """Every version gateways should load: production, canary, variants, shadows, ...

        (of each deployment whose serving is enabled).
        """
        with self._read() as session:
            wanted: dict[str, set[int]] = {}
            for dep in session.execute(select(DeploymentRow)).scalars():
                policy = dep.policy or {}
                if not policy.get("serving_enabled", True):
                    continue
                versions = policy_of(dep).versions()
                if versions:
                    wanted[dep.model] = versions
            if not wanted:
                return []
            rows = session.execute(
                select(VersionRow)
                .where(VersionRow.model.in_(list(wanted)))
                .order_by(VersionRow.model, VersionRow.version)
            ).scalars()
            return [VersionInfo.from_row(r) for r in rows if r.version in wanted[r.model]]

    def set_serving_enabled(
        self, model: str, enabled: bool, *, reason: str = "", actor: str | None = None
    ) -> DeploymentInfo:
        """Load (True) or unload (False) a deployed model on every gateway; audited."""
        with self._write() as session:
            deployment = session.get(DeploymentRow, model)
            if deployment is None:
                if session.get(ModelRow, model) is None:
                    raise NotFound(f"unknown model '{model}'")
                raise Conflict(f"model '{model}' has no deployment; deploy a version first")
            policy = dict(deployment.policy or {})
            if policy.get("serving_enabled", True) != enabled:
                policy["serving_enabled"] = enabled
                deployment.policy = policy
                self._touch(session, deployment)
                audit.append(
                    session,
                    actor=actor or self.default_actor,
                    action="load" if enabled else "unload",
                    model=model,
                    details={"reason": reason},
                )
            return self._deployment_info(deployment)

    def generation(self) -> int:
        """Monotonic counter bumped by every deployment change; the gateway polls it."""
        with self._read() as session:
            counter = session.get(CounterRow, "generation")
            return 0 if counter is None else counter.value

    # -- audit --------------------------------------------------------------------------------

    def audit_records(self, model: str | None = None) -> list[audit.AuditRecord]:
        with self._read() as session:
            query = select(AuditRow).order_by(AuditRow.id)
            if model is not None:
                query = query.where(AuditRow.model == model)
            return [audit.AuditRecord.from_row(r) for r in session.execute(query).scalars()]

    def record_event(
        self,
        action: str,
        *,
        details: dict[str, Any] | None = None,
        model: str | None = None,
        version: int | None = None,
        actor: str | None = None,
    ) -> audit.AuditRecord:
        """Append one record to the audit trail for an action outside the registry's own
        tables (retention, erasure ...); ``details`` must hold no personal data."""
        if not action:
            raise InvalidRequest("action: expected a non-empty name")
        with self._write() as session:
            row = audit.append(
                session, actor=actor or self.default_actor, action=action, model=model,
                version=version, details=details,
            )
            return audit.AuditRecord.from_row(row)

    def audit_verify(self) -> audit.AuditVerification:
        with self._read() as session:
            return audit.verify(session)
