"""The rollout store: every staged-rollout operation as ONE write transaction of the registry.

See :mod:`registry.rollout` for the rules. Each operation reads the model's latest rollout
record inside the registry's serialised write transaction (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``FOR UPDATE`` on the generation counter), checks the phase, the version's lifecycle
state and, where given, the expected revision, then moves the version, changes the traffic
policy (bumping the generation gateways poll) and writes the record and the audit record, all
committed together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.lifecycle import State
from registry.policies import PolicyHost, PolicyStore
from registry.rollout import (
    ACTIVE_PHASES,
    RolloutPhase,
    RolloutStatus,
    StaleRollout,
    check_schedule,
)
from registry.tables import DeploymentRow, ModelRow, RolloutRow, VersionRow, utcnow


class RolloutHost(PolicyHost, Protocol):
    traffic: PolicyStore


def _reason(reason: str, field: str = "reason") -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidRequest(f"{field}: a non-empty reason is required")
    return reason.strip()


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field}: expected a JSON object, got {type(value).__name__}")
    return dict(value)


class RolloutStore:
    """Staged rollouts, on the transactions of the registry holding it."""

    def __init__(self, host: RolloutHost) -> None:
        self._host = host

    # -- reading ----------------------------------------------------------------------------

    def get(self, model: str) -> RolloutStatus | None:
        with self._host._read() as session:
            self._check_model(session, model)
            row = self.latest(session, model)
            return None if row is None else RolloutStatus.from_row(row)

    def list(self, *, active_only: bool = True) -> list[RolloutStatus]:
        """The latest rollout of each model (only the active ones by default)."""
        with self._host._read() as session:
            rows = session.execute(select(RolloutRow).order_by(RolloutRow.id)).scalars()
            latest = {row.model: row for row in rows}
            out = [RolloutStatus.from_row(r) for _, r in sorted(latest.items())]
        return [s for s in out if s.active] if active_only else out

    # -- helpers inside a write transaction (also used by Registry.deploy / rollback) -------

    @staticmethod
    def latest(session: Session, model: str) -> RolloutRow | None:
        return session.execute(
            select(RolloutRow)
            .where(RolloutRow.model == model)
            .order_by(RolloutRow.id.desc())
            .limit(1)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()

    def active(self, session: Session, model: str) -> RolloutRow | None:
        row = self.latest(session, model)
        return row if row is not None and RolloutPhase(row.phase) in ACTIVE_PHASES else None

    @staticmethod
    def _check_model(session: Session, model: str) -> None:
        if session.get(ModelRow, model) is None:
            raise NotFound(f"unknown model '{model}'")

    def _current(
        self, session: Session, model: str, expected_revision: int | None = None
    ) -> RolloutRow:
        self._check_model(session, model)
        row = self.latest(session, model)
        if row is None:
            raise NotFound(
                f"model '{model}' has no rollout; start one with `roost promote {model} VERSION`"
            )
        if expected_revision is not None and row.revision != expected_revision:
            raise StaleRollout(
                f"the rollout of '{model}' changed: its revision is {row.revision}, not "
                f"{expected_revision}; read it again (phase {row.phase}, step {row.step})"
            )
        return row

    @staticmethod
    def _require(row: RolloutRow, *phases: RolloutPhase, doing: str) -> None:
        if RolloutPhase(row.phase) not in phases:
            wanted = " or ".join(p.value for p in phases)
            raise Conflict(
                f"cannot {doing}: the rollout of '{row.model}' (version {row.version}) is "
                f"{row.phase}, not {wanted}"
            )

    @staticmethod
    def _not_paused(row: RolloutRow, manual: bool, doing: str) -> None:
        if row.paused and not manual:
            raise Conflict(
                f"cannot {doing}: the rollout of '{row.model}' (version {row.version}) is "
                f"paused; resume it with `roost rollout resume {row.model}`"
            )

    def _walk(
        self, session: Session, row: RolloutRow, frm: State, to: State, actor: str, reason: str
    ) -> VersionRow:
        """Move the rollout's version ``frm -> to`` (nothing if already ``to``)."""
        version = self._host._version_row(session, row.model, row.version)
        if version.state == to.value:
            return version
        if version.state != frm.value:
            raise Conflict(
                f"version {row.version} of '{row.model}' is {version.state}; the rollout "
                f"expects {frm.value} (it was moved by hand?); cancel the rollout with "
                f"`roost rollout cancel {row.model}`"
            )
        self._host._transition(session, version, to, actor, reason)
        return version

    def _write(
        self,
        session: Session,
        row: RolloutRow,
        *,
        action: str,
        actor: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        **changes: Any,
    ) -> RolloutStatus:
        """Apply ``changes`` to the record, bump its revision and audit ``rollout_<action>``."""
        now = utcnow()
        for key, value in changes.items():
            setattr(row, key, value)
        if reason is not None:
            row.reason = reason
        row.revision += 1
        row.updated_at = now
        row.actor = actor
        session.flush()
        audit.append(
            session,
            actor=actor,
            action=f"rollout_{action}",
            model=row.model,
            version=row.version,
            details={
                "rollout": row.id,
                "phase": row.phase,
                "step": row.step,
                "percent": row.percent,
                "revision": row.revision,
                "reason": reason if reason is not None else row.reason,
                **(details or {}),
            },
        )
        return RolloutStatus.from_row(row)

    def finish(
        self, session: Session, row: RolloutRow, phase: RolloutPhase, *, actor: str, reason: str
    ) -> RolloutStatus:
        """End an active rollout (PROMOTED, ROLLED_BACK, CANCELLED ...) without other effects."""
        return self._write(
            session, row, action=phase.value.lower(), actor=actor, reason=reason,
            phase=phase.value, percent=0.0 if phase is not RolloutPhase.PROMOTED else 100.0,
            paused=False, decision=row.decision,
        )

    def note_transition(
        self, session: Session, version: VersionRow, target: State, actor: str, reason: str
    ) -> None:
        """Keep the record true when its version is promoted or rolled back around it."""
        row = self.active(session, version.model)
        if row is None or row.version != version.version:
            return
        if target is State.PRODUCTION:
            deployment = session.get(DeploymentRow, version.model)
            row.replaced_version = None if deployment is None else deployment.production_version
            self.finish(session, row, RolloutPhase.PROMOTED, actor=actor, reason=reason)
        elif target is State.ROLLBACK:
            self.finish(session, row, RolloutPhase.ROLLED_BACK, actor=actor, reason=reason)

    # -- the operations ---------------------------------------------------------------------

    def start(
        self,
        model: str,
        version: int,
        *,
        schedule: Sequence[float] | None = None,
        actor: str,
        reason: str,
    ) -> RolloutStatus:
        steps = check_schedule(schedule)
        why = _reason(reason)
        with self._host._write() as session:
            target = self._host._version_row(session, model, version)
            running = self.active(session, model)
            if running is not None:
                if running.version == version and tuple(
                    (running.schedule or {}).get("percent", ())
                ) == steps:
                    return RolloutStatus.from_row(running)  # a retry of this start
                raise Conflict(
                    f"model '{model}' already has an active rollout: version {running.version} "
                    f"is {running.phase} (started by {running.actor}); finish, roll back or "
                    f"cancel it first (`roost rollout cancel {model}`)"
                )
            if target.state != State.VALIDATED.value:
                raise Conflict(
                    f"version {version} of '{model}' is {target.state}; a rollout starts from a "
                    "VALIDATED version"
                )
            deployment = session.get(DeploymentRow, model)
            production = None if deployment is None else deployment.production_version
            if production is None:
                raise Conflict(
                    f"model '{model}' has no production version to compare a canary with; "
                    f"deploy its first version with `roost deploy {model} VERSION`"
                )
            self._host._transition(session, target, State.STAGING, actor, why)
            now = utcnow()
            row = RolloutRow(
                model=model, version=version, phase=RolloutPhase.STAGING.value,
                schedule={"percent": list(steps)}, step=-1, percent=0.0, paused=False,
                started_at=now, step_started_at=now, updated_at=now, last_analysis=None,
                evidence={}, decision=None, reason=why, revision=0, actor=actor,
            )
            session.add(row)
            session.flush()
            return self._write(
                session, row, action="start", actor=actor, reason=why,
                details={"schedule": list(steps), "production": production},
            )

    def staging_passed(
        self, model: str, version: int, *, evidence: dict[str, Any], actor: str
    ) -> RolloutStatus:
        proof = _mapping(evidence, "evidence")
        with self._host._write() as session:
            row = self._of_version(session, model, version)
            if row.phase == RolloutPhase.STAGING_TESTED.value:
                return RolloutStatus.from_row(row)  # a retry
            self._require(row, RolloutPhase.STAGING, doing="pass staging")
            self._walk(session, row, State.STAGING, State.STAGING_TESTED, actor, "staging passed")
            return self._write(
                session, row, action="staging_passed", actor=actor, reason="staging passed",
                phase=RolloutPhase.STAGING_TESTED.value, evidence=proof,
                decision="staging_passed", step_started_at=utcnow(),
            )

    def staging_failed(
        self, model: str, version: int, *, reason: str, evidence: dict[str, Any], actor: str
    ) -> RolloutStatus:
        why = _reason(reason)
        proof = _mapping(evidence, "evidence")
        with self._host._write() as session:
            row = self._of_version(session, model, version)
            if row.phase == RolloutPhase.FAILED.value:
                return RolloutStatus.from_row(row)
            self._require(row, RolloutPhase.STAGING, doing="fail staging")
            return self._write(
                session, row, action="staging_failed", actor=actor, reason=why,
                phase=RolloutPhase.FAILED.value, evidence=proof, decision="staging_failed",
            )

    def begin_canary(
        self, model: str, version: int, *, actor: str, manual: bool = False
    ) -> RolloutStatus:
        with self._host._write() as session:
            row = self._of_version(session, model, version)
            if row.phase == RolloutPhase.CANARY.value:
                return RolloutStatus.from_row(row)  # a retry
            self._require(row, RolloutPhase.STAGING_TESTED, doing="begin the canary")
            self._not_paused(row, manual, "begin the canary")
            first = float(row.schedule["percent"][0])
            why = f"canary at {first:g}% (step 1 of {len(row.schedule['percent'])})"
            self._walk(session, row, State.STAGING_TESTED, State.CANARY, actor, why)
            self._host.traffic.apply(
                session, model, lambda p: p.with_canary(version, first), reason=why, actor=actor
            )
            return self._write(
                session, row, action="canary", actor=actor, reason=why,
                phase=RolloutPhase.CANARY.value, step=0, percent=first,
                step_started_at=utcnow(), decision="begin_canary",
            )

    def advance(
        self,
        model: str,
        *,
        expected_revision: int,
        analysis: dict[str, Any],
        actor: str,
        manual: bool = False,
    ) -> RolloutStatus:
        facts = _mapping(analysis, "analysis")
        with self._host._write() as session:
            row = self._current(session, model, expected_revision)
            self._require(row, RolloutPhase.CANARY, doing="advance the rollout")
            self._not_paused(row, manual, "advance the rollout")
            steps = [float(p) for p in row.schedule["percent"]]
            version = row.version
            if row.step + 1 < len(steps):
                percent = steps[row.step + 1]
                why = f"canary at {percent:g}% (step {row.step + 2} of {len(steps)})"
                self._host.traffic.apply(
                    session, model, lambda p: p.with_canary(version, percent), reason=why,
                    actor=actor,
                )
                return self._write(
                    session, row, action="advance", actor=actor, reason=why,
                    details={"analysis": facts}, step=row.step + 1, percent=percent,
                    step_started_at=utcnow(), last_analysis=facts, decision="advance",
                )
            deployment = session.get(DeploymentRow, model)
            replaced = None if deployment is None else deployment.production_version
            why = f"promoted after {len(steps)} canary steps"
            # the record first: the lifecycle moves below then see no active rollout
            status = self._write(
                session, row, action="promote", actor=actor, reason=why,
                details={"analysis": facts, "replaced": replaced},
                phase=RolloutPhase.PROMOTED.value, percent=100.0, last_analysis=facts,
                decision="promote", replaced_version=replaced, paused=False,
            )
            self._host._deploy_in(session, model, version, reason=why, actor=actor)
            return status

    def record_analysis(
        self,
        model: str,
        *,
        expected_revision: int,
        analysis: dict[str, Any],
        decision: str,
        actor: str | None = None,
    ) -> RolloutStatus:
        facts = _mapping(analysis, "analysis")
        if not isinstance(decision, str) or not decision.strip():
            raise InvalidRequest("decision: expected a non-empty string (e.g. 'hold')")
        who = actor or self._host.default_actor
        with self._host._write() as session:
            row = self._current(session, model, expected_revision)
            return self._write(
                session, row, action="analysis", actor=who, reason=None,
                details={"analysis": facts, "decision": decision},
                last_analysis=facts, decision=decision.strip()[:64],
            )

    def roll_back(
        self,
        model: str,
        *,
        reason: str,
        analysis: dict[str, Any] | None = None,
        actor: str,
        expected_revision: int | None = None,
    ) -> RolloutStatus:
        why = _reason(reason)
        facts = None if analysis is None else _mapping(analysis, "analysis")
        with self._host._write() as session:
            row = self._current(session, model, expected_revision)
            if row.phase == RolloutPhase.ROLLED_BACK.value:
                return RolloutStatus.from_row(row)  # a retry
            if row.phase in (RolloutPhase.STAGING.value, RolloutPhase.STAGING_TESTED.value):
                raise Conflict(
                    f"cannot roll back: the rollout of '{model}' is {row.phase} (no canary "
                    f"traffic yet); cancel it with `roost rollout cancel {model}`"
                )
            self._require(row, RolloutPhase.CANARY, doing="roll back the rollout")
            status = self._write(
                session, row, action="rollback", actor=actor, reason=why,
                details={"analysis": facts}, phase=RolloutPhase.ROLLED_BACK.value,
                percent=0.0, paused=False, decision="rollback",
                last_analysis=facts if facts is not None else row.last_analysis,
            )
            # CANARY -> ROLLBACK takes the version out of the policy (generation bumped)
            self._walk(session, row, State.CANARY, State.ROLLBACK, actor, why)
            return status

    def pause(self, model: str, *, actor: str, reason: str) -> RolloutStatus:
        why = _reason(reason)
        with self._host._write() as session:
            row = self._current(session, model)
            self._require(row, *sorted(ACTIVE_PHASES), doing="pause the rollout")
            if row.paused:
                return RolloutStatus.from_row(row)
            return self._write(session, row, action="pause", actor=actor, reason=why, paused=True)

    def resume(self, model: str, *, actor: str, reason: str) -> RolloutStatus:
        why = _reason(reason)
        with self._host._write() as session:
            row = self._current(session, model)
            self._require(row, *sorted(ACTIVE_PHASES), doing="resume the rollout")
            if not row.paused:
                return RolloutStatus.from_row(row)
            return self._write(
                session, row, action="resume", actor=actor, reason=why, paused=False,
                step_started_at=utcnow(),
            )

    def cancel(self, model: str, *, actor: str, reason: str) -> RolloutStatus:
        why = _reason(reason)
        with self._host._write() as session:
            row = self._current(session, model)
            if row.phase == RolloutPhase.CANCELLED.value:
                return RolloutStatus.from_row(row)
            self._require(row, *sorted(ACTIVE_PHASES), doing="cancel the rollout")
            return self.cancel_in(session, row, actor=actor, reason=why)

    def cancel_in(
        self, session: Session, row: RolloutRow, *, actor: str, reason: str
    ) -> RolloutStatus:
        """Cancel inside the caller's transaction: a canary goes CANARY -> ROLLBACK (its
        traffic removed); a staged version stays where it is."""
        status = self.finish(session, row, RolloutPhase.CANCELLED, actor=actor, reason=reason)
        version = self._host._version_row(session, row.model, row.version)
        if version.state == State.CANARY.value:
            self._host._transition(session, version, State.ROLLBACK, actor, reason)
        return status

    def _of_version(self, session: Session, model: str, version: int) -> RolloutRow:
        row = self._current(session, model)
        if row.version != version:
            raise Conflict(
                f"the rollout of '{model}' is of version {row.version} ({row.phase}), not "
                f"version {version}"
            )
        return row
