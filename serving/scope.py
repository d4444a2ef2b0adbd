"""Deployment scopes: which versions a gateway serves.

- **production** (the default): the deployment table: each deployed model's production version,
  canary, experiment variants, segments, bandit arms and shadows, routed by its traffic policy.
- **staging**: per model, the versions in ``STAGING`` or ``STAGING_TESTED``; the highest one
  answers requests that name no version (route and variant ``staging``), the others answer when
  pinned. No traffic policy applies. Promotion tooling runs a staging gateway beside production
  (its own ports, ``ROOST_SCOPE=staging``) to exercise a candidate before it takes traffic.

Either scope can be narrowed to some models (``ROOST_SERVE_MODELS``); other models are unknown to
that gateway.

A scope's *change token* is what the :class:`~serving.poller.RegistryPoller` compares between
polls: the registry's generation counter, which every deployment change bumps, plus, for staging,
the staged versions themselves (moving a version to STAGING without a deployment does not bump
the generation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from registry import Registry, RoostSettings, State, VersionInfo
from serving.routing_table import RegistrySnapshot

STAGED: frozenset[State] = frozenset({State.STAGING, State.STAGING_TESTED})
"""The states a staging gateway serves."""


class ScopeKind(StrEnum):
    PRODUCTION = "production"
    STAGING = "staging"


@dataclass(frozen=True)
class DeploymentScope:
    """Which versions a gateway serves: a kind and an optional set of model names."""

    kind: ScopeKind = ScopeKind.PRODUCTION
    models: frozenset[str] | None = None
    """Only these models (None: every model)."""

    @classmethod
    def production(cls, models: Iterable[str] | None = None) -> DeploymentScope:
        return cls(ScopeKind.PRODUCTION, None if models is None else frozenset(models))

    @classmethod
    def staging(cls, models: Iterable[str] | None = None) -> DeploymentScope:
        return cls(ScopeKind.STAGING, None if models is None else frozenset(models))

    @classmethod
    def from_settings(cls, settings: RoostSettings) -> DeploymentScope:
        """``settings.scope`` narrowed to ``settings.serve_models`` (empty: every model)."""
        models = frozenset(settings.serve_models) if settings.serve_models else None
        return cls(ScopeKind(settings.scope), models)

    def serves_model(self, model: str) -> bool:
        return self.models is None or model in self.models

    def describe(self) -> str:
        names = "every model" if self.models is None else ", ".join(sorted(self.models))
        return f"{self.kind.value} scope ({names})"

    # -- reading the registry (blocking: call from a thread) ---------------------------------

    def token(self, registry: Registry) -> Any:
        """Changes whenever :meth:`snapshot` would (cheap enough to ask every poll)."""
        generation = registry.generation()
        if self.kind is ScopeKind.PRODUCTION:
            return generation
        return (generation, tuple((i.model, i.version, i.state) for i in self._staged(registry)))

    def snapshot(self, registry: Registry) -> RegistrySnapshot:
        """What this scope serves now, read from ``registry``."""
        if self.kind is ScopeKind.STAGING:
            return self._staging_snapshot(registry)
        generation = registry.generation()
        desired = tuple(i for i in registry.served_versions() if self.serves_model(i.model))
        models = frozenset(m.name for m in registry.list_models() if self.serves_model(m.name))
        unloaded = frozenset(
            d.model
            for d in registry.list_deployments()
            if not d.policy.get("serving_enabled", True) and self.serves_model(d.model)
        )
        policies = {m: p for m, p in registry.policies().items() if self.serves_model(m)}
        evidence = {k: v for k, v in registry.bandit_stats().items() if self.serves_model(k[0])}
        return RegistrySnapshot(
            generation, generation, desired, models, unloaded, policies, evidence
        )

    def _staged(self, registry: Registry) -> list[VersionInfo]:
        staged: list[VersionInfo] = []
        for model in registry.list_models():
            if self.serves_model(model.name):
                staged.extend(v for v in registry.list_versions(model.name) if v.state in STAGED)
        return sorted(staged, key=lambda v: (v.model, v.version))

    def _staging_snapshot(self, registry: Registry) -> RegistrySnapshot:
        generation = registry.generation()
        models = frozenset(m.name for m in registry.list_models() if self.serves_model(m.name))
        staged = self._staged(registry)
        token = (generation, tuple((i.model, i.version, i.state) for i in staged))
        return RegistrySnapshot(
            token, generation, tuple(staged), models, default_route=ScopeKind.STAGING.value
        )
