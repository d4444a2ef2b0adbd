"""The policy store: where a model's traffic policy lives and the ONE way it changes.

Every change is one write transaction: read the deployment's policy and generation, apply a
``change`` (a function of the typed :class:`~registry.traffic.TrafficPolicy`, built from its
``with_*`` / ``without_*`` methods), check the versions it names, and write it with
``UPDATE deployments ... WHERE model = ? AND generation = ?`` (compare-and-set on the generation
read), bumping the global generation gateways poll and appending the audit record, all in the
same transaction. Writers are already serialised by the registry's ``_write`` (SQLite
``BEGIN IMMEDIATE``, PostgreSQL ``SELECT ... FOR UPDATE`` on the counter row); the generation
condition is what makes an edit based on an older read fail instead of overwriting: a caller
that passes ``expected_generation`` (an HTTP ``If-Match``) gets Conflict, the others retry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from registry import audit
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.lifecycle import DEPLOY_PATH, ROUTABLE, State
from registry.tables import BanditArmRow, DeploymentRow, ModelRow, VersionRow, utcnow
from registry.traffic import TrafficPolicy, parse_policy
from registry.traffic_json import FIELDS, STORED_ONLY

Change = Callable[[TrafficPolicy], TrafficPolicy]
Prepare = Callable[[Session, TrafficPolicy], None]
CAS_ATTEMPTS = 5


class StalePolicy(Conflict):
    """The deployment's generation moved between the read and the conditional write."""


class PolicyHost(Protocol):
    """What the store needs of the registry that holds it (its transactions and lifecycle)."""

    default_actor: str

    def _read(self) -> AbstractContextManager[Session]: ...
    def _write(self) -> AbstractContextManager[Session]: ...
    def _bump_generation(self, session: Session) -> int: ...
    def _version_row(self, session: Session, model: str, version: int) -> VersionRow: ...
    def _transition(
        self, session: Session, row: VersionRow, target: State, actor: str, reason: str
    ) -> None: ...
    def _deploy_in(
        self, session: Session, model: str, version: int, *, reason: str, actor: str
    ) -> Any: ...


def policy_of(dep: DeploymentRow) -> TrafficPolicy:
    data = {k: v for k, v in (dep.policy or {}).items() if k in FIELDS}
    data["production"] = dep.production_version
    return parse_policy(data)


def _identity(policy: TrafficPolicy) -> TrafficPolicy:
    return policy


class PolicyStore:
    """Traffic policies and bandit evidence, on the transactions of the registry holding it."""

    def __init__(self, host: PolicyHost) -> None:
        self._host = host

    # -- reading ----------------------------------------------------------------------------

    def get(self, model: str) -> TrafficPolicy:
        return self.read(model)[0]

    def read(self, model: str) -> tuple[TrafficPolicy, int]:
        """The policy and the deployment generation it belongs to (0: no deployment yet)."""
        with self._host._read() as session:
            dep = session.get(DeploymentRow, model)
            if dep is None:
                if session.get(ModelRow, model) is None:
                    raise NotFound(f"unknown model '{model}'")
                return TrafficPolicy(), 0
            return policy_of(dep), dep.generation

    def serving(self) -> dict[str, TrafficPolicy]:
        """The traffic policy of every deployment whose serving is enabled."""
        with self._host._read() as session:
            return {
                dep.model: policy_of(dep)
                for dep in session.execute(select(DeploymentRow)).scalars()
                if (dep.policy or {}).get("serving_enabled", True)
            }

    # -- the one way to change a policy -----------------------------------------------------

    def edit(
        self,
        model: str,
        change: Change,
        *,
        reason: str | None,
        actor: str | None = None,
        expected_generation: int | None = None,
        prepare: Prepare | None = None,
    ) -> TrafficPolicy:
        """Apply ``change`` in one write transaction, conditional on the generation read.

        ``prepare(session, current)`` runs first in the same transaction (lifecycle steps
        that must commit or roll back with the policy). On a generation mismatch the whole
        transaction is retried (up to CAS_ATTEMPTS), unless ``expected_generation`` was given.
        """
        who = actor or self._host.default_actor
        for attempt in range(CAS_ATTEMPTS):
            try:
                with self._host._write() as session:
                    if prepare is not None:
                        prepare(session, policy_of(self._deployment(session, model)))
                    return self.apply(
                        session,
                        model,
                        change,
                        reason=reason,
                        actor=who,
                        expected_generation=expected_generation,
                    )
            except StalePolicy:
                if expected_generation is not None or attempt == CAS_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def apply(
        self,
        session: Session,
        model: str,
        change: Change,
        *,
        reason: str | None,
        actor: str,
        expected_generation: int | None = None,
    ) -> TrafficPolicy:
        """``edit`` inside the caller's write transaction. ``reason=None``: a step of another
        audited action (deploy, a transition): no own audit record, nothing written if the
        policy did not change, and no routability check (such steps only remove routes or
        name the version the lifecycle just moved)."""
        session.flush()
        dep = self._deployment(session, model)
        read = dep.generation
        if expected_generation is not None and expected_generation != read:
            raise StalePolicy(
                f"the policy of '{model}' changed: its generation is {read}, not "
                f"{expected_generation}; read it again and retry"
            )
        current = policy_of(dep)
        new = change(current)
        if reason is None and new == current:
            return current
        if reason is not None:
            self._check_routable(session, model, new)
        stored = {k: v for k, v in (dep.policy or {}).items() if k in STORED_ONLY}
        stored.update({k: v for k, v in new.to_dict().items() if k != "production"})
        written = session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.model == model, DeploymentRow.generation == read)
            .values(
                policy=stored,
                production_version=new.production,
                generation=self._host._bump_generation(session),
                updated_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        )
        if cast("CursorResult[Any]", written).rowcount != 1:
            raise StalePolicy(
                f"the policy of '{model}' changed while it was being edited (generation {read})"
            )
        session.expire(dep)
        if reason is not None:
            audit.append(
                session,
                actor=actor,
                action="traffic",
                model=model,
                details={"policy": new.to_dict(), "reason": reason},
            )
        return new

    def _deployment(self, session: Session, model: str) -> DeploymentRow:
        dep = session.get(DeploymentRow, model, populate_existing=True)
        if dep is None:
            if session.get(ModelRow, model) is None:
                raise NotFound(f"unknown model '{model}'")
            raise Conflict(f"model '{model}' has no deployment; deploy a version first")
        return dep

    def _check_routable(self, session: Session, model: str, policy: TrafficPolicy) -> None:
        states = dict(
            session.execute(
                select(VersionRow.version, VersionRow.state).where(VersionRow.model == model)
            ).all()
        )
        for version in sorted(policy.versions()):
            if version not in states:
                raise InvalidRequest(f"model '{model}' has no version {version}")
            if State(states[version]) not in ROUTABLE:
                routable = ", ".join(s.value for s in State if s in ROUTABLE)
                raise InvalidRequest(
                    f"version {version} of '{model}' is {states[version]}; traffic can only go "
                    f"to a version that is {routable}"
                )
        if policy.canary and states[policy.canary.version] != State.CANARY.value:
            raise InvalidRequest(
                f"canary: version {policy.canary.version} is {states[policy.canary.version]}, "
                "not CANARY; start it with `roost canary`"
            )

    # -- operations that also move a version through the lifecycle --------------------------

    def set(
        self,
        model: str,
        data: dict[str, Any],
        *,
        reason: str,
        actor: str | None = None,
        expected_generation: int | None = None,
    ) -> TrafficPolicy:
        """Replace every route but production (which changes through deploy) with ``data``."""
        parsed = parse_policy(data)

        def replace_traffic(current: TrafficPolicy) -> TrafficPolicy:
            if parsed.production is not None and parsed.production != current.production:
                raise InvalidRequest(
                    f"production: is {current.production}; change it with deploy, not the "
                    "traffic policy"
                )
            return current.with_traffic(parsed)

        return self.edit(
            model,
            replace_traffic,
            reason=reason,
            actor=actor,
            expected_generation=expected_generation,
        )

    def start_canary(
        self, model: str, version: int, percent: float, *, actor: str | None = None
    ) -> TrafficPolicy:
        """Walk a VALIDATED version to CANARY (audited) and give it ``percent`` of all units,
        in one transaction; refused before any state changes if the policy refuses it."""
        who = actor or self._host.default_actor

        def walk(session: Session, current: TrafficPolicy) -> None:
            current.with_canary(version, percent)  # refused here: no state has changed
            row = self._host._version_row(session, model, version)
            if row.state == State.VALIDATED.value:
                for step in DEPLOY_PATH[:-1]:
                    self._host._transition(session, row, step, who, f"canary at {percent:g}%")
            elif row.state != State.CANARY.value:
                raise Conflict(
                    f"version {version} of '{model}' is {row.state}; a canary must be VALIDATED "
                    "or already CANARY"
                )

        return self.edit(
            model,
            lambda p: p.with_canary(version, percent),
            reason=f"canary {percent:g}%",
            actor=who,
            prepare=walk,
        )

    def rollback_canary(
        self, model: str, *, reason: str, actor: str | None = None
    ) -> TrafficPolicy:
        """Move the canary CANARY -> ROLLBACK (audited), which takes it out of the policy."""
        who = actor or self._host.default_actor
        if not reason.strip():
            raise InvalidRequest("reason: a non-empty reason is required for a rollback")

        def walk(session: Session, current: TrafficPolicy) -> None:
            if current.canary is None:
                raise Conflict(f"model '{model}' has no canary")
            row = self._host._version_row(session, model, current.canary.version)
            self._host._transition(session, row, State.ROLLBACK, who, reason)

        return self.edit(model, _identity, reason=None, actor=who, prepare=walk)

    def promote_canary(self, model: str, *, actor: str | None = None) -> TrafficPolicy:
        """Deploy the canary (CANARY -> PRODUCTION) in the transaction that read it."""
        who = actor or self._host.default_actor

        def walk(session: Session, current: TrafficPolicy) -> None:
            if current.canary is None:
                raise Conflict(f"model '{model}' has no canary to promote")
            self._host._deploy_in(
                session, model, current.canary.version, reason="promote canary", actor=who
            )

        return self.edit(model, _identity, reason=None, actor=who, prepare=walk)

    # -- bandits ----------------------------------------------------------------------------

    def record_rewards(
        self, model: str, bandit: str, rewards: dict[int, tuple[float, float]]
    ) -> None:
        """Add (reward sum, pulls) per arm, as gateways observe feedback."""
        with self._host._write() as session:
            for version, (reward, pulls) in rewards.items():
                row = session.get(BanditArmRow, (model, bandit, version))
                if row is None:
                    row = BanditArmRow(
                        model=model, bandit=bandit, version=version, rewards=0.0, pulls=0.0
                    )
                    session.add(row)
                row.rewards += reward
                row.pulls += pulls

    def bandit_stats(self) -> dict[tuple[str, str], dict[int, tuple[float, float]]]:
        """(model, bandit) -> arm version -> (reward sum, pulls)."""
        out: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
        with self._host._read() as session:
            for row in session.execute(select(BanditArmRow)).scalars():
                out.setdefault((row.model, row.bandit), {})[row.version] = (row.rewards, row.pulls)
        return out
