"""Staged rollouts: one version's walk VALIDATED -> STAGING -> STAGING_TESTED -> CANARY (stepped
through a percent schedule) -> PRODUCTION, recorded per model so that a sensor, the Dagster
assets and an operator can drive it together safely.

The record (:class:`RolloutStatus`, table ``rollouts``) says where the rollout is: its
:class:`RolloutPhase`, the canary schedule and the step it is at, whether it is paused, the last
analysis and decision, and a ``revision`` that every change bumps. Steps that a machine takes
(:meth:`RolloutMethods.advance_rollout`, :meth:`RolloutMethods.record_rollout_analysis`, and
optionally :meth:`RolloutMethods.roll_back_rollout`) are compare-and-set on that revision: a
caller that read revision *r* and acts after someone else changed the record gets
:class:`StaleRollout` (a ``Conflict``) and nothing changes, so two overlapping sensor ticks never
step twice, and a pause by an operator invalidates a step being computed on the old record.

Every operation is ONE write transaction of the registry (lifecycle moves, the traffic policy
with its generation bump, the rollout record and the audit records commit together). The
operations live in :class:`registry.rollout_store.RolloutStore` (``registry.rollouts``); this
module holds the types and :class:`RolloutMethods`, the thin methods :class:`Registry` offers.

Rules:

* one ACTIVE rollout (STAGING, STAGING_TESTED, CANARY) per model; starting another is refused,
  naming the running one; starting the same version again returns the running record (retries);
* the model must have a production version (a canary is compared with it); the first version of
  a model is deployed with ``roost deploy``;
* a paused rollout is never stepped (advance, begin_canary) unless ``manual=True`` (a human);
  rolling back or cancelling is always allowed; resuming restarts the step clock;
* staging failure leaves the version STAGING (the requirements' table has no other exit) and the
  rollout FAILED; cancelling during staging leaves the version where it is; cancelling or rolling
  back during the canary moves it CANARY -> ROLLBACK and takes its traffic away at once;
* past the last step the canary is promoted: CANARY -> PRODUCTION, the replaced version ->
  DEPRECATED, the canary route removed (``replaced_version`` says which one it replaced);
* moves made around the rollout (``roost canary --promote|--rollback``) finish it as PROMOTED or
  ROLLED_BACK; ``roost deploy`` of another version is refused while a rollout is active.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from registry.errors import Conflict, InvalidRequest
from registry.tables import RolloutRow

if TYPE_CHECKING:
    from registry.rollout_store import RolloutStore

DEFAULT_SCHEDULE: tuple[float, ...] = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0)


class RolloutPhase(StrEnum):
    STAGING = "STAGING"
    STAGING_TESTED = "STAGING_TESTED"
    CANARY = "CANARY"
    PROMOTED = "PROMOTED"
    ROLLED_BACK = "ROLLED_BACK"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ACTIVE_PHASES: frozenset[RolloutPhase] = frozenset(
    {RolloutPhase.STAGING, RolloutPhase.STAGING_TESTED, RolloutPhase.CANARY}
)


class StaleRollout(Conflict):
    """The rollout record changed since the caller read it (its revision moved)."""


def check_schedule(schedule: Iterable[Any] | None) -> tuple[float, ...]:
    """The canary schedule as floats, or InvalidRequest naming what is wrong.

    Expected: a non-empty, strictly increasing list of percents, each 0 < p <= 100, ending at 100.
    ``None`` gives :data:`DEFAULT_SCHEDULE`.
    """
    if schedule is None:
        return DEFAULT_SCHEDULE
    if isinstance(schedule, str | bytes):
        raise InvalidRequest("schedule: expected a list of percents such as [1, 5, 25, 100]")
    steps: list[float] = []
    for i, raw in enumerate(schedule):
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise InvalidRequest(f"schedule[{i}]: expected a number, got {raw!r}")
        value = float(raw)
        if not 0 < value <= 100:
            raise InvalidRequest(f"schedule[{i}]: expected a percent with 0 < p <= 100, got {raw}")
        if steps and value <= steps[-1]:
            raise InvalidRequest(
                f"schedule[{i}]: expected percents in increasing order, got {raw:g} after "
                f"{steps[-1]:g}"
            )
        steps.append(value)
    if not steps:
        raise InvalidRequest("schedule: expected at least one step (the last one 100)")
    if steps[-1] != 100:
        raise InvalidRequest(f"schedule: expected the last step to be 100, got {steps[-1]:g}")
    return tuple(steps)


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"1,5,10,25,50,100"`` -> the checked schedule (the CLI's ``--schedule``)."""
    values: list[float] = []
    for i, part in enumerate(text.split(",")):
        try:
            values.append(float(part.strip()))
        except ValueError:
            raise InvalidRequest(
                f"schedule[{i}]: expected a number, got {part.strip()!r} "
                "(write the schedule as 1,5,10,25,50,100)"
            ) from None
    return check_schedule(values)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RolloutStatus:
    """One rollout as recorded: where it is, what was last decided, and its revision."""

    id: int
    model: str
    version: int
    phase: RolloutPhase
    schedule: tuple[float, ...]
    step: int
    """Index into ``schedule`` of the canary's current percent; -1 before the canary."""
    percent: float
    """The canary's share of traffic now (0 outside the canary phase)."""
    paused: bool
    started_at: datetime
    step_started_at: datetime | None
    """When the current step (or staging phase) began; resume restarts it."""
    updated_at: datetime
    last_analysis: dict[str, Any] | None
    evidence: dict[str, Any]
    """Staging evidence (staging_passed / staging_failed)."""
    decision: str | None
    reason: str
    revision: int
    actor: str
    replaced_version: int | None
    """The production version a promotion replaced (set when PROMOTED)."""

    @classmethod
    def from_row(cls, row: RolloutRow) -> RolloutStatus:
        return cls(
            id=row.id,
            model=row.model,
            version=row.version,
            phase=RolloutPhase(row.phase),
            schedule=tuple(float(p) for p in (row.schedule or {}).get("percent", ())),
            step=row.step,
            percent=float(row.percent),
            paused=bool(row.paused),
            started_at=_aware(row.started_at),
            step_started_at=None if row.step_started_at is None else _aware(row.step_started_at),
            updated_at=_aware(row.updated_at),
            last_analysis=None if row.last_analysis is None else dict(row.last_analysis),
            evidence=dict(row.evidence or {}),
            decision=row.decision,
            reason=row.reason or "",
            revision=row.revision,
            actor=row.actor,
            replaced_version=row.replaced_version,
        )

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def next_percent(self) -> float | None:
        """The canary percent the next advance sets (None: the next advance promotes)."""
        if self.phase is not RolloutPhase.CANARY or self.step + 1 >= len(self.schedule):
            return None
        return self.schedule[self.step + 1]

    def seconds_in_step(self, now: datetime | None = None) -> float:
        """How long the current step has run (0 if it has not started)."""
        if self.step_started_at is None:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - self.step_started_at).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "phase": self.phase.value,
            "active": self.active,
            "schedule": list(self.schedule),
            "step": self.step,
            "steps": len(self.schedule),
            "percent": self.percent,
            "next_percent": self.next_percent,
            "paused": self.paused,
            "started_at": self.started_at.isoformat(),
            "step_started_at": (
                None if self.step_started_at is None else self.step_started_at.isoformat()
            ),
            "updated_at": self.updated_at.isoformat(),
            "last_analysis": self.last_analysis,
            "evidence": self.evidence,
            "decision": self.decision,
            "reason": self.reason,
            "revision": self.revision,
            "actor": self.actor,
            "replaced_version": self.replaced_version,
        }


class RolloutMethods:
    """The rollout operations as methods of :class:`registry.Registry` (each delegates to
    ``self.rollouts``, see :mod:`registry.rollout_store` for what each one does)."""

    rollouts: RolloutStore

    def start_rollout(
        self,
        model: str,
        version: int,
        *,
        schedule: Sequence[float] | None = None,
        actor: str,
        reason: str,
    ) -> RolloutStatus:
        """VALIDATED -> STAGING; phase STAGING (refused if another rollout is active)."""
        return self.rollouts.start(model, version, schedule=schedule, actor=actor, reason=reason)

    def staging_passed(
        self, model: str, version: int, *, evidence: dict[str, Any], actor: str
    ) -> RolloutStatus:
        """STAGING -> STAGING_TESTED; the evidence is kept on the record."""
        return self.rollouts.staging_passed(model, version, evidence=evidence, actor=actor)

    def staging_failed(
        self, model: str, version: int, *, reason: str, evidence: dict[str, Any], actor: str
    ) -> RolloutStatus:
        """Phase FAILED; the version stays STAGING (the table has no other exit)."""
        return self.rollouts.staging_failed(
            model, version, reason=reason, evidence=evidence, actor=actor
        )

    def begin_canary(
        self, model: str, version: int, *, actor: str, manual: bool = False
    ) -> RolloutStatus:
        """STAGING_TESTED -> CANARY with the canary at ``schedule[0]`` percent."""
        return self.rollouts.begin_canary(model, version, actor=actor, manual=manual)

    def advance_rollout(
        self,
        model: str,
        *,
        expected_revision: int,
        analysis: dict[str, Any],
        actor: str,
        manual: bool = False,
    ) -> RolloutStatus:
        """The next canary step, or past the last one the promotion (compare-and-set)."""
        return self.rollouts.advance(
            model, expected_revision=expected_revision, analysis=analysis, actor=actor,
            manual=manual,
        )

    def record_rollout_analysis(
        self,
        model: str,
        *,
        expected_revision: int,
        analysis: dict[str, Any],
        decision: str,
        actor: str | None = None,
    ) -> RolloutStatus:
        """Store the last analysis and decision without stepping (compare-and-set)."""
        return self.rollouts.record_analysis(
            model, expected_revision=expected_revision, analysis=analysis, decision=decision,
            actor=actor,
        )

    def roll_back_rollout(
        self,
        model: str,
        *,
        reason: str,
        analysis: dict[str, Any] | None = None,
        actor: str,
        expected_revision: int | None = None,
    ) -> RolloutStatus:
        """Canary traffic to 0 at once, CANARY -> ROLLBACK, phase ROLLED_BACK."""
        return self.rollouts.roll_back(
            model, reason=reason, analysis=analysis, actor=actor,
            expected_revision=expected_revision,
        )

    def pause_rollout(self, model: str, *, actor: str, reason: str) -> RolloutStatus:
        return self.rollouts.pause(model, actor=actor, reason=reason)

    def resume_rollout(self, model: str, *, actor: str, reason: str) -> RolloutStatus:
        return self.rollouts.resume(model, actor=actor, reason=reason)

    def cancel_rollout(self, model: str, *, actor: str, reason: str) -> RolloutStatus:
        return self.rollouts.cancel(model, actor=actor, reason=reason)

    def get_rollout(self, model: str) -> RolloutStatus | None:
        """The model's latest rollout (active or finished), None if it never had one."""
        return self.rollouts.get(model)

    def list_rollouts(self, active_only: bool = True) -> list[RolloutStatus]:
        return self.rollouts.list(active_only=active_only)
