"""The gateway's view of what to serve: the current routing table, and keeping it current.

:meth:`ModelRepository.sync` reads a snapshot of its deployment scope from the registry
(:mod:`serving.scope`), loads and warms up the versions the current table cannot reuse off the
event loop (:mod:`serving.loader`), builds the new immutable table with a pure function
(:mod:`serving.routing_table`) and swaps it in with one assignment. Requests read the table once,
so an in-flight request keeps the version it started with and nothing is dropped during a swap;
replaced versions are retired once their queues are empty. :class:`~serving.poller.RegistryPoller`
calls ``sync`` on a timer; bandit rewards wait in :mod:`serving.rewards`.

Faults stay with the version they belong to: a version whose artifact is missing, corrupt or
fails to load is left out of the table with its reason (readiness lists it, requests for it get
503 naming it), the version that served before keeps serving, and failed versions are retried
every ``retry_failed_s``. Each loaded version has its own circuit breaker and execution timeout
(see :mod:`serving.breaker`, :mod:`serving.batching`). When the registry cannot be reached the
last table keeps serving; readiness stays true but says since when the registry is unreachable,
and ``roost_registry_poll_errors_total`` counts the failed polls.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from registry import Registry, RoostSettings
from serving.loader import VersionLoader, retire_version, stop_version
from serving.metrics import GatewayMetrics
from serving.poller import RegistryHealth, RegistryPoller
from serving.rewards import BanditRewards
from serving.router import Decision, RequestFacts
from serving.routing_table import (
    LoadedVersion,
    RoutingTable,
    assemble_table,
    versions_to_load,
)
from serving.scope import DeploymentScope

__all__ = ["LoadedVersion", "ModelRepository", "RoutingTable"]


class ModelRepository:
    """Loads a deployment scope's versions into backends and answers 'which version?'."""

    def __init__(
        self,
        registry: Registry,
        settings: RoostSettings,
        metrics: GatewayMetrics | None = None,
        scope: DeploymentScope | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.scope = scope if scope is not None else DeploymentScope.from_settings(settings)
        self.loader = VersionLoader(registry, settings, metrics)
        self.rewards = BanditRewards()
        self.health = RegistryHealth(metrics)
        self.table = RoutingTable()
        self.synced = False
        self.retire_grace_s = 2.0
        self.retry_failed_s = 5.0  # versions that failed to load are retried this often
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], LoadedVersion] = {}
        self._built_at = 0.0

    # -- keeping the table current ----------------------------------------------------------

    def _build(self, current: RoutingTable) -> RoutingTable:
        """Read the scope's snapshot, load what changed, assemble the next table (blocking)."""
        snapshot = self.scope.snapshot(self.registry)
        fresh, failures = self.loader.load_all(versions_to_load(snapshot, current))
        return assemble_table(snapshot, current, fresh, failures)

    async def sync(self, force: bool = False) -> bool:
        """Rebuild if the scope's change token moved (or a failed version is due a retry).

        Returns True when a new table was swapped in.
        """
        async with self._lock:
            retry_due = bool(self.table.failures) and (
                time.monotonic() - self._built_at >= self.retry_failed_s
            )
            if not force and self.synced and not retry_due:
                token = await asyncio.to_thread(self.scope.token, self.registry)
                if token == self.table.token:
                    self.health.answered()
                    return False
            old = self.table
            new = await asyncio.to_thread(self._build, old)
            self.health.answered()
            self._built_at = time.monotonic()
            self._swap(old, new)
            return True

    def _swap(self, old: RoutingTable, new: RoutingTable) -> None:
        old_batchers = {id(v.batcher) for v in old.loaded.values()}
        kept = {id(v.batcher) for v in new.loaded.values()}
        for version in new.loaded.values():
            if id(version.batcher) not in old_batchers:
                version.batcher.start()
        self.table = new
        self.synced = True
        if self.metrics is not None:
            unserved = set(self.unserved_models())
            self.metrics.models_serving(
                {m: m not in unserved for m in set(new.routers) | set(new.production)}
            )
        for version in old.loaded.values():
            if id(version.batcher) not in kept:
                task = asyncio.create_task(retire_version(version, self.retire_grace_s))
                self._retiring[task] = version
                task.add_done_callback(self._retiring.pop)

    async def close(self) -> None:
        """Stop every version, those still being retired included."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for version in [v for _, v in retiring] + list(self.table.loaded.values()):
            await stop_version(version)

    async def poll_forever(self) -> None:
        """Poll until cancelled (what :class:`~serving.poller.RegistryPoller` runs)."""
        await RegistryPoller(self).run()

    # -- questions requests ask -------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready once every served model has a loaded, warmed-up version answering for it.

        Versions that failed to load are listed as reasons; one that failed while an older
        version keeps serving its model does not make the gateway unready. Neither do, though
        listed, an open circuit breaker or stuck instances (the fault is the backend's, the
        same on every gateway: taking them all out of rotation would not help), nor a registry
        that cannot be reached (the last known table keeps serving), nor a deployed model left
        without any version to answer it (its production version taken out): that is listed
        as a reason, ``GET /v2/models/{m}/ready`` is not ready for it and
        ``roost_model_serving{model}`` is 0, but the gateway stays in rotation for the models it
        does serve (every gateway reads the same registry, so none could serve it instead).
        """
        table = self.table
        if not self.synced:
            return False, ["deployed versions are still loading"]
        reasons = [f"{m} v{v}: {why}" for (m, v), why in sorted(table.failures.items())]
        for (m, v), loaded in sorted(table.loaded.items()):
            reasons.extend(f"{m} v{v}: {why}" for why in loaded.batcher.health())
        health = self.health
        if health.down_since is not None:
            since = datetime.fromtimestamp(health.down_since, UTC)
            reasons.append(
                f"registry unreachable since {since.isoformat(timespec='seconds')} "
                f"({health.failed_polls} failed polls); serving the last known table "
                f"(generation {table.generation}): {health.last_error}"
            )
        reasons.extend(
            f"{m}: deployed but no version serves it (no production version); its requests "
            f"fail until `roost rollback {m}` or `roost promote {m} VERSION`"
            for m in self.unserved_models()
        )
        unserved = {m for m, _ in table.failures} - set(table.production)
        return not unserved, reasons

    def unserved_models(self) -> list[str]:
        """Deployed (and loaded) models with no version answering requests that name none."""
        table = self.table
        failed = {m for m, _ in table.failures}  # listed with their load failure instead
        return sorted(
            m
            for m in table.routers
            if m not in table.production and m not in table.unloaded and m not in failed
        )

    def route(
        self, model: str, version: str | None, facts: RequestFacts
    ) -> tuple[LoadedVersion, Decision]:
        """See :meth:`RoutingTable.route` (on the current table)."""
        return self.table.route(model, version, facts)

    def resolve(self, model: str, version: str | None) -> LoadedVersion:
        """See :meth:`RoutingTable.resolve` (on the current table)."""
        return self.table.resolve(model, version)

    def routes_on_attributes(self, model: str) -> bool:
        return self.table.routes_on_attributes(model)

    def record_reward(self, model: str, bandit: str, version: int, reward: float) -> None:
        """Feedback for a bandit arm (see :class:`~serving.rewards.BanditRewards`)."""
        self.rewards.record(self.table, model, bandit, version, reward)
