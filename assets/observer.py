"""What is serving, as the registry says: ``<p>_serving`` assets and the ``registry_observer``.

``<p>_serving`` is an external asset per model: nothing materializes it; the observer sensor
records an AssetObservation whenever what the model serves changes (the production version, the
canary and its percent, the rollout's phase), whoever changed it: the pipeline, the canary sensor,
``roost deploy`` / ``roost rollback`` / ``roost canary`` from a shell. So the UI's answer to
"what is serving?" is the registry's, not the last pipeline run's, and a candidate that failed
validation (a red check on ``<p>_validation``) never paints the serving model red.

When a rollout reaches PROMOTED the observer also reports the materialization of
``<p>_production_deployment`` (the pipeline's run ended at the canary's first step).
"""

# Dagster reads these annotations at definition time: no `from __future__ import annotations`.
import json
from collections.abc import Sequence
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetSpec,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.resources import RegistryResource
from assets.spec import ModelSpec
from registry import Registry

OBSERVER = "registry_observer"


def serving_key(spec: ModelSpec) -> AssetKey:
    return AssetKey(f"{spec.prefix}_serving")


def serving_assets(specs: Sequence[ModelSpec]) -> list[AssetSpec]:
    """One external ``<p>_serving`` asset per model, downstream of its production deployment."""
    return [
        AssetSpec(
            serving_key(spec),
            group_name=spec.prefix,
            deps=[f"{spec.prefix}_production_deployment"],
            description=f"What {spec.name} serves now, as the registry says (observed).",
            kinds={"roost"},
        )
        for spec in specs
    ]


def serving_state(reg: Registry, model: str) -> dict[str, Any]:
    """The model's serving facts: production version, canary, rollout phase (JSON-able)."""
    deployment = reg.get_deployment(model)
    policy = deployment.policy if deployment else {}
    canary = reg.get_policy(model).canary if deployment else None
    known = {m.name for m in reg.list_models()}
    rollout = reg.get_rollout(model) if model in known else None
    return {
        "model": model,
        "production_version": deployment.production_version if deployment else None,
        "canary_version": canary.version if canary else None,
        "canary_percent": float(canary.percent) if canary else 0.0,
        "serving_enabled": bool(policy.get("serving_enabled", True)),
        "rollout_id": rollout.id if rollout else None,
        "rollout_version": rollout.version if rollout else None,
        "rollout_phase": rollout.phase.value if rollout else None,
        "rollout_revision": rollout.revision if rollout else None,
        "rollout_reason": rollout.reason if rollout else None,
    }


def observe(
    reg: Registry, specs: Sequence[ModelSpec], cursor: dict[str, Any]
) -> tuple[list[AssetObservation | AssetMaterialization], dict[str, Any]]:
    """Events for every model whose serving state changed since ``cursor``; the new cursor."""
    generation = reg.generation()
    seen: dict[str, Any] = dict(cursor.get("models", {}))
    promoted: dict[str, Any] = dict(cursor.get("promoted", {}))
    events: list[AssetObservation | AssetMaterialization] = []
    for spec in specs:
        state = serving_state(reg, spec.name)
        if seen.get(spec.name) != state:
            seen[spec.name] = state
            events.append(AssetObservation(
                asset_key=serving_key(spec),
                metadata={"generation": generation,
                          **{k: ("none" if v is None else v) for k, v in state.items()}},
            ))
        if state["rollout_phase"] == "PROMOTED" and promoted.get(spec.name) != state["rollout_id"]:
            promoted[spec.name] = state["rollout_id"]
            events.append(AssetMaterialization(
                asset_key=f"{spec.prefix}_production_deployment",
                description=f"rollout {state['rollout_id']} promoted version "
                            f"{state['rollout_version']}",
                metadata={"model": spec.name, "production_version": state["production_version"],
                          "generation": generation, "rollout_id": state["rollout_id"]},
            ))
    return events, {"generation": generation, "models": seen, "promoted": promoted}


def registry_observer(specs: Sequence[ModelSpec], interval_s: int = 10) -> SensorDefinition:
    """The sensor that keeps every ``<p>_serving`` asset in step with the registry."""

    @sensor(name=OBSERVER, minimum_interval_seconds=interval_s,
            description="Records what each model serves whenever the registry changes.")
    def observer(
        context: SensorEvaluationContext, registry: RegistryResource
    ) -> SensorResult | SkipReason:
        cursor = json.loads(context.cursor) if context.cursor else {}
        reg = registry.get_registry()
        try:
            events, new_cursor = observe(reg, specs, cursor)
        finally:
            reg.close()
        if not events and cursor:
            return SkipReason(f"registry generation {new_cursor['generation']}: nothing changed")
        return SensorResult(asset_events=events, cursor=json.dumps(new_cursor))

    return observer
