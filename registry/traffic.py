"""Traffic policies: which version answers a request, and which see a mirrored copy.

A policy is one immutable, typed value, :class:`TrafficPolicy`, changed ONLY through its methods
(``with_shadow``, ``without_experiment``, ``with_canary`` ...): each returns a new policy that has
passed :meth:`TrafficPolicy.check`, or raises ``InvalidRequest`` (malformed, naming the field) or
``Conflict`` (contradicts the running policy). ``parse_policy`` (registry/traffic_json.py) reads
the JSON form of stored rows, HTTP bodies and the CLI; ``to_dict`` writes it. The registry stores
it in the deployment row and changes it in one transaction (registry/policies.py).

Routing (serving/router.py), per request: a pinned version > the first matching segment > the
canary > an experiment or the bandit > production.

* The canary takes its percent of ALL units first, by its own salt (``canary:<version>``), so its
  share is exactly what the operator set whatever else runs; it never silently gets 0 %.
* Experiments split the remaining units by DISJOINT RANGES of one shared experiment layer: a unit
  sits at ``bucket("experiments", unit)`` in [0, 100) and experiment *e* owns
  ``[e.offset, e.offset + e.share)``; shares sum to at most 100 (refused otherwise), units outside
  every range go on to production. The variant inside an experiment is ``bucket(e.salt, unit)``
  against the cumulative weights. We chose disjoint ranges over layered salts because with
  overlapping layers a unit falls into several experiments but can be answered by one version
  only, so every experiment but the first loses units to the ones before it and its real share
  depends on all the others; with ranges each experiment gets exactly its declared share, no unit
  is in two experiments (no interaction between them), and the arithmetic is checked when the
  policy is written. Offsets are stored, so stopping one experiment never moves the units of
  another. An experiment started without a share takes the largest free range.
* The bandit (which cannot run with experiments) answers every non-canary unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from registry.errors import Conflict, InvalidRequest
from registry.traffic_rules import allocate, check_experiment, check_percent, check_ranges

ROUTE_ORDER = ("pinned", "segment", "canary", "experiment", "bandit", "production")
BANDIT_ALGORITHMS = ("thompson", "epsilon_greedy")
MATCH_KINDS = ("header", "attribute", "flag")
EXPERIMENT_LAYER_SALT = "experiments"


@dataclass(frozen=True)
class Canary:
    version: int
    percent: float
    """Share of requests (0-100) the canary answers; sticky per unit id when one is given."""


@dataclass(frozen=True)
class Variant:
    version: int
    weight: float
    name: str


@dataclass(frozen=True)
class Experiment:
    id: str
    variants: tuple[Variant, ...]
    salt: str
    """Variant assignment is a hash of salt and unit id, so a new salt reshuffles units."""
    share: float = 100.0
    """Percent of the experiment layer (the units the canary did not take) in the experiment."""
    offset: float = 0.0
    """Where its range of the layer starts: it owns [offset, offset + share)."""

    @property
    def end(self) -> float:
        return self.offset + self.share


@dataclass(frozen=True)
class Shadow:
    version: int
    percent: float
    """Share of requests (0-100) mirrored to the version after the primary is answered."""


@dataclass(frozen=True)
class Segment:
    """Send requests that match to ``version``: header / request attribute / feature flag."""

    id: str
    version: int
    kind: str  # header | attribute | flag
    key: str  # header name, attribute name (OIP parameters / v1 body), or flag name
    values: tuple[str, ...] = ()  # header/attribute values that match (empty: any value)


@dataclass(frozen=True)
class Bandit:
    id: str
    arms: tuple[int, ...]
    algorithm: str = "thompson"
    epsilon: float = 0.1
    floor: float = 0.05
    """Least share each arm keeps, so a losing arm still gathers evidence."""


@dataclass(frozen=True)
class TrafficPolicy:
    production: int | None = None
    canary: Canary | None = None
    experiments: tuple[Experiment, ...] = ()
    shadows: tuple[Shadow, ...] = ()
    segments: tuple[Segment, ...] = ()
    bandit: Bandit | None = None
    flags: tuple[str, ...] = ()
    """Feature flags switched on for every request (besides the ``roost-flags`` header)."""

    def versions(self) -> set[int]:
        """Every version the policy can send traffic (or mirrored traffic) to."""
        found = {self.production} if self.production is not None else set()
        if self.canary:
            found.add(self.canary.version)
        for experiment in self.experiments:
            found |= {v.version for v in experiment.variants}
        found |= {s.version for s in self.shadows}
        found |= {s.version for s in self.segments}
        if self.bandit:
            found |= set(self.bandit.arms)
        return found

    def check(self) -> TrafficPolicy:
        """This policy if every rule across its fields holds, else InvalidRequest naming it."""
        if self.canary is not None:
            check_percent(self.canary.percent, "canary.percent")
        seen: set[str] = set()
        for i, experiment in enumerate(self.experiments):
            if experiment.id in seen:
                raise InvalidRequest(
                    f"experiments[{i}].id: experiment '{experiment.id}' appears twice"
                )
            seen.add(experiment.id)
            check_experiment(experiment, f"experiments[{i}]")
        check_ranges(self.experiments)
        for i, shadow in enumerate(self.shadows):
            check_percent(shadow.percent, f"shadows[{i}].percent")
        if len({s.version for s in self.shadows}) != len(self.shadows):
            raise InvalidRequest("shadows: a version appears twice")
        if self.bandit is not None:
            b = self.bandit
            if len(b.arms) < 2 or len(set(b.arms)) != len(b.arms):
                raise InvalidRequest("bandit.arms: expected at least two distinct versions")
            if b.algorithm not in BANDIT_ALGORITHMS:
                raise InvalidRequest(
                    f"bandit.algorithm: expected one of {', '.join(BANDIT_ALGORITHMS)}, "
                    f"got {b.algorithm!r}"
                )
            if not 0 <= b.epsilon <= 1:
                raise InvalidRequest("bandit.epsilon: expected a number from 0 to 1")
            if not 0 <= b.floor * len(b.arms) <= 1:
                raise InvalidRequest("bandit.floor: expected a share per arm, floor x arms <= 1")
            if self.experiments:
                raise InvalidRequest("bandit: a bandit and experiments cannot run together")
        if not all(isinstance(f, str) and f for f in self.flags):
            raise InvalidRequest("flags: expected a list of flag names")
        return self

    # -- edits: each returns a new, checked policy -------------------------------------------

    def with_production(self, version: int | None) -> TrafficPolicy:
        """``version`` answers by default; it stops being the canary if it was."""
        canary = self.canary
        if canary is not None and canary.version == version:
            canary = None
        return replace(self, production=version, canary=canary).check()

    def with_canary(self, version: int, percent: float) -> TrafficPolicy:
        """``version`` answers ``percent`` of all units (before experiments and the bandit)."""
        share = check_percent(percent, "canary.percent")
        if self.canary is not None and self.canary.version != version:
            raise Conflict(
                f"canary: version {self.canary.version} is the canary; promote or roll it back "
                "before starting another"
            )
        if version == self.production:
            raise Conflict(f"canary: version {version} is the production version")
        return replace(self, canary=Canary(version, share)).check()

    def without_canary(self) -> TrafficPolicy:
        if self.canary is None:
            raise Conflict("canary: there is no canary")
        return replace(self, canary=None).check()

    def with_shadow(self, version: int, percent: float = 100.0) -> TrafficPolicy:
        """Mirror ``percent`` of requests to ``version`` (replacing its old share)."""
        share = check_percent(percent, "shadows.percent")
        kept = tuple(s for s in self.shadows if s.version != version)
        return replace(self, shadows=(*kept, Shadow(version, share))).check()

    def without_shadow(self, version: int) -> TrafficPolicy:
        kept = tuple(s for s in self.shadows if s.version != version)
        if len(kept) == len(self.shadows):
            raise Conflict(f"shadows: there is no shadow version {version}")
        return replace(self, shadows=kept).check()

    def with_experiment(
        self,
        experiment_id: str,
        variants: Sequence[Variant],
        *,
        salt: str | None = None,
        share: float | None = None,
    ) -> TrafficPolicy:
        """Start an experiment on ``share`` % of the experiment layer (default: the largest
        free range); refused while it runs already, while a bandit runs, or if it does not fit.
        """
        if any(e.id == experiment_id for e in self.experiments):
            raise Conflict(f"experiments: experiment '{experiment_id}' is already running")
        if self.bandit is not None:
            raise Conflict(
                f"experiments: bandit '{self.bandit.id}' is running; a bandit and experiments "
                "cannot run together (remove the bandit first)"
            )
        where = f"experiments[{len(self.experiments)}]"
        draft = Experiment(experiment_id, tuple(variants), salt or experiment_id)
        check_experiment(draft, where)
        got, offset = allocate(self.experiments, share, where, Conflict)
        new = replace(draft, share=got, offset=offset)
        return replace(self, experiments=(*self.experiments, new)).check()

    def without_experiment(self, experiment_id: str) -> TrafficPolicy:
        kept = tuple(e for e in self.experiments if e.id != experiment_id)
        if len(kept) == len(self.experiments):
            raise Conflict(f"experiments: there is no running experiment '{experiment_id}'")
        return replace(self, experiments=kept).check()

    def with_segment(self, segment: Segment) -> TrafficPolicy:
        """Add a segment rule last, or replace the one with the same id in place."""
        if any(s.id == segment.id for s in self.segments):
            segments = tuple(segment if s.id == segment.id else s for s in self.segments)
        else:
            segments = (*self.segments, segment)
        return replace(self, segments=segments).check()

    def without_segment(self, segment_id: str) -> TrafficPolicy:
        kept = tuple(s for s in self.segments if s.id != segment_id)
        if len(kept) == len(self.segments):
            raise Conflict(f"segments: there is no segment '{segment_id}'")
        return replace(self, segments=kept).check()

    def with_bandit(self, bandit: Bandit) -> TrafficPolicy:
        if self.experiments:
            running = ", ".join(f"'{e.id}'" for e in self.experiments)
            raise Conflict(
                f"bandit: experiments {running} are running; a bandit and experiments cannot "
                "run together (stop them first)"
            )
        return replace(self, bandit=bandit).check()

    def without_bandit(self) -> TrafficPolicy:
        if self.bandit is None:
            raise Conflict("bandit: there is no bandit")
        return replace(self, bandit=None).check()

    def with_flags(self, flags: Iterable[str]) -> TrafficPolicy:
        return replace(self, flags=tuple(flags)).check()

    def with_traffic(self, other: TrafficPolicy) -> TrafficPolicy:
        """Every route of ``other`` but this policy's production version (``set_policy``)."""
        return replace(other, production=self.production).check()

    def without_version(self, version: int) -> TrafficPolicy:
        """Every route to ``version`` removed (a version that left service)."""
        return replace(
            self,
            production=None if self.production == version else self.production,
            canary=None if self.canary and self.canary.version == version else self.canary,
            experiments=tuple(
                e for e in self.experiments if all(v.version != version for v in e.variants)
            ),
            shadows=tuple(s for s in self.shadows if s.version != version),
            segments=tuple(s for s in self.segments if s.version != version),
            bandit=None if self.bandit and version in self.bandit.arms else self.bandit,
        ).check()

    def to_dict(self) -> dict[str, Any]:
        return {
            "production": self.production,
            "canary": None
            if self.canary is None
            else {"version": self.canary.version, "percent": self.canary.percent},
            "experiments": [
                {
                    "id": e.id,
                    "salt": e.salt,
                    "share": e.share,
                    "offset": e.offset,
                    "variants": [
                        {"version": v.version, "weight": v.weight, "name": v.name}
                        for v in e.variants
                    ],
                }
                for e in self.experiments
            ],
            "shadows": [{"version": s.version, "percent": s.percent} for s in self.shadows],
            "segments": [
                {
                    "id": s.id,
                    "version": s.version,
                    "match": {s.kind: s.key, "values": list(s.values)},
                }
                for s in self.segments
            ],
            "bandit": None
            if self.bandit is None
            else {
                "id": self.bandit.id,
                "arms": list(self.bandit.arms),
                "algorithm": self.bandit.algorithm,
                "epsilon": self.bandit.epsilon,
                "floor": self.bandit.floor,
            },
            "flags": list(self.flags),
        }


def parse_policy(data: dict[str, Any]) -> TrafficPolicy:
    """A policy from its JSON form, checked; errors name the field (registry/traffic_json.py)."""
    from registry.traffic_json import parse_policy as parse

    return parse(data)


def parse_variants(raw: Any, where: str) -> tuple[Variant, ...]:
    """Experiment variants from their JSON form: ``[{version, weight, name?}, ...]``."""
    from registry.traffic_json import parse_variants as parse

    return parse(raw, where)
