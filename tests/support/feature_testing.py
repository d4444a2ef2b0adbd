"""Feature-store helpers for the tests: real Feast stores in temporary Roost homes filled with
hand-made customer activity, and a real ``redis-server`` on a loopback port.

``activity`` rows are snapshots as :mod:`assets.features` writes them: the customer's activity
just before a transaction, stamped with the transaction's time.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from roost_testing import free_port

from assets.features import ACTIVITY_FILE
from features.store import FeatureSettings, apply_definitions, build_store

# Whole seconds: Feast's online store keeps event timestamps to the second.
NOW = datetime.now(UTC).replace(microsecond=0)
REQUEST = {"amount": 80.0, "hour_of_day": 3.0, "is_foreign": 1.0, "merchant_risk": 0.4}


def snapshot(
    customer_id: int,
    at: datetime,
    age: float = 100.0,
    count_24h: int = 2,
    count_30d: int = 4,
    sum_30d: float = 160.0,
) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "event_timestamp": at,
        "created": at,
        "customer_age_days": age,
        "txn_count_24h": count_24h,
        "txn_count_30d": count_30d,
        "amount_sum_30d": sum_30d,
    }


def write_activity(settings: FeatureSettings, rows: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(rows)
    for column in ("event_timestamp", "created"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    settings.repo_path.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(settings.repo_path / ACTIVITY_FILE, index=False)


def make_store(
    settings: FeatureSettings, rows: list[dict[str, Any]], materialize: bool = True
) -> Any:
    """A store with ``rows`` as its activity, definitions applied and (by default) materialized."""
    write_activity(settings, rows)
    store = build_store(settings)
    apply_definitions(store)
    if materialize:
        store.materialize(
            start_date=NOW - timedelta(days=3650 + 1), end_date=NOW + timedelta(seconds=1)
        )
    return store


# Customer 1: fresh everywhere. 2: last seen 3 days ago (24h window stale). 3: 40 days ago
# (both windows stale). 4: unknown.
STANDARD_ROWS = [
    snapshot(1, NOW - timedelta(days=2), age=50.0, count_24h=9, count_30d=9, sum_30d=900.0),
    snapshot(1, NOW - timedelta(hours=1), age=51.9, count_24h=3, count_30d=12, sum_30d=600.0),
    snapshot(2, NOW - timedelta(days=3), age=400.0, count_24h=1, count_30d=5, sum_30d=250.0),
    snapshot(3, NOW - timedelta(days=40), age=900.0, count_24h=2, count_30d=2, sum_30d=30.0),
]


# -- a real redis-server on a loopback port ---------------------------------------------------


class RedisServer:
    """A ``redis-server`` child process on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + 20
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if client.ping():
                        return
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
