"""Loading and unloading versions: artifact -> backends -> warm-up -> batcher, and back.

:class:`VersionLoader` runs in the repository's loader thread (loads and warm-ups block). A
version that fails to load is reported with its reason and left out; the routing table keeps the
version that answered before it (see :func:`serving.routing_table.assemble_table`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import cast

from registry import Registry, RoostError, RoostSettings, ServingConfig, VersionInfo
from serving.backends import load_backends, warmup_inputs
from serving.batching import DynamicBatcher, RunFn
from serving.breaker import CircuitBreaker
from serving.metrics import GatewayMetrics
from serving.routing_table import Key, LoadedVersion

log = logging.getLogger("roost.serving")


class VersionLoader:
    """Makes :class:`LoadedVersion` s from registry versions, and stops them again."""

    def __init__(
        self, registry: Registry, settings: RoostSettings, metrics: GatewayMetrics | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics

    def load(self, info: VersionInfo) -> LoadedVersion:
        """Load and warm up one version (blocking); raises when it cannot serve."""
        started = time.perf_counter()
        config = ServingConfig.from_config(info.config)
        data = self.registry.load_artifact(info.model, info.version)  # sha256-checked
        backends = load_backends(info, data, config, self.settings)
        runs = self.settings.warmup_runs if config.warmup_runs is None else config.warmup_runs
        samples = warmup_inputs(info)
        for backend in backends:
            backend.warm_up(runs, samples)
            if self.metrics is not None and hasattr(backend, "attach"):  # serving/llm engines
                backend.attach(self.metrics.llm.observer(info.model, str(info.version)))
        name = f"{info.model}:{info.version}"
        model, version, metrics = info.model, str(info.version), self.metrics
        breaker = CircuitBreaker.for_config(
            model, version, config, metrics.breaker_observer(model, version) if metrics else None
        )
        batcher = DynamicBatcher(
            name,
            # each backend's infer is either a plain function or a coroutine function
            [cast(RunFn, b.infer) for b in backends],
            config,
            observe=metrics.batch_observer(model, version) if metrics else None,
            breaker=breaker,
            on_timeout=metrics.timeout_observer(model, version) if metrics else None,
        )
        return LoadedVersion(info, backends, batcher, config, time.perf_counter() - started)

    def load_all(
        self, infos: Iterable[VersionInfo]
    ) -> tuple[dict[Key, LoadedVersion], dict[Key, str]]:
        """Load each version; (loaded, failures with their reasons). One failure stops nothing."""
        loaded: dict[Key, LoadedVersion] = {}
        failures: dict[Key, str] = {}
        for info in infos:
            key = (info.model, info.version)
            try:
                loaded[key] = self.load(info)
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
        return loaded, failures


async def stop_version(version: LoadedVersion) -> None:
    """Stop the version's batcher and close its backends (a remote's connections)."""
    await version.batcher.stop()
    for backend in version.backends:
        await backend.close()


async def retire_version(version: LoadedVersion, grace_s: float) -> None:
    """Stop a replaced version once requests that already resolved it have been served."""
    await asyncio.sleep(grace_s)
    while version.batcher.depth:
        await asyncio.sleep(0.05)
    await stop_version(version)
    log.info("unloaded %s v%d", *version.key)
