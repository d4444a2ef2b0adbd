"""Gateways learn of a registry change within a second on PostgreSQL (LISTEN/NOTIFY).

Every write that bumps the generation sends ``NOTIFY roost_registry, '<generation>'`` at commit
(none for a write that rolls back); a :class:`RegistryWatcher` LISTENing wakes at once. A real
gateway (uvicorn in-process) on the test PostgreSQL, with its poll interval at 30 s, follows
unload/load changes in well under a second: only the notification can have woken it. Measured
latencies are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import NotFound, Registry, RoostSettings
from registry.notify import RegistryWatcher, libpq_conninfo


def listeners(url: str) -> int:
    """Connections whose last statement was the watcher's LISTEN."""
    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN roost_registry%'"
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def pg_settings(postgres_url: str, tmp_path: Path) -> RoostSettings:
    return RoostSettings(
        home=tmp_path / "roost",
        database_url=postgres_url,
        poll_interval_s=30.0,  # a poll cannot explain a sub-second pick-up
        dev_mode=True,
        log_flush_interval_s=0.2,
    )


@pytest.fixture
def pg_registry(pg_settings: RoostSettings) -> Iterator[Registry]:
    registry = Registry.from_settings(pg_settings)
    yield registry
    registry.close()


def test_watcher_wakes_on_commit_and_not_on_rollback(pg_registry: Registry) -> None:
    async def scenario() -> None:
        watcher = RegistryWatcher(pg_registry.url)
        watcher.start()
        try:
            assert await watcher.wait_listening(10)
            await watcher.wait(0.5)  # the wake-up every (re)connection gives
            # a write that fails rolls back: nothing is delivered
            with pytest.raises(NotFound):
                await asyncio.to_thread(pg_registry.set_serving_enabled, "nope", False)
            assert not await watcher.wait(0.3)
            deploy_model(pg_registry, "m", make_linear_onnx(seed=1))
            started = time.perf_counter()
            await asyncio.to_thread(pg_registry.set_serving_enabled, "m", False, reason="t")
            assert await watcher.wait(1.0)
            assert time.perf_counter() - started < 1.0
            await asyncio.sleep(0.05)
            assert watcher.last_payload == str(pg_registry.generation())
        finally:
            await watcher.close()
        assert not watcher.listening

    asyncio.run(scenario())


def test_watcher_on_sqlite_is_the_interval(settings: RoostSettings) -> None:
    async def scenario() -> None:
        watcher = RegistryWatcher(settings.registry_url)
        watcher.start()
        assert not watcher.enabled
        started = time.perf_counter()
        assert not await watcher.wait(0.2)
        assert time.perf_counter() - started >= 0.19
        await watcher.close()

    asyncio.run(scenario())


def until(predicate: object, timeout_s: float) -> float:
    """Seconds until ``predicate()`` held (polled every 5 ms); fails after ``timeout_s``."""
    assert callable(predicate)
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            pytest.fail(f"not within {timeout_s} s")
        time.sleep(0.005)
    return time.perf_counter() - started


def test_gateway_follows_a_postgres_change_within_a_second(
    pg_registry: Registry, pg_settings: RoostSettings, postgres_url: str
) -> None:
    deploy_model(pg_registry, "m", make_linear_onnx(seed=1))
    unloaded: list[float] = []
    loaded: list[float] = []
    with running_gateway(pg_settings) as url, httpx.Client(base_url=str(url), timeout=5) as client:

        def served() -> bool:
            return client.get("/v2/models/m").status_code == 200

        assert served()
        until(lambda: listeners(postgres_url) >= 1, 15)
        time.sleep(0.3)  # let the wake-up after connecting pass
        for _ in range(3):
            pg_registry.set_serving_enabled("m", False, reason="notify test")
            unloaded.append(until(lambda: not served(), 5))
            pg_registry.set_serving_enabled("m", True, reason="notify test")
            loaded.append(until(served, 5))
    print(
        f"\nNOTIFY pick-up (poll interval 30 s): unload median "
        f"{statistics.median(unloaded) * 1000:.0f} ms max {max(unloaded) * 1000:.0f} ms; "
        f"load (incl. model load) median {statistics.median(loaded) * 1000:.0f} ms "
        f"max {max(loaded) * 1000:.0f} ms"
    )
    assert max(unloaded) < 1.0, unloaded
    assert max(loaded) < 1.0, loaded
