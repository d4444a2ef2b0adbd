"""Operator actions on a model's traffic policy; the CLI and the admin API both call these."""

from __future__ import annotations

from typing import Any

from registry.errors import Conflict, InvalidRequest
from registry.service import Registry
from registry.traffic import TrafficPolicy


def _edit(
    registry: Registry, model: str, change: dict[str, Any], reason: str, actor: str | None
) -> TrafficPolicy:
    current = registry.get_policy(model).to_dict()
    current.pop("production", None)
    current.update(change)
    return registry.set_policy(model, current, reason=reason, actor=actor)


def set_shadow(
    registry: Registry, model: str, version: int, percent: float, actor: str | None = None
) -> TrafficPolicy:
    """Mirror ``percent`` of the model's requests to ``version`` (replacing its old share)."""
    shadows = [
        s for s in registry.get_policy(model).to_dict()["shadows"] if s["version"] != version
    ]
    shadows.append({"version": version, "percent": percent})
    return _edit(registry, model, {"shadows": shadows}, f"shadow v{version} {percent:g}%", actor)


def remove_shadow(
    registry: Registry, model: str, version: int, actor: str | None = None
) -> TrafficPolicy:
    shadows = registry.get_policy(model).to_dict()["shadows"]
    kept = [s for s in shadows if s["version"] != version]
    if len(kept) == len(shadows):
        raise Conflict(f"model '{model}' has no shadow version {version}")
    return _edit(registry, model, {"shadows": kept}, f"remove shadow v{version}", actor)


def start_experiment(
    registry: Registry,
    model: str,
    experiment_id: str,
    variants: list[dict[str, Any]],
    salt: str | None = None,
    actor: str | None = None,
) -> TrafficPolicy:
    experiments = registry.get_policy(model).to_dict()["experiments"]
    if any(e["id"] == experiment_id for e in experiments):
        raise Conflict(f"experiment '{experiment_id}' is already running on '{model}'")
    experiments.append({"id": experiment_id, "variants": variants, "salt": salt or experiment_id})
    return _edit(
        registry, model, {"experiments": experiments}, f"start experiment {experiment_id}", actor
    )


def stop_experiment(
    registry: Registry, model: str, experiment_id: str, actor: str | None = None
) -> TrafficPolicy:
    experiments = registry.get_policy(model).to_dict()["experiments"]
    kept = [e for e in experiments if e["id"] != experiment_id]
    if len(kept) == len(experiments):
        raise Conflict(f"model '{model}' has no running experiment '{experiment_id}'")
    return _edit(registry, model, {"experiments": kept}, f"stop experiment {experiment_id}", actor)


def promote_canary(registry: Registry, model: str, actor: str | None = None) -> TrafficPolicy:
    canary = registry.get_policy(model).canary
    if canary is None:
        raise Conflict(f"model '{model}' has no canary to promote")
    registry.deploy(model, canary.version, reason="promote canary", actor=actor)
    return registry.get_policy(model)


def parse_variants(pairs: list[str]) -> list[dict[str, Any]]:
    """``["2=50", "3=50"]`` or ``["control:2=50"]`` -> variant dicts; errors name the pair."""
    variants = []
    for pair in pairs:
        left, sep, weight = pair.partition("=")
        name, colon, version = left.rpartition(":")
        try:
            variant: dict[str, Any] = {"version": int(version), "weight": float(weight)}
        except ValueError:
            raise InvalidRequest(
                f"variant {pair!r}: expected [NAME:]VERSION=WEIGHT, e.g. control:3=50"
            ) from None
        if not sep:
            raise InvalidRequest(f"variant {pair!r}: expected [NAME:]VERSION=WEIGHT")
        if colon:
            variant["name"] = name
        variants.append(variant)
    return variants
