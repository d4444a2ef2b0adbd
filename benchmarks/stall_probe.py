"""Find what stalls a gateway's event loop: the in-process probe that ``stalls.py`` runs.

``stall_probe:create_app`` is the gateway (``serving.app.create_app_from_env``, whichever
``serving`` is on ``PYTHONPATH``) with a probe around it. The probe measures, in the server
process, without changing the request path:

- **loop lag**: a thread posts a callback to the event loop every ``STALL_PROBE_EVERY_MS`` (2)
  with ``call_soon_threadsafe`` and records how long it waited to run (from the moment it was
  posted: a probe thread kept waiting for the GIL itself misses samples rather than inventing
  lags). A ready callback waits exactly as long as a request that arrives at that moment would:
  a callback running on the loop, or another thread holding the GIL (the loop thread gets it
  back only after ``sys.getswitchinterval()``), both show here;
- **requests**: each HTTP request's time from uvicorn's protocol taking its bytes off the socket
  (the ASGI call, under another server) to its last body message;
- **garbage collection**: every collection's duration by generation (``gc.callbacks``);
- **background work**: start and end of the work that runs next to requests (WAL segment seals:
  reading the segment and writing Parquet; WAL sync rounds; registry polls and table rebuilds;
  consent refreshes; bandit-reward flushes), wrapped where it is defined;
- **threads' CPU**: CPU seconds per thread name over the window (``psutil``).

Every lag over ``STALL_PROBE_THRESHOLD_MS`` (1) and every request over it is *attributed* to
the background work and collections that overlapped it. ``GET /_stalls`` answers the window so
far as JSON; ``GET /_stalls?reset=1`` starts a new window. Measurement code only: nothing here
is imported by the gateway.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextvars
import functools
import gc
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import psutil

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BUCKETS_US = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000)
"""Histogram bucket upper bounds in microseconds (one more bucket for anything longer)."""

# (module, attribute path, event name): the background work the probe times
ACTIVITIES = (
    ("warehouse.wal", "read_segment", "seal: read segment"),
    ("warehouse.wal", "WriteAheadLog._seal_segment", "seal: whole segment"),
    ("warehouse.wal", "WriteAheadLog._sync_round", "wal: sync round"),
    ("warehouse.writer", "PredictionLogWriter._seal", "seal: parquet"),
    ("serving.poller", "RegistryPoller.poll_once", "registry: poll"),
    ("serving.repository", "ModelRepository._build", "registry: table rebuild"),
    ("serving.governance", "ConsentGate.refresh", "consent: refresh"),
    ("serving.rewards", "BanditRewards.flush", "rewards: flush"),
)


ARRIVED: contextvars.ContextVar[int] = contextvars.ContextVar("stall_probe_arrived", default=0)
"""When the request's bytes were handed to uvicorn's HTTP protocol (the request's task inherits
the context it was created in, inside ``data_received``)."""


class Histogram:
    """Counts per :data:`BUCKETS_US` bucket, plus exact percentiles from the kept samples."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_US) + 1)
        self.samples: list[int] = []  # ns

    def add(self, ns: int) -> None:
        self.counts[bisect.bisect_left(BUCKETS_US, ns / 1000)] += 1
        self.samples.append(ns)

    def summary(self) -> dict[str, Any]:
        samples = sorted(self.samples)
        n = len(samples)

        def pct(p: float) -> float:
            return round(samples[min(n - 1, int(p * n))] / 1e3, 1) if n else 0.0

        labels = [f"<={b}" for b in BUCKETS_US] + [f">{BUCKETS_US[-1]}"]
        return {
            "n": n,
            "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
            "p99.9_us": pct(0.999), "max_us": round(samples[-1] / 1e3, 1) if n else 0.0,
            "over_1ms": sum(1 for s in samples if s > 1_000_000),
            "buckets_us": dict(zip(labels, self.counts, strict=True)),
        }


class Window:
    """What the probe saw since the last reset."""

    def __init__(self, threshold_ns: int) -> None:
        self.threshold_ns = threshold_ns
        self.started_ns = time.perf_counter_ns()
        self.lag = Histogram()
        self.requests = Histogram()
        self.gc: dict[int, Histogram] = collections.defaultdict(Histogram)
        self.events: list[tuple[str, int, int]] = []  # background work and collections
        self.stalls: list[tuple[int, int]] = []  # loop lags over the threshold
        self.slow: list[tuple[int, int]] = []  # requests over the threshold
        self.spans: list[tuple[int, int]] = []  # every request

    def attribute(self, spans: list[tuple[int, int]]) -> dict[str, int]:
        """How many of ``spans`` overlapped each kind of event (``none`` when nothing did)."""
        counts: collections.Counter[str] = collections.Counter()
        for start, end in spans:
            names = {name for name, s, e in self.events if s < end and e > start}
            counts.update(names or {"none"})
        return dict(counts.most_common())

    def during(self) -> dict[str, dict[str, float]]:
        """Per kind of event: the requests that overlapped one (how many, how many were slow,
        their p99), and the same for the requests that overlapped none. Machine noise hits
        both alike; what an activity adds shows as the difference."""
        spans: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        for name, start, end in self.events:
            spans[name.split(":")[0]].append((start, end))
        merged = {name: _merge(found) for name, found in spans.items()}
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for start, end in self.spans:
            hit = [name for name, m in merged.items() if _overlaps(m, start, end)]
            for name in hit or ["nothing"]:
                groups[name].append(end - start)
        out = {}
        for name, durations in sorted(groups.items()):
            durations.sort()
            n = len(durations)
            out[name] = {
                "requests": n,
                "slow_pct": round(100 * sum(d > self.threshold_ns for d in durations) / n, 2),
                "p50_us": round(durations[n // 2] / 1e3, 1),
                "p99_us": round(durations[min(n - 1, int(0.99 * n))] / 1e3, 1),
            }
        return out

    def summary(self, thread_cpu: dict[str, float]) -> dict[str, Any]:
        durations: dict[str, list[int]] = collections.defaultdict(list)
        for name, start, end in self.events:
            durations[name].append(end - start)
        return {
            "window_s": round((time.perf_counter_ns() - self.started_ns) / 1e9, 2),
            "switch_interval_ms": __import__("sys").getswitchinterval() * 1000,
            "gc_thresholds": gc.get_threshold(),
            "gc_frozen": gc.get_freeze_count(),
            "loop_lag": self.lag.summary(),
            "requests": self.requests.summary(),
            "gc": {f"gen{g}": h.summary() for g, h in sorted(self.gc.items())},
            "activities": {
                name: {
                    "n": len(d), "total_ms": round(sum(d) / 1e6, 1),
                    "max_ms": round(max(d) / 1e6, 2),
                }
                for name, d in sorted(durations.items())
            },
            "requests_during": self.during(),
            "stalls_over_threshold": len(self.stalls),
            "stalls_attributed": self.attribute(self.stalls),
            "slow_requests_attributed": self.attribute(self.slow),
            "thread_cpu_s": thread_cpu,
        }


class StallProbe:
    """Loop-lag thread, GC callbacks and timed background work, reporting one :class:`Window`."""

    def __init__(self, every_s: float = 0.002, threshold_ms: float = 1.0) -> None:
        self.every_s = every_s
        self.threshold_ns = int(threshold_ms * 1e6)
        self.window = Window(self.threshold_ns)
        self._gc_started: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._cpu0 = self._thread_cpu()

    # -- sources ----------------------------------------------------------------------------

    def install(self) -> None:
        gc.callbacks.append(self._on_gc)
        _stamp_arrivals()
        for module_name, path, name in ACTIVITIES:
            _wrap(module_name, path, functools.partial(self.event, name))

    def event(self, name: str, start: int, end: int) -> None:
        self.window.events.append((name, start, end))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        ident = threading.get_ident()
        if phase == "start":
            self._gc_started[ident] = now
            return
        start = self._gc_started.pop(ident, now)
        generation = info["generation"]
        self.window.gc[generation].add(now - start)
        self.window.events.append((f"gc: gen{generation}", start, now))

    def start_lag_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        threading.Thread(target=self._lag_loop, name="stall-probe", daemon=True).start()

    def _lag_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._stop.wait(self.every_s):
            # Stamped once posted: were this thread kept from the GIL between a stamp and the
            # post, its own wait would count as the loop's lag.
            stamp = [0]
            try:
                loop.call_soon_threadsafe(self._landed, stamp)
            except RuntimeError:  # the loop closed
                return
            stamp[0] = time.perf_counter_ns()

    def _landed(self, stamp: list[int]) -> None:
        now = time.perf_counter_ns()
        posted = stamp[0] or now  # 0: it ran before this thread stamped it
        self.window.lag.add(max(0, now - posted))
        if now - posted > self.threshold_ns:
            self.window.stalls.append((posted, now))

    def request_done(self, start: int, end: int) -> None:
        self.window.requests.add(end - start)
        self.window.spans.append((start, end))
        if end - start > self.threshold_ns:
            self.window.slow.append((start, end))

    # -- windows ----------------------------------------------------------------------------

    def _thread_cpu(self) -> dict[int, float]:
        return {t.id: t.user_time + t.system_time for t in self._process.threads()}

    def report(self, reset: bool) -> dict[str, Any]:
        cpu1 = self._thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        by_name: dict[str, float] = collections.defaultdict(float)
        for tid, cpu in cpu1.items():
            name = names.get(tid, "main (event loop)" if tid == os.getpid() else "other")
            by_name[name] += cpu - self._cpu0.get(tid, 0.0)
        ordered = sorted(by_name.items(), key=lambda item: -item[1])
        report = self.window.summary({k: round(v, 3) for k, v in ordered})
        if reset:
            self.window = Window(self.threshold_ns)
            self._cpu0 = cpu1
        return report

    def stop(self) -> None:
        self._stop.set()


def _merge(spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Overlapping spans joined: (starts, ends), sorted."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(spans):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


def _overlaps(merged: tuple[list[int], list[int]], start: int, end: int) -> bool:
    starts, ends = merged
    i = bisect.bisect_left(starts, end) - 1  # the last span starting before ``end``
    return i >= 0 and ends[i] > start


def _stamp_arrivals() -> None:
    """Set :data:`ARRIVED` while uvicorn's httptools protocol takes bytes off the socket."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return
    original = HttpToolsProtocol.data_received
    if getattr(original, "stall_probe", False):
        return

    def data_received(self: HttpToolsProtocol, data: bytes) -> None:
        token = ARRIVED.set(time.perf_counter_ns())
        try:
            original(self, data)
        finally:
            ARRIVED.reset(token)

    data_received.stall_probe = True  # type: ignore[attr-defined]
    HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]


def _wrap(module_name: str, path: str, record: Callable[[int, int], None]) -> None:
    """Time ``module.path`` (a function or a class's method), sync or async; skip if absent."""
    import importlib

    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return
    *parents, attr = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent, None)
        if owner is None:
            return
    original = getattr(owner, attr, None)
    if original is None:
        return
    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            try:
                return await original(*args, **kwargs)
            finally:
                record(start, time.perf_counter_ns())

        setattr(owner, attr, timed_async)
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            record(start, time.perf_counter_ns())

    setattr(owner, attr, timed)


class ProbedApp:
    """The gateway's ASGI app with request timing, the lag thread and ``GET /_stalls``."""

    def __init__(self, app: ASGIApp, probe: StallProbe) -> None:
        self.app = app
        self.probe = probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if self.probe._loop is None:
                self.probe.start_lag_thread(asyncio.get_running_loop())
            await self.app(scope, receive, send)
            self.probe.stop()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/_stalls":
            body = orjson.dumps(self.probe.report(reset=b"reset=1" in scope["query_string"]))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        start = ARRIVED.get() or time.perf_counter_ns()  # from the bytes, if uvicorn's
        done = self.probe.request_done

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done(start, time.perf_counter_ns())

        await self.app(scope, receive, timed_send)


def _probe() -> StallProbe:
    probe = StallProbe(
        every_s=float(os.environ.get("STALL_PROBE_EVERY_MS", "2")) / 1000,
        threshold_ms=float(os.environ.get("STALL_PROBE_THRESHOLD_MS", "1")),
    )
    probe.install()  # before the app is built, so its parts are the wrapped ones
    return probe


def create_app() -> ProbedApp:
    """uvicorn's factory: the gateway from the environment's settings, probed."""
    probe = _probe()
    from serving.app import create_app_from_env

    return ProbedApp(create_app_from_env(), probe)


def create_floor_app() -> ProbedApp:
    """uvicorn's factory: the floor (``floor_app.py``), probed: the machine's own loop lag."""
    probe = _probe()
    from floor_app import create_app as floor

    return ProbedApp(floor(), probe)
