"""The JSON form of a traffic policy (stored rows, HTTP bodies, the CLI) read into the typed
model of registry/traffic.py; every error names the field and what was expected.

Experiments written before shares existed (no ``share``/``offset``) are read as: the shares not
given split equally what the given ones leave, and ranges without an offset take the first free
range that fits, in order. The stored form always carries both, so ranges never move.
"""

from __future__ import annotations

from typing import Any

from registry.errors import InvalidRequest
from registry.traffic import (
    MATCH_KINDS,
    Bandit,
    Canary,
    Experiment,
    Segment,
    Shadow,
    TrafficPolicy,
    Variant,
)
from registry.traffic_rules import allocate, check_percent, check_ranges

FIELDS = ("production", "canary", "experiments", "shadows", "segments", "bandit", "flags")
STORED_ONLY = ("serving_enabled",)  # kept in the deployment's JSON beside the policy


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"{where}: expected a version number, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(f"{where}: expected a version number, got {value!r}") from None


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 128:
        raise InvalidRequest(f"{where}: expected a non-empty name of at most 128 characters")
    return value.strip()


def _number(value: Any, where: str, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"{where}: expected {what}")
    return float(value)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InvalidRequest(f"{key}: expected a list")
    return value


def parse_variants(raw: Any, where: str) -> tuple[Variant, ...]:
    """``[{version, weight, name?}, ...]``; a variant's name defaults to ``v<version>``."""
    if not isinstance(raw, list):
        raise InvalidRequest(f"{where}.variants: expected a list of {{version, weight}}")
    variants = []
    for j, v in enumerate(raw):
        at = f"{where}.variants[{j}]"
        if not isinstance(v, dict):
            raise InvalidRequest(f"{at}: expected {{version, weight}}")
        version = _int(v.get("version"), f"{at}.version")
        weight = check_percent(v.get("weight"), f"{at}.weight")
        variants.append(Variant(version, weight, _name(v.get("name") or f"v{version}", at)))
    return tuple(variants)


def _experiments(data: dict[str, Any]) -> tuple[Experiment, ...]:
    raws = _list(data, "experiments")
    drafts: list[tuple[Experiment, float | None, float | None]] = []
    for i, raw in enumerate(raws):
        where = f"experiments[{i}]"
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{where}: expected an object")
        exp_id = _name(raw.get("id"), f"{where}.id")
        share = raw.get("share")
        offset = raw.get("offset")
        if share is not None:
            share = _number(share, f"{where}.share", 0, 100, "a percentage from 0 to 100")
        if offset is not None:
            offset = _number(offset, f"{where}.offset", 0, 100, "a percentage from 0 to 100")
        salt = _name(raw.get("salt") or exp_id, f"{where}.salt")
        variants = parse_variants(raw.get("variants") or [], where)
        drafts.append((Experiment(exp_id, variants, salt), share, offset))
    declared = sum(s for _, s, _ in drafts if s is not None)
    undeclared = sum(1 for _, s, _ in drafts if s is None)
    if declared > 100 + 1e-6:
        check_ranges([Experiment(e.id, e.variants, e.salt, s or 0.0) for e, s, _ in drafts])
    each = (100.0 - declared) / undeclared if undeclared else 0.0
    if undeclared and each < 1e-6:
        i = next(i for i, (_, s, _) in enumerate(drafts) if s is None)
        raise InvalidRequest(
            f"experiments[{i}].share: the experiments with a share take all the traffic; "
            "give this one a share too"
        )
    sized = [(e, each if s is None else s, o) for e, s, o in drafts]
    placed = [
        Experiment(e.id, e.variants, e.salt, s, o) for e, s, o in sized if o is not None
    ]
    out: list[Experiment] = []
    for i, (e, share, offset) in enumerate(sized):
        if offset is None:
            got, offset = allocate(placed, share, f"experiments[{i}]", InvalidRequest)
            placed.append(Experiment(e.id, e.variants, e.salt, got, offset))
        out.append(Experiment(e.id, e.variants, e.salt, share, offset))
    return tuple(out)


def _segment(raw: Any, i: int) -> Segment:
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
    return Segment(
        _name(raw.get("id") or f"segment-{i}", f"{where}.id"),
        _int(raw.get("version"), f"{where}.version"),
        kind,
        key.lower() if kind == "header" else key,
        tuple(values),
    )


def parse_bandit(raw: Any) -> Bandit:
    if not isinstance(raw, dict):
        raise InvalidRequest("bandit: expected {id, arms, algorithm}")
    arms = tuple(_int(a, f"bandit.arms[{i}]") for i, a in enumerate(raw.get("arms") or []))
    algorithm = raw.get("algorithm", "thompson")
    if not isinstance(algorithm, str):
        raise InvalidRequest(f"bandit.algorithm: expected a name, got {algorithm!r}")
    return Bandit(
        _name(raw.get("id") or "bandit", "bandit.id"),
        arms,
        algorithm,
        _number(raw.get("epsilon", 0.1), "bandit.epsilon", 0, 1, "a number from 0 to 1"),
        _number(
            raw.get("floor", 0.05), "bandit.floor", 0, 1, "a share per arm, floor x arms <= 1"
        ),
    )


def parse_policy(data: dict[str, Any]) -> TrafficPolicy:
    """A policy from its JSON form, checked; errors name the field and the expectation."""
    if not isinstance(data, dict):
        raise InvalidRequest("policy: expected an object")
    known = (*FIELDS, *STORED_ONLY)
    unknown = sorted(set(data) - set(known))
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
            check_percent(raw.get("percent"), "canary.percent"),
        )
    shadows = []
    for i, raw in enumerate(_list(data, "shadows")):
        if not isinstance(raw, dict):
            raise InvalidRequest(f"shadows[{i}]: expected {{version, percent}}")
        shadows.append(
            Shadow(
                _int(raw.get("version"), f"shadows[{i}].version"),
                check_percent(raw.get("percent", 100), f"shadows[{i}].percent"),
            )
        )
    flags = data.get("flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise InvalidRequest("flags: expected a list of flag names")
    return TrafficPolicy(
        production=None if production is None else _int(production, "production"),
        canary=canary,
        experiments=_experiments(data),
        shadows=tuple(shadows),
        segments=tuple(_segment(raw, i) for i, raw in enumerate(_list(data, "segments"))),
        bandit=None if data.get("bandit") is None else parse_bandit(data["bandit"]),
        flags=tuple(flags),
    ).check()
