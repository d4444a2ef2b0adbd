"""Operator actions on a model's traffic policy; the CLI and the admin API both call these.

Each is ONE ``registry.edit_policy`` call: a method of the typed policy applied in one write
transaction with a generation compare-and-set (registry/policies.py), audited under ``actor``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from registry.errors import InvalidRequest
from registry.service import Registry
from registry.traffic import TrafficPolicy, Variant, parse_variants


def set_shadow(
    registry: Registry, model: str, version: int, percent: float, actor: str | None = None
) -> TrafficPolicy:
    """Mirror ``percent`` of the model's requests to ``version`` (replacing its old share)."""
    return registry.edit_policy(
        model,
        lambda p: p.with_shadow(version, percent),
        reason=f"shadow v{version} {percent:g}%",
        actor=actor,
    )


def remove_shadow(
    registry: Registry, model: str, version: int, actor: str | None = None
) -> TrafficPolicy:
    return registry.edit_policy(
        model, lambda p: p.without_shadow(version), reason=f"remove shadow v{version}", actor=actor
    )


def start_experiment(
    registry: Registry,
    model: str,
    experiment_id: str,
    variants: Sequence[Variant] | Sequence[Any],
    salt: str | None = None,
    actor: str | None = None,
    *,
    share: float | None = None,
) -> TrafficPolicy:
    """Start an experiment on ``share`` % of the experiment layer (default: the largest free
    range). ``variants``: typed, or their JSON form ``[{version, weight, name?}]``."""

    def start(policy: TrafficPolicy) -> TrafficPolicy:
        typed = (
            tuple(v for v in variants if isinstance(v, Variant))
            if all(isinstance(v, Variant) for v in variants)
            else parse_variants(list(variants), f"experiments[{len(policy.experiments)}]")
        )
        return policy.with_experiment(experiment_id, typed, salt=salt, share=share)

    return registry.edit_policy(
        model, start, reason=f"start experiment {experiment_id}", actor=actor
    )


def stop_experiment(
    registry: Registry, model: str, experiment_id: str, actor: str | None = None
) -> TrafficPolicy:
    return registry.edit_policy(
        model,
        lambda p: p.without_experiment(experiment_id),
        reason=f"stop experiment {experiment_id}",
        actor=actor,
    )


def move_canary(
    registry: Registry, model: str, percent: float, actor: str | None = None
) -> TrafficPolicy:
    """Give the running canary ``percent`` of the units (Conflict if there is none)."""

    def move(policy: TrafficPolicy) -> TrafficPolicy:
        if policy.canary is None:
            return policy.without_canary()  # raises: there is no canary
        return policy.with_canary(policy.canary.version, percent)

    return registry.edit_policy(model, move, reason=f"canary {percent:g}%", actor=actor)


def promote_canary(registry: Registry, model: str, actor: str | None = None) -> TrafficPolicy:
    return registry.promote_canary(model, actor=actor)


def parse_variant_pairs(pairs: list[str]) -> tuple[Variant, ...]:
    """``["2=50", "3=50"]`` or ``["control:2=50"]`` -> variants; errors name the pair."""
    variants = []
    for pair in pairs:
        left, sep, weight = pair.partition("=")
        name, colon, version = left.rpartition(":")
        if not sep:
            raise InvalidRequest(f"variant {pair!r}: expected [NAME:]VERSION=WEIGHT")
        try:
            number, share = int(version), float(weight)
        except ValueError:
            raise InvalidRequest(
                f"variant {pair!r}: expected [NAME:]VERSION=WEIGHT, e.g. control:3=50"
            ) from None
        variants.append(Variant(number, share, name if colon and name else f"v{number}"))
    return tuple(variants)

