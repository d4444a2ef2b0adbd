"""Added latency of the gateway's entity path (Feast online features) against inline features.

    .venv/bin/python benchmarks/features_latency.py [--requests 1000] [--batch 1,32]

One run, on this machine, in this order:

1. builds a fraud model (the demo pipeline's trainer, on 3,000 generated transactions) and the
   fraud feature store (customer activity of 20,000 generated transactions ending today) twice:
   one Roost home with the SQLite online store, one with Redis (a ``redis-server`` this script
   starts on a free loopback port), both materialized;
2. times ``OnlineFeatures.lookup`` in-process (median over ``--calls`` calls) for each store;
3. starts one gateway per home (``roost serve``'s app under uvicorn, one worker, prediction log
   on) and sends, one at a time over a kept-alive connection, the same transactions both ways:
   ``{"entities": {"customer_id": ...}, "features": {request-time values}}`` and the same eight
   features inline; the four request kinds alternate so background load hits them alike;
4. prints p50 / p99 client-side latency per kind and the entity path's added p50 / p99.

Customers are drawn at random from everyone in the store, so the mix includes customers whose
windows are stale (defaults, on-demand view recomputed) as production traffic would.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))

from gateway_process import free_port, gateway_process  # noqa: E402  (tests/support)

from assets.demo_data import FRAUD_FEATURES, generate_fraud_transactions  # noqa: E402
from assets.features import (  # noqa: E402
    ACTIVITY_FILE,
    customer_activity_snapshots,
    history_end,
    shift_history,
)
from assets.training import train_classifier  # noqa: E402
from features.online import OnlineFeatures  # noqa: E402
from features.store import FeatureSettings, apply_definitions, build_store  # noqa: E402
from registry import Registry, RoostSettings, State  # noqa: E402

REQUEST_FIELDS = ["amount", "hour_of_day", "is_foreign", "merchant_risk"]


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def prepare_home(home: Path, redis_url: str | None, model: bytes, activity: pd.DataFrame) -> None:
    settings = FeatureSettings(home=home, redis_url=redis_url)
    settings.repo_path.mkdir(parents=True, exist_ok=True)
    activity.to_parquet(settings.repo_path / ACTIVITY_FILE, index=False)
    store = build_store(settings)
    apply_definitions(store)
    store.materialize_incremental(end_date=datetime.now(UTC))
    reg = Registry.from_settings(RoostSettings(home=home))
    try:
        info = reg.register_version(
            "fraud", model, feature_names=list(FRAUD_FEATURES),
            tags={"feature_service": "fraud_v1"},
        )
        reg.transition("fraud", info.version, State.VALIDATING, reason="bench")
        reg.transition("fraud", info.version, State.VALIDATED, reason="bench")
        reg.deploy("fraud", info.version, reason="bench")
    finally:
        reg.close()


@contextlib.contextmanager
def gateway(home: Path, redis_url: str | None, logs: Path) -> Iterator[str]:
    """``roost serve``'s app under uvicorn (one worker, gRPC off), ready; stopped on the way out."""
    with gateway_process(
        home,
        env={"ROOST_REDIS_URL": redis_url} if redis_url else {},
        unset_env=() if redis_url else ("ROOST_REDIS_URL",),
        launcher="uvicorn",
        grpc=False,
        log_path=logs / f"gateway-{home.name}.log",
    ) as process:
        yield process.url


def bodies(transactions: pd.DataFrame, batch: int, n: int, seed: int) -> list[tuple[bytes, bytes]]:
    """(entity body, inline body) pairs for the same random transactions."""
    rng = np.random.default_rng(seed)
    rows = transactions.iloc[rng.integers(0, len(transactions), size=(n, batch)).ravel()]
    pairs = []
    for start in range(0, len(rows), batch):
        chunk = rows.iloc[start : start + batch]
        entity = [
            {"entities": {"customer_id": int(r.customer_id)},
             "features": {f: float(getattr(r, f)) for f in REQUEST_FIELDS}}
            for r in chunk.itertuples()
        ]
        inline = chunk[FRAUD_FEATURES].to_numpy(np.float64).tolist()
        pairs.append(
            (orjson.dumps({"instances": entity}), orjson.dumps({"instances": inline}))
        )
    return pairs


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per kind and batch size")
    parser.add_argument("--batch", default="1,32", help="instances per request, comma-separated")
    parser.add_argument("--calls", type=int, default=2000, help="in-process lookups to time")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]

    work = Path(tempfile.mkdtemp(prefix="roost-features-bench-"))
    try:
        print("training the model and writing the feature stores ...", flush=True)
        small = generate_fraud_transactions(n_rows=3000, n_customers=300, seed=1)
        model = train_classifier(small, params={"n_estimators": 50}).onnx_bytes
        data = generate_fraud_transactions()
        transactions = shift_history(data.frame, history_end(""))
        activity = customer_activity_snapshots(transactions)
        with redis_server(work) as redis_url:
            homes = {"sqlite": (work / "sqlite", None), "redis": (work / "redis", redis_url)}
            for home, url in homes.values():
                prepare_home(home, url, model, activity)

            print(f"\nin-process OnlineFeatures.lookup (median of {args.calls} calls):")
            for kind, (home, url) in homes.items():
                online = OnlineFeatures(FeatureSettings(home=home, redis_url=url))
                for batch in batches:
                    sample = bodies(transactions, batch, 1, seed=batch)[0][0]
                    instances = orjson.loads(sample)["instances"]
                    online.lookup("fraud_v1", FRAUD_FEATURES, instances)  # warm
                    timings = []
                    for _ in range(args.calls // batch if batch > 1 else args.calls):
                        started = time.perf_counter()
                        online.lookup("fraud_v1", FRAUD_FEATURES, instances)
                        timings.append(time.perf_counter() - started)
                    print(f"  {kind:6} batch {batch:3}: {statistics.median(timings) * 1e3:.3f} ms")

            logs = work / "logs"
            logs.mkdir()
            with contextlib.ExitStack() as stack:
                urls = {k: stack.enter_context(gateway(h, u, logs)) for k, (h, u) in homes.items()}
                clients = {k: stack.enter_context(httpx.Client(base_url=v, timeout=30))
                           for k, v in urls.items()}
                print(f"\ngateway, one request at a time ({args.requests} per kind), ms:")
                print("| store | batch | inline p50 | entity p50 | added p50 | inline p99 | "
                      "entity p99 | added p99 |")
                print("|---|---:|---:|---:|---:|---:|---:|---:|")
                for batch in batches:
                    pairs = bodies(transactions, batch, args.requests + 50, seed=100 + batch)
                    times: dict[tuple[str, str], list[float]] = {
                        (k, p): [] for k in homes for p in ("entity", "inline")
                    }
                    headers = {"content-type": "application/json"}
                    for i, (entity, inline) in enumerate(pairs):
                        for kind in homes:
                            for path, body in (("entity", entity), ("inline", inline)):
                                started = time.perf_counter()
                                r = clients[kind].post(
                                    "/v1/models/fraud:predict", content=body, headers=headers
                                )
                                elapsed = time.perf_counter() - started
                                if r.status_code != 200:
                                    raise RuntimeError(f"{kind} {path}: {r.status_code} {r.text}")
                                if i >= 50:  # the first 50 warm up
                                    times[(kind, path)].append(elapsed * 1e3)
                    for kind in homes:
                        e, n = times[(kind, "entity")], times[(kind, "inline")]
                        row = [percentile(n, 50), percentile(e, 50),
                               percentile(e, 50) - percentile(n, 50),
                               percentile(n, 99), percentile(e, 99),
                               percentile(e, 99) - percentile(n, 99)]
                        print(f"| {kind} | {batch} | " + " | ".join(f"{v:.2f}" for v in row)
                              + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
