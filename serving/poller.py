"""Watching the registry: :class:`RegistryPoller` asks the repository to rebuild on a change.

Every ``poll_interval_s`` the poller has the repository compare its deployment scope's change
token (the registry generation, see :mod:`serving.scope`) with the table's, rebuild when it moved
(or a failed version is due a retry), and flushes queued bandit rewards. On PostgreSQL its
:class:`~registry.notify.RegistryWatcher` cuts the wait short the moment a write commits
(LISTEN/NOTIFY), so gateways follow a change within milliseconds whatever the interval. When
the registry cannot be reached the last table keeps serving: :class:`RegistryHealth` remembers
since when, readiness reports it (without turning false) and ``roost_registry_poll_errors_total``
counts failed polls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from registry.notify import RegistryWatcher
from registry.tasks import cancel_and_wait
from serving.metrics import GatewayMetrics

if TYPE_CHECKING:
    from serving.repository import ModelRepository

log = logging.getLogger("roost.serving")


class RegistryHealth:
    """Whether the registry answered the last poll, and since when it has not."""

    def __init__(self, metrics: GatewayMetrics | None = None) -> None:
        self.metrics = metrics
        self.last_error: str | None = None
        self.down_since: float | None = None  # wall time of the first failed poll
        self.failed_polls = 0  # consecutive

    def answered(self) -> None:
        """The registry answered a question (counted in the poll metrics)."""
        if self.metrics:
            self.metrics.registry_polled(True)

    def poll_failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        self.failed_polls += 1
        if self.down_since is None:
            self.down_since = time.time()
            log.error("registry unreachable, serving the last known table: %s", exc)
        else:
            log.warning("registry still unreachable (%d polls): %s", self.failed_polls, exc)
        if self.metrics:
            self.metrics.registry_polled(False)

    def poll_succeeded(self) -> None:
        if self.down_since is not None:
            log.warning(
                "registry reachable again after %.1f s (%d failed polls)",
                time.time() - self.down_since, self.failed_polls,
            )
        self.last_error = None
        self.down_since = None
        self.failed_polls = 0


class RegistryPoller:
    """The background task that keeps a repository in step with the registry."""

    def __init__(self, repository: ModelRepository, interval_s: float | None = None) -> None:
        self.repository = repository
        self.interval_s = repository.settings.poll_interval_s if interval_s is None else interval_s
        self._task: asyncio.Task[None] | None = None
        # PostgreSQL: LISTEN roost_registry wakes the loop at once (registry/notify.py)
        self.watcher = RegistryWatcher(getattr(repository.registry, "url", None))

    async def poll_once(self) -> None:
        """One poll: rebuild if needed, flush bandit rewards; a failure is recorded, not raised."""
        repository = self.repository
        try:
            await repository.sync()
            table = repository.table
            if repository.rewards.pending or any(r.policy.bandit for r in table.routers.values()):
                # a thread hop (and the GIL for SQL) only when there are rewards to exchange
                await asyncio.to_thread(repository.rewards.flush, repository.registry, table)
        except Exception as exc:  # registry unreachable: keep serving the last table
            repository.health.poll_failed(exc)
        else:
            repository.health.poll_succeeded()

    async def run(self) -> None:
        while True:
            await self.watcher.wait(self.interval_s)  # a notification, or the interval
            await self.poll_once()

    def start(self) -> None:
        if self._task is None:
            self.watcher.start()
            self._task = asyncio.create_task(self.run(), name="roost-registry-poller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.watcher.close()
