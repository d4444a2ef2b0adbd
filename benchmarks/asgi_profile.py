"""Where a request's time goes without sockets: both apps driven in-process through ASGI.

    .venv/bin/python benchmarks/asgi_profile.py [--calls 5000] [--concurrency 1] [--profile roost]

Calls the Roost gateway app (real lifespan: repository, batcher, prediction log, metrics) and
the floor app (``floor_app.py``) directly as ASGI callables with one in-memory request each, so
the figures are the Python cost of the framework plus the app per request, with no uvicorn, no
HTTP parsing and no kernel. ``--concurrency N`` keeps N requests in flight (``asyncio.gather``),
which lets Roost's batcher merge them. ``--profile NAME`` runs that app under cProfile and
prints the top functions by cumulative and by own time.

Needs a ROOST_HOME with breast-cancer deployed: ``--home`` (e.g. one kept by
``run.py --keep-home``); without it the demo pipeline is materialized into a temporary one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH_DIR)]

from run import BODY_FILE, INFER_PATH, MODEL, materialize_model  # noqa: E402

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": INFER_PATH,
        "raw_path": INFER_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def one_request(app: Asgi, body: bytes) -> int:
    """One POST through the app; returns the status code."""
    delivered = False
    never = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # no disconnect while the app runs
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = _scope(body)
    scope["state"] = dict(getattr(app, "_bench_state", {}))
    await app(scope, receive, send)
    return status


async def time_app(app: Asgi, body: bytes, calls: int, concurrency: int) -> dict[str, float]:
    """Per-request µs: wall and CPU time per request, latency median (concurrency 1)."""
    for _ in range(200):
        assert await one_request(app, body) == 200
    samples: list[int] = []
    clock = time.perf_counter_ns
    cpu0 = time.process_time_ns()
    started = clock()
    if concurrency == 1:
        for _ in range(calls):
            t0 = clock()
            await one_request(app, body)
            samples.append(clock() - t0)
    else:
        for _ in range(max(1, calls // concurrency)):
            statuses = await asyncio.gather(
                *(one_request(app, body) for _ in range(concurrency))
            )
            assert all(s == 200 for s in statuses), statuses
    wall = clock() - started
    cpu = time.process_time_ns() - cpu0
    done = calls if concurrency == 1 else max(1, calls // concurrency) * concurrency
    out = {
        "wall_us_per_request": wall / done / 1000,
        "cpu_us_per_request": cpu / done / 1000,  # all threads of this process
        "requests": done,
    }
    if samples:
        ordered = sorted(samples)
        out["median_us"] = statistics.median(samples) / 1000
        out["p99_us"] = ordered[int(len(ordered) * 0.99)] / 1000
        out["p999_us"] = ordered[int(len(ordered) * 0.999)] / 1000
        out["max_us"] = ordered[-1] / 1000
    return out


class GcWatch:
    """Times every garbage collection in the process (``--gc``): where c=1 tails can come from."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self._start) * 1e6)

    def report(self) -> str:
        return "; ".join(
            f"gen{g}: {len(p)} collections, max {max(p, default=0):.0f} us, "
            f"total {sum(p) / 1000:.1f} ms"
            for g, p in self.pauses.items()
        )


@contextlib.asynccontextmanager
async def started(app: Any) -> Any:
    async with app.router.lifespan_context(app) as state:
        app._bench_state = state or {}
        yield app


def _print_profile(profile: cProfile.Profile, rows: int) -> None:
    for key in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(key).print_stats(rows)
        print(f"--- by {key}\n" + "\n".join(text.getvalue().splitlines()[6:]))


async def main_async(args: argparse.Namespace, home: Path) -> None:
    from floor_app import MODEL_NAME_ENV, MODEL_PATH_ENV
    from floor_app import create_app as create_floor

    from registry import Registry, RoostSettings
    from serving import create_app

    settings = RoostSettings(home=home, grpc_port=0)
    registry = Registry.from_settings(settings)
    model_path = home / "bench-asgi-model.onnx"
    version = next(v for v in registry.served_versions() if v.model == MODEL).version
    model_path.write_bytes(registry.load_artifact(MODEL, version))
    registry.close()
    os.environ[MODEL_PATH_ENV], os.environ[MODEL_NAME_ENV] = str(model_path), MODEL

    body = BODY_FILE.read_bytes().strip()
    apps = {"floor": create_floor(), "roost": create_app(settings)}
    for name, app in apps.items():
        async with started(app):
            watch = GcWatch()
            if args.gc:
                gc.callbacks.append(watch)
            result = await time_app(app, body, args.calls, args.concurrency)
            if args.gc:
                gc.callbacks.remove(watch)
                print(f"{name:6s} garbage collection: {watch.report()}")
            print(f"{name:6s} concurrency {args.concurrency}: " + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
            ))
            if args.profile == name:
                profile = cProfile.Profile()
                profile.enable()
                await time_app(app, body, args.calls, args.concurrency)
                profile.disable()
                _print_profile(profile, args.rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--profile", choices=["floor", "roost"], default=None)
    parser.add_argument("--rows", type=int, default=30, help="profile rows to print")
    parser.add_argument("--home", type=Path, default=None, help="ROOST_HOME with the model")
    parser.add_argument("--gc", action="store_true", help="time every garbage collection")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="sys.setswitchinterval for the run (the GIL hand-off interval)")
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    home = args.home
    temp = None
    if home is None:
        temp = home = Path(tempfile.mkdtemp(prefix="roost-asgi-"))
        materialize_model(home)
    try:
        asyncio.run(main_async(args, home))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
