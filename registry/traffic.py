"""Traffic policies: which version answers a request, and which see a mirrored copy.

A policy lives in the deployment row (JSON), versioned by the deployment's generation; every
change is audited. Evaluation order (serving/router.py): a pinned version, then the first
matching segment, then an experiment or bandit the request's unit falls into, then the canary,
then production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidRequest

ROUTE_ORDER = ("pinned", "segment", "experiment", "bandit", "canary", "production")
BANDIT_ALGORITHMS = ("thompson", "epsilon_greedy")
MATCH_KINDS = ("header", "attribute", "flag")


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
    """Assignment is a hash of salt and unit id, so a new salt reshuffles units."""


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


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{where}: expected a version number, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{where}: expected a version number, got {value!r}") from None


def _percent(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidRequest(f"{where}: expected a percentage from 0 to 100, got {value!r}")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise InvalidRequest(f"{where}: expected a non-empty name of at most 128 characters")
    return value.strip()


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InvalidRequest(f"{key}: expected a list")
    return value


def parse_policy(data: dict[str, Any]) -> TrafficPolicy:
    """A policy from its JSON form, checked; errors name the field and the expectation."""
    if not isinstance(data, dict):
        raise InvalidRequest("policy: expected an object")
    known = {
        "production",
        "canary",
        "experiments",
        "shadows",
        "segments",
        "bandit",
        "flags",
        "serving_enabled",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidRequest(
            f"policy: unknown field '{unknown[0]}'; fields: {', '.join(sorted(known))}"
        )
    production = data.get("production")
    canary = None
    if data.get("canary") is not None:
        raw = data["canary"]
        if not isinstance(raw, dict):
            raise InvalidRequest("canary: expected {version, percent}")
        canary = Canary(
            _int(raw.get("version"), "canary.version"),
            _percent(raw.get("percent"), "canary.percent"),
        )
    experiments = []
    seen_ids: set[str] = set()
    for i, raw in enumerate(_list(data, "experiments")):
        where = f"experiments[{i}]"
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{where}: expected an object")
        exp_id = _name(raw.get("id"), f"{where}.id")
        if exp_id in seen_ids:
            raise InvalidRequest(f"{where}.id: experiment '{exp_id}' appears twice")
        seen_ids.add(exp_id)
        variants = []
        for j, v in enumerate(raw.get("variants") or []):
            if not isinstance(v, dict):
                raise InvalidRequest(f"{where}.variants[{j}]: expected {{version, weight}}")
            version = _int(v.get("version"), f"{where}.variants[{j}].version")
            weight = _percent(v.get("weight"), f"{where}.variants[{j}].weight")
            name = v.get("name") or f"v{version}"
            variants.append(Variant(version, weight, _name(name, f"{where}.variants[{j}].name")))
        if len(variants) < 2:
            raise InvalidRequest(f"{where}.variants: an experiment needs at least two variants")
        total = sum(v.weight for v in variants)
        if abs(total - 100.0) > 1e-6:
            raise InvalidRequest(f"{where}.variants: weights must sum to 100, got {total:g}")
        if len({v.name for v in variants}) != len(variants):
            raise InvalidRequest(f"{where}.variants: variant names must be unique")
        salt = raw.get("salt") or exp_id
        experiments.append(Experiment(exp_id, tuple(variants), _name(salt, f"{where}.salt")))
    shadows = []
    for i, raw in enumerate(_list(data, "shadows")):
        if not isinstance(raw, dict):
            raise InvalidRequest(f"shadows[{i}]: expected {{version, percent}}")
        shadows.append(
            Shadow(
                _int(raw.get("version"), f"shadows[{i}].version"),
                _percent(raw.get("percent", 100), f"shadows[{i}].percent"),
            )
        )
    if len({s.version for s in shadows}) != len(shadows):
        raise InvalidRequest("shadows: a version appears twice")
    segments = []
    for i, raw in enumerate(_list(data, "segments")):
        where = f"segments[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("match"), dict):
            raise InvalidRequest(
                f"{where}: expected {{id, version, match: {{header|attribute|flag: name}}}}"
            )
        match = raw["match"]
        kinds = [k for k in MATCH_KINDS if k in match]
        if len(kinds) != 1:
            raise InvalidRequest(f"{where}.match: expected exactly one of header, attribute, flag")
        values = match.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidRequest(f"{where}.match.values: expected a list of strings")
        kind = kinds[0]
        key = _name(match[kind], f"{where}.match.{kind}")
        segments.append(
            Segment(
                _name(raw.get("id") or f"segment-{i}", f"{where}.id"),
                _int(raw.get("version"), f"{where}.version"),
                kind,
                key.lower() if kind == "header" else key,
                tuple(values),
            )
        )
    bandit = None
    if data.get("bandit") is not None:
        raw = data["bandit"]
        if not isinstance(raw, dict):
            raise InvalidRequest("bandit: expected {id, arms, algorithm}")
        arms = tuple(_int(a, f"bandit.arms[{i}]") for i, a in enumerate(raw.get("arms") or []))
        if len(arms) < 2 or len(set(arms)) != len(arms):
            raise InvalidRequest("bandit.arms: expected at least two distinct versions")
        algorithm = raw.get("algorithm", "thompson")
        if algorithm not in BANDIT_ALGORITHMS:
            raise InvalidRequest(
                f"bandit.algorithm: expected one of {', '.join(BANDIT_ALGORITHMS)}, "
                f"got {algorithm!r}"
            )
        epsilon = raw.get("epsilon", 0.1)
        floor = raw.get("floor", 0.05)
        if not isinstance(epsilon, int | float) or not 0 <= epsilon <= 1:
            raise InvalidRequest("bandit.epsilon: expected a number from 0 to 1")
        if not isinstance(floor, int | float) or not 0 <= floor * len(arms) <= 1:
            raise InvalidRequest("bandit.floor: expected a share per arm, floor x arms <= 1")
        bandit = Bandit(
            _name(raw.get("id") or "bandit", "bandit.id"),
            arms,
            algorithm,
            float(epsilon),
            float(floor),
        )
        if experiments:
            raise InvalidRequest("bandit: a bandit and experiments cannot run together")
    flags = data.get("flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise InvalidRequest("flags: expected a list of flag names")
    return TrafficPolicy(
        production=None if production is None else _int(production, "production"),
        canary=canary,
        experiments=tuple(experiments),
        shadows=tuple(shadows),
        segments=tuple(segments),
        bandit=bandit,
        flags=tuple(flags),
    )
