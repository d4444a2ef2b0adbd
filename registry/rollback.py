"""One-click rollback of a model's production version (``roost rollback``).

Roost's one extension of the requirements' lifecycle is DEPRECATED -> PRODUCTION, allowed only
here (``rollback=True``, see registry/lifecycle.py). In ONE write transaction:

1. the target is ``to_version`` or, by default, the version most recently moved
   PRODUCTION -> DEPRECATED that is still DEPRECATED (read from the audit trail), so a second
   rollback undoes the first (it returns to the version the first one replaced);
2. an active staged rollout is cancelled (its canary CANARY -> ROLLBACK), and a canary started
   by hand goes CANARY -> ROLLBACK too;
3. the current production version goes PRODUCTION -> DEPRECATED, the target
   DEPRECATED -> PRODUCTION, and the policy's production route changes (generation bumped: every
   gateway switches on its next poll, in-flight requests finish on the version they started on);
4. ``rollback`` is audited with the actor, the reason, and from/to.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit
from registry.errors import Conflict, NotFound
from registry.lifecycle import State
from registry.rollout_store import RolloutHost, RolloutStore
from registry.tables import AuditRow, DeploymentRow, ModelRow, VersionRow


class RollbackHost(RolloutHost, Protocol):
    rollouts: RolloutStore

    def _transition(
        self,
        session: Session,
        row: VersionRow,
        target: State,
        actor: str,
        reason: str,
        *,
        rollback: bool = False,
    ) -> None: ...


def rollback_in(
    host: RollbackHost,
    session: Session,
    model: str,
    to_version: int | None,
    reason: str,
    actor: str,
) -> VersionRow:
    """The rollback inside the caller's write transaction; returns the new production row."""
    deployment = session.get(DeploymentRow, model)
    if deployment is None:
        if session.get(ModelRow, model) is None:
            raise NotFound(f"unknown model '{model}'")
        raise Conflict(f"model '{model}' was never deployed; there is nothing to roll back")
    current = deployment.production_version
    target = to_version if to_version is not None else previous_production(session, model, current)
    if target == current:
        raise Conflict(f"version {target} is already the production version of '{model}'")
    row = host._version_row(session, model, target)
    if row.state != State.DEPRECATED.value:
        raise Conflict(
            f"version {target} of '{model}' is {row.state}; a rollback brings back a DEPRECATED "
            f"version that was production (roll out a new version with "
            f"`roost promote {model} {target}`)"
        )
    why = f"rolled back to version {target}: {reason}"
    running = host.rollouts.active(session, model)
    if running is not None:
        host.rollouts.cancel_in(session, running, actor=actor, reason=why)
    canary = host.traffic.apply(session, model, lambda p: p, reason=None, actor=actor).canary
    if canary is not None:  # a canary started by hand goes too
        canary_row = host._version_row(session, model, canary.version)
        if canary_row.state == State.CANARY.value:
            host._transition(session, canary_row, State.ROLLBACK, actor, why)
    if current is not None:
        old = host._version_row(session, model, current)
        if old.state == State.PRODUCTION.value:
            host._transition(session, old, State.DEPRECATED, actor, why)
    host._transition(session, row, State.PRODUCTION, actor, why, rollback=True)
    host.traffic.apply(
        session, model, lambda p: p.with_production(target), reason=None, actor=actor
    )
    audit.append(
        session,
        actor=actor,
        action="rollback",
        model=model,
        version=target,
        details={"from": current, "to": target, "reason": reason},
    )
    return row


def previous_production(session: Session, model: str, current: int | None) -> int:
    """The version most recently moved PRODUCTION -> DEPRECATED and still DEPRECATED."""
    states = dict(
        session.execute(
            select(VersionRow.version, VersionRow.state).where(VersionRow.model == model)
        ).all()
    )
    moves = session.execute(
        select(AuditRow.version, AuditRow.details)
        .where(AuditRow.model == model, AuditRow.action == "transition")
        .order_by(AuditRow.id.desc())
    ).all()
    for version, details in moves:
        facts = details or {}
        if (
            version is not None
            and version != current
            and facts.get("from") == State.PRODUCTION.value
            and facts.get("to") == State.DEPRECATED.value
            and states.get(version) == State.DEPRECATED.value
        ):
            return int(version)
    raise Conflict(
        f"model '{model}' has no previous production version to roll back to (no version that "
        "was production is DEPRECATED now)"
    )
