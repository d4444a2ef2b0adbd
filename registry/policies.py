"""Traffic policies and bandit evidence: the part of :class:`~registry.service.Registry` that
decides where a model's requests go (kept apart so the core registry stays small)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit
from registry.errors import Conflict, InvalidRequest, NotFound
from registry.lifecycle import DEPLOY_PATH, ROUTABLE, State
from registry.tables import BanditArmRow, DeploymentRow, ModelRow, VersionRow
from registry.traffic import TrafficPolicy, parse_policy

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from registry.service import VersionInfo

TRAFFIC_KEYS = ("canary", "experiments", "shadows", "segments", "bandit", "flags")


class TrafficPolicies:
    """Mixed into Registry; every method runs on the registry's own transactions."""

    if TYPE_CHECKING:  # provided by Registry
        default_actor: str

        def _read(self) -> AbstractContextManager[Session]: ...
        def _write(self) -> AbstractContextManager[Session]: ...
        def _touch(self, session: Session, deployment: DeploymentRow) -> None: ...
        def _version_row(self, session: Session, model: str, version: int) -> VersionRow: ...
        def _transition(
            self, session: Session, row: VersionRow, target: State, actor: str, reason: str
        ) -> None: ...
        def transition(
            self,
            model: str,
            version: int,
            target: State,
            *,
            reason: str,
            actor: str | None = None,
        ) -> VersionInfo: ...

    def get_policy(self, model: str) -> TrafficPolicy:
        with self._read() as session:
            dep = session.get(DeploymentRow, model)
            if dep is None:
                if session.get(ModelRow, model) is None:
                    raise NotFound(f"unknown model '{model}'")
                return TrafficPolicy()
            return policy_of(dep)

    def set_policy(
        self,
        model: str,
        data: dict[str, Any],
        *,
        reason: str = "traffic policy",
        actor: str | None = None,
    ) -> TrafficPolicy:
        """Replace the traffic part of a model's policy (production changes go through deploy).

        Every version named must exist and be routable (canary: in CANARY); an invalid policy
        is refused and the running one is untouched.
        """
        parsed = parse_policy(data)
        with self._write() as session:
            dep = session.get(DeploymentRow, model)
            if dep is None:
                if session.get(ModelRow, model) is None:
                    raise NotFound(f"unknown model '{model}'")
                raise Conflict(f"model '{model}' has no deployment; deploy a version first")
            if parsed.production is not None and parsed.production != dep.production_version:
                raise InvalidRequest(
                    f"production: is {dep.production_version}; change it with deploy, not the "
                    "traffic policy"
                )
            self._check_routable(session, model, parsed)
            policy = dict(dep.policy or {})
            for key, value in parsed.to_dict().items():
                if key in TRAFFIC_KEYS:
                    policy[key] = value
            dep.policy = policy
            self._touch(session, dep)
            audit.append(
                session,
                actor=actor or self.default_actor,
                action="traffic",
                model=model,
                details={"policy": policy_of(dep).to_dict(), "reason": reason},
            )
            return policy_of(dep)

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

    def policies(self) -> dict[str, TrafficPolicy]:
        """The traffic policy of every deployment whose serving is enabled."""
        with self._read() as session:
            return {
                dep.model: policy_of(dep)
                for dep in session.execute(select(DeploymentRow)).scalars()
                if (dep.policy or {}).get("serving_enabled", True)
            }

    def start_canary(
        self, model: str, version: int, percent: float, *, actor: str | None = None
    ) -> TrafficPolicy:
        """Walk a VALIDATED version to CANARY (audited) and give it ``percent`` of traffic.

        Refused before any state changes if the percentage is invalid or another version is
        the canary (promote or roll that one back first).
        """
        who = actor or self.default_actor
        if isinstance(percent, bool) or not 0 <= percent <= 100:
            raise InvalidRequest(f"canary.percent: expected 0 to 100, got {percent!r}")
        running = self.get_policy(model).canary
        if running is not None and running.version != version:
            raise Conflict(
                f"version {running.version} of '{model}' is the canary; promote or roll it back "
                "before starting another"
            )
        with self._write() as session:
            row = self._version_row(session, model, version)
            if row.state == State.VALIDATED.value:
                for step in DEPLOY_PATH[:-1]:
                    self._transition(session, row, step, who, f"canary at {percent:g}%")
            elif row.state != State.CANARY.value:
                raise Conflict(
                    f"version {version} of '{model}' is {row.state}; a canary must be VALIDATED "
                    "or already CANARY"
                )
        current = self.get_policy(model).to_dict()
        current["canary"] = {"version": version, "percent": percent}
        return self.set_policy(model, current, reason=f"canary {percent:g}%", actor=who)

    def rollback_canary(
        self, model: str, *, reason: str, actor: str | None = None
    ) -> TrafficPolicy:
        """Take all traffic off the canary and move it CANARY -> ROLLBACK (audited)."""
        policy = self.get_policy(model)
        if policy.canary is None:
            raise Conflict(f"model '{model}' has no canary")
        self.transition(model, policy.canary.version, State.ROLLBACK, reason=reason, actor=actor)
        return self.get_policy(model)

    # -- bandits ------------------------------------------------------------------------------

    def record_rewards(
        self, model: str, bandit: str, rewards: dict[int, tuple[float, float]]
    ) -> None:
        """Add (reward sum, pulls) per arm, as gateways observe feedback."""
        with self._write() as session:
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
        with self._read() as session:
            for row in session.execute(select(BanditArmRow)).scalars():
                out.setdefault((row.model, row.bandit), {})[row.version] = (row.rewards, row.pulls)
        return out


def policy_of(dep: DeploymentRow) -> TrafficPolicy:
    data = {k: v for k, v in (dep.policy or {}).items() if k in TRAFFIC_KEYS}
    data["production"] = dep.production_version
    return parse_policy(data)


def without_version(policy: dict[str, Any], version: int) -> dict[str, Any]:
    """The policy with every route to ``version`` removed (a version that left service)."""
    out = dict(policy)
    if (out.get("canary") or {}).get("version") == version:
        out["canary"] = None
    if out.get("shadows"):
        out["shadows"] = [s for s in out["shadows"] if s.get("version") != version]
    if out.get("segments"):
        out["segments"] = [s for s in out["segments"] if s.get("version") != version]
    if out.get("experiments"):
        out["experiments"] = [
            e
            for e in out["experiments"]
            if all(v.get("version") != version for v in e.get("variants", []))
        ]
    if out.get("bandit") and version in (out["bandit"].get("arms") or []):
        out["bandit"] = None
    return out
