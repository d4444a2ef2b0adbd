"""Multi-region: the registry's primary fails over to the other region's hot standby, on loopback.

Two PostgreSQL servers (tests/support/postgres.py): the primary (region "eu") streams its WAL to
a hot standby made with ``pg_basebackup -R`` (region "us"). Two gateway processes serve one
model: "eu" reads and writes through the writers' multi-host URL
(``host=primary,standby&target_session_attrs=read-write``), "us" writes through the same URL but
reads its local standby (``ROOST_DATABASE_READ_URL=...host=standby,primary&
target_session_attrs=prefer-standby``). A client sends requests to both the whole time.

1. A deploy on the primary reaches "us" through replication (replication lag and the time until
   "us" answers with the new version are measured and printed).
2. The primary is stopped with ``pg_ctl stop -m immediate``. Meanwhile: both gateways keep
   answering (zero failed requests); "us" keeps reading the standby; "eu" keeps its last
   table, its readiness says the registry is unreachable and its poll errors count; registry
   writes (Registry API, admin API of both gateways, a writer pointed at the standby) fail
   with 503 "registry is read-only or unreachable", not a stack trace.
3. ``pg_ctl promote`` on the standby. The writers' multi-host URL finds it; a rollback written
   there reaches both gateways; "eu" reports the registry reachable again; the audit chain
   verifies on the new primary; every prediction-log row carries its gateway's region.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from postgres import PostgresServer, start_server
from roost_testing import GatewayProcess, deploy_model, make_linear_onnx

from registry import Registry, State
from registry.dburl import RegistryUnavailable
from registry.notify import RegistryWatcher
from warehouse import run_query

pytestmark = pytest.mark.slow

MODEL = "fraud"
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
DEV_KEY = {"authorization": "Bearer roost-dev-key"}


def multi_host(user: str, database: str, hosts: list[int], attrs: str) -> str:
    """The libpq multi-host URL of ``hosts`` (loopback ports), in the order given."""
    listed = ",".join(f"127.0.0.1:{port}" for port in hosts)
    return f"postgresql+psycopg://{user}@/{database}?host={listed}&target_session_attrs={attrs}"


class Traffic:
    """A client thread sending inference requests to every gateway in turn until stopped."""

    def __init__(self, gateways: dict[str, str]) -> None:
        self.gateways = gateways
        self.answers: list[tuple[float, str, int, str]] = []  # time, region, status, version
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                for region, url in self.gateways.items():
                    n += 1
                    body = {**BODY, "id": f"{region}-{n}"}
                    try:
                        r = client.post(f"{url}/v2/models/{MODEL}/infer", json=body)
                        version = r.json().get("model_version", "") if r.is_success else ""
                        self.answers.append((time.monotonic(), region, r.status_code, version))
                        if not r.is_success:
                            self.failures.append(f"{region}: {r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{region}: {exc!r}")
                time.sleep(0.005)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def first_answer(self, region: str, version: str, after: float, timeout_s: float) -> float:
        """Seconds from ``after`` to the first answer of ``region`` by ``version``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for at, where, status, ver in list(self.answers):
                if at >= after and where == region and status == 200 and ver == version:
                    return at - after
            time.sleep(0.01)
        raise AssertionError(f"{region} never answered with v{version} within {timeout_s} s")


@pytest.fixture
def servers() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    try:
        primary = start_server(replication=True)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    standby: PostgresServer | None = None
    try:
        primary.execute('CREATE DATABASE "roost"')
        standby = primary.create_standby()
        yield primary, standby
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def watcher_on(url: str) -> tuple[bool, bool]:
    """(standby, listening) of a change watcher (registry/notify.py) pointed at ``url``."""

    async def probe() -> tuple[bool, bool]:
        watcher = RegistryWatcher(url, standby_recheck_s=0.2)
        watcher.start()
        listening = await watcher.wait_listening(1.0)
        standby = watcher.standby
        await watcher.close()
        return standby, listening

    return asyncio.run(probe())


def generation_on(conn: psycopg.Connection[tuple[int]]) -> int:
    row = conn.execute(b"SELECT value FROM counters WHERE name = 'generation'").fetchone()
    return 0 if row is None else int(row[0])


def test_registry_failover_between_regions(
    servers: tuple[PostgresServer, PostgresServer], tmp_path: Path
) -> None:
    primary, standby = servers
    writers_url = multi_host("postgres", "roost", [primary.port, standby.port], "read-write")
    us_read_url = multi_host("postgres", "roost", [standby.port, primary.port], "prefer-standby")
    artifacts = tmp_path / "artifacts"  # one bucket replicated to both regions, in reality
    writer = Registry(writers_url, artifacts, actor="release-bot")  # applies the migrations
    v1 = deploy_model(writer, MODEL, make_linear_onnx(seed=1))
    v2 = writer.register_version(MODEL, make_linear_onnx(seed=2)).version
    writer.transition(MODEL, v2, State.VALIDATING, reason="test")
    writer.transition(MODEL, v2, State.VALIDATED, reason="test")

    common = {
        "ROOST_DATABASE_URL": writers_url,
        "ROOST_ARTIFACTS_URL": artifacts.as_uri(),
        "ROOST_POLL_INTERVAL_S": "0.2",
        "ROOST_DEV_MODE": "true",
        "ROOST_WARMUP_RUNS": "1",
    }
    eu = GatewayProcess(
        tmp_path / "eu", name="gateway-eu", grpc=False, env={**common, "ROOST_REGION": "eu"}
    )
    us = GatewayProcess(
        tmp_path / "us", name="gateway-us", grpc=False,
        env={**common, "ROOST_REGION": "us", "ROOST_DATABASE_READ_URL": us_read_url},
    )  # fmt: skip
    traffic: Traffic | None = None
    try:
        eu.start()
        us.start()
        eu.wait_ready(90)
        us.wait_ready(90)
        traffic = Traffic({"eu": eu.url, "us": us.url}).start()
        traffic.first_answer("us", str(v1), 0.0, 10)

        # 1. a change on the primary reaches the standby's region
        with psycopg.connect(
            host="127.0.0.1", port=standby.port, user="postgres", dbname="roost", autocommit=True
        ) as on_replica:
            changed = time.monotonic()
            writer.deploy(MODEL, v2, reason="release 2")
            committed = time.monotonic()
            target = writer.generation()  # the counter the deploy committed, on the primary
            while generation_on(on_replica) < target:
                time.sleep(0.001)
            replication_s = time.monotonic() - committed
        eu_s = traffic.first_answer("eu", str(v2), committed, 10)
        us_s = traffic.first_answer("us", str(v2), committed, 10)
        deploy_s = committed - changed

        # 2. the primary is lost
        crashed = time.monotonic()
        primary.crash()
        with pytest.raises(RegistryUnavailable, match="read-only or unreachable"):
            writer.rollback(MODEL, reason="during the outage")
        write_refused_s = time.monotonic() - crashed
        on_standby = Registry(standby.url("roost"), artifacts)  # a writer that found the standby
        try:
            assert on_standby.generation() == target  # reads work there ...
            with pytest.raises(RegistryUnavailable, match="read-only"):
                on_standby.rollback(MODEL, reason="on a hot standby")  # ... writes do not
        finally:
            on_standby.close()
        for gateway in (eu, us):
            r = httpx.post(
                f"{gateway.url}/admin/models/{MODEL}/rollback", json={"reason": "outage"},
                headers=DEV_KEY, timeout=30,
            )  # fmt: skip
            assert r.status_code == 503, r.text
            assert "read-only or unreachable" in r.text and "Traceback" not in r.text
            assert r.headers.get("retry-after")
        deadline = time.monotonic() + 10
        while True:
            ready = httpx.get(f"{eu.url}/v2/health/ready", timeout=5)
            if any("registry unreachable" in why for why in ready.json().get("reasons", [])):
                break
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        eu_unreachable_s = time.monotonic() - crashed
        assert ready.status_code == 200  # still in rotation: the last table serves
        metrics = httpx.get(f"{eu.url}/metrics", timeout=5).text
        errors = [line for line in metrics.splitlines()
                  if line.startswith("roost_registry_poll_errors_total")]  # fmt: skip
        assert errors and float(errors[0].split()[-1]) >= 1, errors
        us_ready = httpx.get(f"{us.url}/v2/health/ready", timeout=5).json()
        assert not any("registry unreachable" in why for why in us_ready.get("reasons", []))
        # no LISTEN on a hot standby: a watcher there says so and leaves it to the poll
        assert watcher_on(standby.url("roost")) == (True, False)
        time.sleep(0.5)  # both keep serving v2 meanwhile (checked below: zero failures)

        # 3. promote the standby: writes come back, both regions follow
        promoting = time.monotonic()
        standby.promote()
        promote_s = time.monotonic() - promoting
        assert not standby.in_recovery()
        assert watcher_on(standby.url("roost")) == (False, True)  # LISTEN works there now
        deadline = time.monotonic() + 20
        while True:
            try:
                info = writer.rollback(MODEL, reason="after the failover")
                break
            except RegistryUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        first_write_s = time.monotonic() - promoting
        outage_s = time.monotonic() - crashed
        assert info.version == v1  # production is v1 again
        eu_back_s = traffic.first_answer("eu", str(v1), promoting, 20)
        us_back_s = traffic.first_answer("us", str(v1), promoting, 20)
        deadline = time.monotonic() + 10
        while True:
            reasons = httpx.get(f"{eu.url}/v2/health/ready", timeout=5).json().get("reasons", [])
            if not any("registry unreachable" in why for why in reasons):
                break
            assert time.monotonic() < deadline, reasons
            time.sleep(0.1)
        verification = writer.audit_verify()
        assert verification.ok, verification
        time.sleep(0.3)
    finally:
        if traffic is not None:
            traffic.stop()
        exits = [eu.stop(), us.stop()]
        writer.close()

    assert exits == [0, 0], (eu.tail(), us.tail())
    assert traffic.failures == [], traffic.failures[:5]
    served = {region: sum(1 for _, r, s, _ in traffic.answers if r == region and s == 200)
              for region in ("eu", "us")}  # fmt: skip
    assert min(served.values()) > 50, served
    for region, gateway in (("eu", eu), ("us", us)):
        _, rows = run_query(
            gateway.home / "logs",
            "select coalesce(region, 'NULL'), count(*) from predictions group by 1",
        )
        assert rows == [(region, served[region])], (region, rows)  # its own log, its region
    print(
        f"\nregion failover: deploy transaction {deploy_s * 1000:.0f} ms, replication lag "
        f"{replication_s * 1000:.1f} ms after the commit; deploy served by eu after {eu_s:.2f} s, "
        f"us (standby) after {us_s:.2f} s; primary lost: writes refused "
        f"after {write_refused_s:.2f} s, eu reports the registry unreachable after "
        f"{eu_unreachable_s:.2f} s; pg_ctl promote {promote_s:.2f} s, first write "
        f"{first_write_s:.2f} s after promote (writes unavailable {outage_s:.2f} s in all, "
        f"incl. 1.5 s of checks); rollback served by eu after {eu_back_s:.2f} s, us after "
        f"{us_back_s:.2f} s; requests {served} with 0 failures"
    )
