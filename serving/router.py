"""The traffic router: per request, which version answers and which see a mirrored copy.

Built from a model's :class:`~registry.traffic.TrafficPolicy` whenever the policy changes, then
asked per request; a decision costs a few microseconds (a hash, a comparison or two).

Order: a pinned version > the first matching segment > the canary > an experiment or the
bandit > production. The unit id (``roost-user`` header, or an entity id) makes canary and
experiment assignment sticky: ``hash(salt, unit)`` picks the same arm every time. Requests
without a unit are assigned at random (the same scheme with random points).

Scheme (documented in full in registry/traffic.py): the canary takes its percent of ALL units
first, by its own salt, so it gets exactly that share whatever else runs (never silently 0 %).
The units it leaves fall on one shared experiment layer, ``bucket("experiments", unit)``, where
every experiment owns a DISJOINT range ``[offset, offset + share)`` (shares sum to at most 100,
enforced when the policy is written); inside its range ``bucket(experiment salt, unit)`` picks
the variant by weight. Disjoint ranges rather than layered salts, because with layered salts a
unit lands in several experiments but only one can answer it, so every experiment but the first
would silently lose units to the ones before it. Units outside every range, and every unit when
a bandit runs instead of experiments, go on: to the bandit, else production.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from registry.traffic import EXPERIMENT_LAYER_SALT, Bandit, TrafficPolicy

_SCALE = 100.0 / float(1 << 64)


def bucket(salt: str, unit: str) -> float:
    """A stable position in [0, 100) for ``unit`` under ``salt``."""
    digest = hashlib.blake2b(f"{salt}\x00{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _SCALE


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the router may look at."""

    unit: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    attributes: Mapping[str, Any] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    version: int
    route: str  # pinned | segment | experiment | bandit | canary | production
    variant: str
    experiment: str | None = None
    shadows: tuple[int, ...] = ()


class ModelRouter:
    """Decides for one model; rebuilt when its policy changes (it never mutates the policy)."""

    def __init__(
        self,
        policy: TrafficPolicy,
        bandit_evidence: Mapping[int, tuple[float, float]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.evidence: dict[int, tuple[float, float]] = dict(bandit_evidence or {})
        self._rng = rng or random.Random()
        self._experiments = [
            (
                e.offset,
                e.end,
                e.id,
                e.salt,
                _cumulative([(v.weight, v.version, v.name) for v in e.variants]),
            )
            for e in sorted(policy.experiments, key=lambda e: e.offset)
        ]
        self._canary_salt = f"canary:{policy.canary.version}" if policy.canary is not None else ""
        self._flags = frozenset(policy.flags)

    def decide(self, facts: RequestFacts, pinned: int | None = None) -> Decision:
        shadows = self._shadows()
        if pinned is not None:
            return Decision(pinned, "pinned", f"v{pinned}", None, shadows)
        policy = self.policy
        for segment in policy.segments:
            if self._matches(segment.kind, segment.key, segment.values, facts):
                return Decision(segment.version, "segment", segment.id, None, shadows)
        unit = facts.unit
        if policy.canary is not None and policy.canary.percent > 0:
            if self._point(self._canary_salt, unit) < policy.canary.percent:
                return Decision(policy.canary.version, "canary", "canary", None, shadows)
        if self._experiments:
            layer = self._point(EXPERIMENT_LAYER_SALT, unit)
            for start, end, exp_id, salt, arms in self._experiments:
                if start <= layer < end:
                    version, name = _pick(arms, self._point(salt, unit))
                    return Decision(version, "experiment", name, exp_id, shadows)
        elif policy.bandit is not None:
            version = self._bandit_arm(policy.bandit)
            return Decision(version, "bandit", f"v{version}", policy.bandit.id, shadows)
        if policy.production is None:
            raise LookupError("no production version")
        return Decision(policy.production, "production", "production", None, shadows)

    def _point(self, salt: str, unit: str | None) -> float:
        """The unit's sticky position in [0, 100) under ``salt``; random without a unit."""
        return bucket(salt, unit) if unit is not None else self._rng.random() * 100

    def _shadows(self) -> tuple[int, ...]:
        if not self.policy.shadows:
            return ()
        rng = self._rng
        return tuple(
            s.version
            for s in self.policy.shadows
            if s.percent >= 100 or rng.random() * 100 < s.percent
        )

    def _matches(self, kind: str, key: str, values: tuple[str, ...], facts: RequestFacts) -> bool:
        if kind == "flag":
            return key in facts.flags or key in self._flags
        if kind == "header":
            found = facts.headers.get(key)
        else:
            raw = facts.attributes.get(key)
            found = None if raw is None else str(raw)
        return found is not None and (not values or found in values)

    def _bandit_arm(self, bandit: Bandit) -> int:
        rng = self._rng
        arms = bandit.arms
        # Each arm keeps at least `floor` of the traffic: explore uniformly that often.
        if rng.random() < bandit.floor * len(arms):
            return arms[rng.randrange(len(arms))]
        if bandit.algorithm == "epsilon_greedy":
            if rng.random() < bandit.epsilon:
                return arms[rng.randrange(len(arms))]
            return max(arms, key=lambda a: _mean(self.evidence.get(a)))
        # Thompson sampling over Beta(1 + rewards, 1 + pulls - rewards)
        best, best_draw = arms[0], -1.0
        for arm in arms:
            rewards, pulls = self.evidence.get(arm, (0.0, 0.0))
            draw = rng.betavariate(1.0 + rewards, 1.0 + max(0.0, pulls - rewards))
            if draw > best_draw:
                best, best_draw = arm, draw
        return best


def _mean(evidence: tuple[float, float] | None) -> float:
    if not evidence or evidence[1] <= 0:
        return 0.5
    return evidence[0] / evidence[1]


def _cumulative(arms: list[tuple[float, int, str]]) -> list[tuple[float, int, str]]:
    total = 0.0
    out = []
    for weight, version, name in arms:
        total += weight
        out.append((total, version, name))
    return out


def _pick(arms: list[tuple[float, int, str]], point: float) -> tuple[int, str]:
    for edge, version, name in arms:
        if point < edge:
            return version, name
    return arms[-1][1], arms[-1][2]
