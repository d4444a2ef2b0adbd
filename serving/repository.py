"""The gateway's view of what to serve: loaded versions and each model's production version.

The registry is polled by generation counter; on a change the repository loads and warms up new
versions off the event loop, then swaps in a new immutable :class:`RoutingTable` in one
assignment. Requests read the table once, so an in-flight request keeps the version it started
with and nothing is dropped during a swap.

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
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from registry import Registry, RoostError, RoostSettings, ServingConfig, VersionInfo
from registry.errors import NotFound, ServiceUnavailable
from serving.backends import Backend, OnnxBackend, TritonBackend, warmup_inputs
from serving.batching import DynamicBatcher
from serving.breaker import CircuitBreaker
from serving.metrics import GatewayMetrics
from serving.router import Decision, ModelRouter, RequestFacts

log = logging.getLogger("roost.serving")


@dataclass(frozen=True)
class LoadedVersion:
    """A version ready to answer: its backends (one per instance) behind one batcher."""

    info: VersionInfo
    backends: tuple[Backend, ...]
    batcher: DynamicBatcher
    config: ServingConfig
    load_seconds: float

    @property
    def key(self) -> tuple[str, int]:
        return (self.info.model, self.info.version)

    @property
    def platform(self) -> str:
        return self.backends[0].platform


@dataclass(frozen=True)
class RoutingTable:
    generation: int = -1
    loaded: dict[tuple[str, int], LoadedVersion] = field(default_factory=dict)
    production: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, int], str] = field(default_factory=dict)
    models: frozenset[str] = frozenset()
    unloaded: frozenset[str] = frozenset()
    routers: dict[str, ModelRouter] = field(default_factory=dict)


class ModelRepository:
    """Loads the registry's deployed versions into backends and answers 'which version?'."""

    def __init__(
        self, registry: Registry, settings: RoostSettings, metrics: GatewayMetrics | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.table = RoutingTable()
        self.synced = False
        self.last_poll_error: str | None = None
        self.registry_down_since: float | None = None  # wall time of the first failed poll
        self.failed_polls = 0  # consecutive
        self.metrics = metrics
        self.retire_grace_s = 2.0
        self._lock = asyncio.Lock()
        self._retiring: dict[asyncio.Task[None], LoadedVersion] = {}
        self._pending_rewards: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
        self._built_at = 0.0
        self.retry_failed_s = 5.0  # versions that failed to load are retried this often

    # -- loading ----------------------------------------------------------------------------

    def _load(self, info: VersionInfo) -> LoadedVersion:
        started = time.perf_counter()
        config = ServingConfig.from_config(info.config)
        data = self.registry.load_artifact(info.model, info.version)  # sha256-checked
        backends: tuple[Backend, ...]
        if config.backend == "triton":  # the remote serves these same bytes; not run here
            backends = tuple(
                TritonBackend(info.model, info.signature, config) for _ in range(config.instances)
            )
        else:
            backends = tuple(
                OnnxBackend(
                    data,
                    info.signature,
                    self.settings.intra_op_threads,
                    self.settings.execution_provider,
                )
                for _ in range(config.instances)
            )
        runs = self.settings.warmup_runs if config.warmup_runs is None else config.warmup_runs
        samples = warmup_inputs(info)
        for backend in backends:
            backend.warm_up(runs, samples)
        name = f"{info.model}:{info.version}"
        model, version, metrics = info.model, str(info.version), self.metrics
        breaker = CircuitBreaker.for_config(
            model, version, config, metrics.breaker_observer(model, version) if metrics else None
        )
        batcher = DynamicBatcher(
            name,
            [b.infer for b in backends],
            config,
            observe=metrics.batch_observer(model, version) if metrics else None,
            breaker=breaker,
            on_timeout=metrics.timeout_observer(model, version) if metrics else None,
        )
        return LoadedVersion(info, backends, batcher, config, time.perf_counter() - started)

    def _build(self, current: RoutingTable) -> RoutingTable:
        generation = self.registry.generation()
        desired = self.registry.served_versions()
        models = frozenset(m.name for m in self.registry.list_models())
        unloaded = frozenset(
            d.model
            for d in self.registry.list_deployments()
            if not d.policy.get("serving_enabled", True)
        )
        loaded: dict[tuple[str, int], LoadedVersion] = {}
        failures: dict[tuple[str, int], str] = {}
        for info in desired:
            key = (info.model, info.version)
            old = current.loaded.get(key)
            if (
                old is not None
                and old.info.sha256 == info.sha256
                and old.info.config == info.config
            ):
                loaded[key] = old
                continue
            try:
                loaded[key] = self._load(info)
                log.info("loaded %s v%d in %.3fs", *key, loaded[key].load_seconds)
                if self.metrics:
                    self.metrics.model_loaded(
                        info.model, str(info.version), loaded[key].load_seconds
                    )
            except RoostError as exc:
                failures[key] = exc.message
                log.error("cannot serve %s v%d: %s", key[0], key[1], exc.message)
            except Exception as exc:  # a backend that cannot load must not stop the others
                failures[key] = f"failed to load: {exc}"
                log.exception("cannot load %s v%d", *key)
        production = {i.model: i.version for i in desired if (i.model, i.version) in loaded}
        for model, _ in failures:
            # A version that cannot load never takes traffic from the one serving before it.
            previous = current.production.get(model)
            if model not in production and previous is not None:
                production[model] = previous
                loaded[(model, previous)] = current.loaded[(model, previous)]
        evidence = self.registry.bandit_stats()
        routers = {}
        for model, policy in self.registry.policies().items():
            if policy.production is None or (model, policy.production) not in loaded:
                # production failed to load and nothing served before: route nowhere new
                policy = replace(policy, production=production.get(model))
            bandit = policy.bandit
            routers[model] = ModelRouter(
                policy, evidence.get((model, bandit.id), {}) if bandit else None
            )
        return RoutingTable(
            generation, loaded, production, failures, models, unloaded, routers
        )

    async def sync(self, force: bool = False) -> bool:
        """Reload if the registry's generation moved (or a failed version is due a retry).

        Returns True when a new table was swapped in.
        """
        async with self._lock:
            retry_due = bool(self.table.failures) and (
                time.monotonic() - self._built_at >= self.retry_failed_s
            )
            if not force and self.synced and not retry_due:
                generation = await asyncio.to_thread(self.registry.generation)
                if generation == self.table.generation:
                    self._registry_answered()
                    return False
            old = self.table
            new = await asyncio.to_thread(self._build, old)
            self._registry_answered()
            self._built_at = time.monotonic()
            old_batchers = {id(v.batcher) for v in old.loaded.values()}
            kept = {id(v.batcher) for v in new.loaded.values()}
            for version in new.loaded.values():
                if id(version.batcher) not in old_batchers:
                    version.batcher.start()
            self.table = new
            self.synced = True
            for version in old.loaded.values():
                if id(version.batcher) not in kept:
                    task = asyncio.create_task(self._retire(version))
                    self._retiring[task] = version
                    task.add_done_callback(self._retiring.pop)
            return True

    async def _retire(self, version: LoadedVersion) -> None:
        """Stop a replaced version once requests that already resolved it have been served."""
        await asyncio.sleep(self.retire_grace_s)
        while version.batcher.depth:
            await asyncio.sleep(0.05)
        await version.batcher.stop()
        await _close_backends(version)
        log.info("unloaded %s v%d", *version.key)

    async def close(self) -> None:
        """Stop every version, those still being retired included."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for version in [v for _, v in retiring] + list(self.table.loaded.values()):
            await version.batcher.stop()
            await _close_backends(version)

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.sync()
                await asyncio.to_thread(self._flush_rewards)
            except Exception as exc:  # registry unreachable: keep serving the last table
                self._poll_failed(exc)
            else:
                self._poll_succeeded()

    def _poll_failed(self, exc: Exception) -> None:
        self.last_poll_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.failed_polls += 1
        if self.registry_down_since is None:
            self.registry_down_since = time.time()
            log.error("registry unreachable, serving the last known table: %s", exc)
        else:
            log.warning("registry still unreachable (%d polls): %s", self.failed_polls, exc)
        if self.metrics:
            self.metrics.registry_polled(False)

    def _poll_succeeded(self) -> None:
        if self.registry_down_since is not None:
            log.warning(
                "registry reachable again after %.1f s (%d failed polls)",
                time.time() - self.registry_down_since, self.failed_polls,
            )
        self.last_poll_error = None
        self.registry_down_since = None
        self.failed_polls = 0

    def _registry_answered(self) -> None:
        if self.metrics:
            self.metrics.registry_polled(True)

    # -- questions requests ask -------------------------------------------------------------

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready once every deployed model has a loaded, warmed-up version answering for it.

        Versions that failed to load are listed as reasons; one that failed while an older
        version keeps serving its model does not make the gateway unready. Neither do, though
        listed, an open circuit breaker or stuck instances (the fault is the backend's, the
        same on every gateway: taking them all out of rotation would not help), nor a registry
        that cannot be reached (the last known table keeps serving).
        """
        table = self.table
        if not self.synced:
            return False, ["deployed versions are still loading"]
        reasons = [f"{m} v{v}: {why}" for (m, v), why in sorted(table.failures.items())]
        for (m, v), loaded in sorted(table.loaded.items()):
            reasons.extend(f"{m} v{v}: {why}" for why in loaded.batcher.health())
        if self.registry_down_since is not None:
            since = datetime.fromtimestamp(self.registry_down_since, UTC)
            reasons.append(
                f"registry unreachable since {since.isoformat(timespec='seconds')} "
                f"({self.failed_polls} failed polls); serving the last known table "
                f"(generation {table.generation}): {self.last_poll_error}"
            )
        unserved = {m for m, _ in table.failures} - set(table.production)
        return not unserved, reasons

    def route(
        self, model: str, version: str | None, facts: RequestFacts
    ) -> tuple[LoadedVersion, Decision]:
        """The version that answers this request and the router's decision (with shadows).

        A version the policy names but that is not loaded (it failed) yields to production.
        """
        table = self.table
        router = table.routers.get(model)
        if router is None:
            loaded = self.resolve(model, version)
            number = loaded.info.version
            route = "pinned" if version is not None else "production"
            return loaded, Decision(number, route, route if route != "pinned" else f"v{number}")
        if version is not None:
            loaded = self.resolve(model, version)
            return loaded, router.decide(facts, pinned=loaded.info.version)
        try:
            decision = router.decide(facts)
        except LookupError:
            self._raise_unserved(table, model, None)
            raise
        found = table.loaded.get((model, decision.version))
        if found is None:
            production = self.resolve(model, None)
            decision = Decision(
                production.info.version, "production", "production", None, decision.shadows
            )
            return production, decision
        return found, decision

    def routes_on_attributes(self, model: str) -> bool:
        router = self.table.routers.get(model)
        return router is not None and any(
            s.kind == "attribute" for s in router.policy.segments
        )

    def record_reward(self, model: str, bandit: str, version: int, reward: float) -> None:
        """Feedback for a bandit arm: applied to this gateway's router at once, and queued
        for the registry (summed over every gateway) on the next poll."""
        router = self.table.routers.get(model)
        if router is not None and router.policy.bandit and router.policy.bandit.id == bandit:
            rewards, pulls = router.evidence.get(version, (0.0, 0.0))
            router.evidence[version] = (rewards + reward, pulls + 1)
        key = (model, bandit)
        arms = self._pending_rewards.setdefault(key, {})
        rewards, pulls = arms.get(version, (0.0, 0.0))
        arms[version] = (rewards + reward, pulls + 1)

    def _flush_rewards(self) -> None:
        pending, self._pending_rewards = self._pending_rewards, {}
        for (model, bandit), arms in pending.items():
            self.registry.record_rewards(model, bandit, arms)
        if not any(r.policy.bandit for r in self.table.routers.values()):
            return
        evidence = self.registry.bandit_stats()
        for model, router in self.table.routers.items():
            if router.policy.bandit is not None:
                router.evidence = dict(evidence.get((model, router.policy.bandit.id), {}))

    def resolve(self, model: str, version: str | None) -> LoadedVersion:
        """The loaded version that answers for ``model`` (pinned to ``version`` if given)."""
        table = self.table
        if version is None:
            number = table.production.get(model)
            if number is None:
                self._raise_unserved(table, model, None)
                raise AssertionError("unreachable")
        else:
            try:
                number = int(version)
            except ValueError:
                raise NotFound(
                    f"model '{model}' has no version '{version}' (versions are integers)"
                ) from None
        found = table.loaded.get((model, number))
        if found is None:
            self._raise_unserved(table, model, number)
        assert found is not None
        return found

    def _raise_unserved(self, table: RoutingTable, model: str, version: int | None) -> None:
        if model not in table.models and not any(m == model for m, _ in table.loaded):
            raise NotFound(f"unknown model '{model}'")
        if version is not None and (model, version) in table.failures:
            raise ServiceUnavailable(
                f"model '{model}' version {version} is unavailable: "
                f"{table.failures[(model, version)]}"
            )
        if model in table.unloaded:
            raise NotFound(
                f"model '{model}' is unloaded; load it with "
                f"POST /v2/repository/models/{model}/load"
            )
        served = sorted(v for m, v in table.loaded if m == model)
        if version is None:
            failed = [v for m, v in table.failures if m == model]
            if failed:
                raise ServiceUnavailable(
                    f"model '{model}' is unavailable: {table.failures[(model, failed[0])]}"
                )
            raise NotFound(f"model '{model}' has no production deployment")
        hint = ", ".join(map(str, served)) or "none"
        raise NotFound(f"model '{model}' version {version} is not served; served versions: {hint}")


async def _close_backends(version: LoadedVersion) -> None:
    """Release what a version's backends hold beyond memory (a remote backend's connections)."""
    for backend in version.backends:
        if isinstance(backend, TritonBackend):
            await backend.close()
