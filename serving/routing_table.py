"""The routing table: an immutable value saying which loaded version answers which request.

:class:`RoutingTable` holds the loaded versions and each model's router, and answers the questions
requests ask (:meth:`RoutingTable.resolve`, :meth:`RoutingTable.route`) without touching the
registry. It is built by pure functions from a :class:`RegistrySnapshot` (what a deployment scope
read from the registry, see :mod:`serving.scope`) and the table it replaces:
:func:`versions_to_load` names the versions that need loading (new, or changed bytes or config),
and :func:`assemble_table` puts the new table together from the versions kept, those just loaded
and those that failed. The repository swaps the result in with one assignment, so a request that
read the table keeps the version it started with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from registry import ServingConfig, VersionInfo
from registry.errors import NotFound, ServiceUnavailable
from registry.traffic import TrafficPolicy
from serving.backends import ModelBackend
from serving.batching import DynamicBatcher
from serving.router import Decision, ModelRouter, RequestFacts

Key = tuple[str, int]
Evidence = dict[tuple[str, str], dict[int, tuple[float, float]]]


@dataclass(frozen=True)
class LoadedVersion:
    """A version ready to answer: its backends (one per instance) behind one batcher."""

    info: VersionInfo
    backends: tuple[ModelBackend, ...]
    batcher: DynamicBatcher
    config: ServingConfig
    load_seconds: float

    @property
    def key(self) -> Key:
        return (self.info.model, self.info.version)

    @property
    def platform(self) -> str:
        return self.backends[0].platform


@dataclass(frozen=True)
class RegistrySnapshot:
    """What one deployment scope serves, as read from the registry at one moment."""

    token: Any
    """The scope's change token (the registry generation, plus what else the scope watches)."""
    generation: int
    desired: tuple[VersionInfo, ...]
    """Versions to load, by model then version; a model's last one that loads answers requests
    that name no version, unless its traffic policy routes them."""
    models: frozenset[str]
    unloaded: frozenset[str] = frozenset()
    policies: Mapping[str, TrafficPolicy] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=dict)
    default_route: str = "production"
    """The route (and variant) recorded for requests answered by the default version."""


@dataclass(frozen=True)
class RoutingTable:
    generation: int = -1
    loaded: dict[Key, LoadedVersion] = field(default_factory=dict)
    production: dict[str, int] = field(default_factory=dict)
    """model -> the version answering requests that name none (production, or staging's)."""
    failures: dict[Key, str] = field(default_factory=dict)
    models: frozenset[str] = frozenset()
    unloaded: frozenset[str] = frozenset()
    routers: dict[str, ModelRouter] = field(default_factory=dict)
    token: Any = None
    default_route: str = "production"

    # -- questions requests ask -------------------------------------------------------------

    def resolve(self, model: str, version: str | None) -> LoadedVersion:
        """The loaded version that answers for ``model`` (pinned to ``version`` if given)."""
        if version is None:
            number = self.production.get(model)
            if number is None:
                raise self.unserved(model, None)
        else:
            try:
                number = int(version)
            except ValueError:
                raise NotFound(
                    f"model '{model}' has no version '{version}' (versions are integers)"
                ) from None
        found = self.loaded.get((model, number))
        if found is None:
            raise self.unserved(model, number)
        return found

    def route(
        self, model: str, version: str | None, facts: RequestFacts
    ) -> tuple[LoadedVersion, Decision]:
        """The version that answers this request and the router's decision (with shadows).

        A version the policy names but that is not loaded (it failed) yields to production.
        """
        router = self.routers.get(model)
        if router is None:
            loaded = self.resolve(model, version)
            number = loaded.info.version
            route = "pinned" if version is not None else self.default_route
            return loaded, Decision(number, route, route if route != "pinned" else f"v{number}")
        if version is not None:
            loaded = self.resolve(model, version)
            return loaded, router.decide(facts, pinned=loaded.info.version)
        try:
            decision = router.decide(facts)
        except LookupError:
            raise self.unserved(model, None) from None
        found = self.loaded.get((model, decision.version))
        if found is None:
            production = self.resolve(model, None)
            decision = Decision(
                production.info.version, "production", "production", None, decision.shadows
            )
            return production, decision
        return found, decision

    def routes_on_attributes(self, model: str) -> bool:
        router = self.routers.get(model)
        return router is not None and any(s.kind == "attribute" for s in router.policy.segments)

    def unserved(self, model: str, version: int | None) -> NotFound | ServiceUnavailable:
        """The error for a request this table cannot answer, naming why."""
        if model not in self.models and not any(m == model for m, _ in self.loaded):
            return NotFound(f"unknown model '{model}'")
        if version is not None and (model, version) in self.failures:
            return ServiceUnavailable(
                f"model '{model}' version {version} is unavailable: "
                f"{self.failures[(model, version)]}"
            )
        if model in self.unloaded:
            return NotFound(
                f"model '{model}' is unloaded; load it with "
                f"POST /v2/repository/models/{model}/load"
            )
        served = sorted(v for m, v in self.loaded if m == model)
        if version is None:
            failed = [v for m, v in self.failures if m == model]
            if failed:
                return ServiceUnavailable(
                    f"model '{model}' is unavailable: {self.failures[(model, failed[0])]}"
                )
            if model in self.models and self.default_route == "production":
                # Deployed, but its production version was taken out (`transition --force`):
                # the model exists and should be serving, so this is an outage, not a 404.
                return ServiceUnavailable(
                    f"model '{model}' has no production version serving; bring one back with "
                    f"`roost rollback {model}` or promote a version"
                )
            return NotFound(f"model '{model}' has no {self.default_route} deployment")
        hint = ", ".join(map(str, served)) or "none"
        return NotFound(
            f"model '{model}' version {version} is not served; served versions: {hint}"
        )


# -- building a table (pure) --------------------------------------------------------------------


def _reusable(old: LoadedVersion | None, info: VersionInfo) -> bool:
    return old is not None and old.info.sha256 == info.sha256 and old.info.config == info.config


def versions_to_load(snapshot: RegistrySnapshot, current: RoutingTable) -> list[VersionInfo]:
    """The snapshot's versions the current table cannot reuse (new bytes or new config)."""
    return [
        info
        for info in snapshot.desired
        if not _reusable(current.loaded.get((info.model, info.version)), info)
    ]


def assemble_table(
    snapshot: RegistrySnapshot,
    current: RoutingTable,
    fresh: Mapping[Key, LoadedVersion],
    failures: Mapping[Key, str],
) -> RoutingTable:
    """The table for ``snapshot``: versions reused from ``current`` or just loaded (``fresh``).

    A version that failed to load never takes traffic from the one that answered before it: the
    model's previous default version stays loaded and keeps answering.
    """
    loaded: dict[Key, LoadedVersion] = {}
    for info in snapshot.desired:
        key = (info.model, info.version)
        old = current.loaded.get(key)
        if key in fresh:
            loaded[key] = fresh[key]
        elif old is not None and _reusable(old, info):
            loaded[key] = old
    production = {i.model: i.version for i in snapshot.desired if (i.model, i.version) in loaded}
    for model, _ in failures:
        previous = current.production.get(model)
        if model not in production and previous is not None:
            production[model] = previous
            loaded[(model, previous)] = current.loaded[(model, previous)]
    routers = {}
    for model, policy in snapshot.policies.items():
        if policy.production is None or (model, policy.production) not in loaded:
            # production failed to load and nothing served before: route nowhere new
            policy = replace(policy, production=production.get(model))
        bandit = policy.bandit
        routers[model] = ModelRouter(
            policy, snapshot.evidence.get((model, bandit.id), {}) if bandit else None
        )
    return RoutingTable(
        snapshot.generation,
        loaded,
        production,
        dict(failures),
        snapshot.models,
        snapshot.unloaded,
        routers,
        snapshot.token,
        snapshot.default_route,
    )
