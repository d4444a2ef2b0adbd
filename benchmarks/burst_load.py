"""Open-loop HTTP load generator for the burst test: a fixed arrival rate, every answer recorded.

    .venv/bin/python benchmarks/burst_load.py --url http://127.0.0.1:8000/v2/models/m/infer \\
        --body benchmarks/body.json --rate 50000 --duration 10 --connections 1000

Requests are *scheduled* at ``--rate`` per second for ``--duration`` seconds, whatever the server
does (open loop). Each one goes out on an idle keep-alive connection; when none is idle a new
one is opened, up to ``--connections``; past that the request waits in the client's FIFO for the
next connection to come free, like a pooled HTTP client (no pipelining). Latency is measured
both from the scheduled time (so time spent waiting for a connection counts: no coordinated
omission) and from the moment the request was written to its socket (what the server and the
network took).

When the burst window ends no new requests are scheduled, and requests still waiting in the
client's FIFO are dropped without being sent (``not_sent``): they never reached the server.
Every request that was sent is then waited for up to ``--drain`` seconds; one that gets no
answer by then counts as ``no_answer``, one whose connection broke counts as a socket error.

Prints one JSON object on stdout: counts (scheduled, sent, not_sent, answered by HTTP status,
socket errors, no_answer), latency percentiles per status (ms, from send and from schedule), the
largest client backlog and number of connections, per-second answers by status, and the
client's own CPU time. Raw asyncio protocol, no HTTP library: it parses just the status line and
Content-Length of each answer, so it can keep up with a fast server on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.I)


def mark(name: str) -> None:
    """Tell the driver (run.py) where the burst and the drain start and end."""
    print(f"mark: {name}", file=sys.stderr, flush=True)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {}
    ordered = np.sort(np.asarray(samples_ns, dtype=np.int64)) / 1e6
    out = {f"p{p:g}": float(np.percentile(ordered, p)) for p in (50, 90, 99, 99.9)}
    out["max"] = float(ordered[-1])
    out["count"] = int(ordered.size)
    return out


class Client:
    """The connection pool, the client-side FIFO and the tallies."""

    def __init__(self, host: str, port: int, request: bytes, connections: int) -> None:
        self.host, self.port, self.request = host, port, request
        self.max_connections = connections
        self.idle: collections.deque[Connection] = collections.deque()
        self.backlog: collections.deque[int] = collections.deque()  # scheduled times, ns
        self.open = 0
        self.opening = 0
        self.max_open = 0
        self.max_backlog = 0
        self.sent = 0
        self.outstanding = 0
        self.connect_failures = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        self.socket_errors: collections.Counter[str] = collections.Counter()
        self.from_send: dict[int, list[int]] = collections.defaultdict(list)
        self.from_schedule: dict[int, list[int]] = collections.defaultdict(list)
        self.per_second: dict[int, collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        self.t0 = 0
        self.trace: list[tuple[int, int, int, int]] | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, scheduled: int) -> None:
        if self.idle:
            self.idle.pop().send(scheduled)
            return
        self.backlog.append(scheduled)
        self.max_backlog = max(self.max_backlog, len(self.backlog))
        if self.open + self.opening < self.max_connections:
            self.opening += 1
            task = asyncio.create_task(self._connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError as exc:
            self.connect_failures += 1
            self.socket_errors[f"connect: {type(exc).__name__}"] += 1
        finally:
            self.opening -= 1

    def ready(self, conn: Connection) -> None:
        """``conn`` is open and has nothing in flight: give it the oldest waiting request."""
        if self.backlog:
            conn.send(self.backlog.popleft())
        else:
            self.idle.append(conn)

    def answered(self, status: int, scheduled: int, sent: int) -> None:
        now = time.perf_counter_ns()
        self.outstanding -= 1
        self.statuses[status] += 1
        self.from_send[status].append(now - sent)
        self.from_schedule[status].append(now - scheduled)
        self.per_second[(now - self.t0) // 1_000_000_000][status] += 1
        if self.trace is not None:
            self.trace.append((scheduled - self.t0, sent - self.t0, now - self.t0, status))

    def broke(self, conn: Connection, kind: str, in_flight: bool) -> None:
        self.open -= 1
        if in_flight:
            self.outstanding -= 1
            self.socket_errors[kind] += 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass


class Connection(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_flight: tuple[int, int] | None = None  # (scheduled, sent) ns

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        client = self.client
        client.open += 1
        client.max_open = max(client.max_open, client.open)
        client.ready(self)

    def send(self, scheduled: int) -> None:
        assert self.transport is not None and self.in_flight is None
        client = self.client
        client.sent += 1
        client.outstanding += 1
        self.in_flight = (scheduled, time.perf_counter_ns())
        self.transport.write(client.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end])
            match = _CONTENT_LENGTH.search(head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(buffer) < total:
                return
            del buffer[:total]
            if self.in_flight is None:
                self.client.socket_errors["unexpected response"] += 1
                continue
            scheduled, sent = self.in_flight
            self.in_flight = None
            self.client.answered(int(head[9:12]), scheduled, sent)
            if _CLOSE.search(head):
                assert self.transport is not None
                self.transport.close()
                return
            self.client.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        kind = type(exc).__name__ if exc else "closed by server"
        in_flight = self.in_flight is not None
        self.in_flight = None
        self.client.broke(self, kind, in_flight)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = Path(args.body).read_bytes().strip()
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    if args.tag:
        head += f"roost-user: {args.tag}\r\n"
    client = Client(host, port, head.encode() + b"\r\n" + body, args.connections)
    if args.trace:
        client.trace = []

    # Open the pool first (not part of the burst), so the burst measures requests, not SYNs.
    for _ in range(min(args.preopen, args.connections)):
        client.opening += 1
        await client._connect()
    while client.open < min(args.preopen, args.connections) and client.connect_failures == 0:
        await asyncio.sleep(0.01)

    total = int(args.rate * args.duration)
    interval_ns = 1e9 / args.rate
    mark("burst")
    cpu0 = _cpu_s()
    clock = time.perf_counter_ns
    client.t0 = t0 = clock()
    scheduled = 0
    max_lag_ns = 0
    while scheduled < total:
        now = clock()
        due = min(total, int((now - t0) / interval_ns) + 1)
        if due > scheduled:
            max_lag_ns = max(max_lag_ns, now - (t0 + int(scheduled * interval_ns)))
        while scheduled < due:
            client.submit(t0 + int(scheduled * interval_ns))
            scheduled += 1
        await asyncio.sleep(0.0005)
    burst_end = clock()
    mark("drain")
    not_sent = len(client.backlog)
    client.backlog.clear()
    drain_deadline = time.monotonic() + args.drain
    while client.outstanding > 0 and time.monotonic() < drain_deadline:
        await asyncio.sleep(0.01)
    drained = clock()
    mark("done")
    no_answer = client.outstanding
    cpu = _cpu_s() - cpu0
    for conn in list(client.idle):
        if conn.transport is not None:
            conn.transport.close()

    if args.trace and client.trace:
        np.save(args.trace, np.asarray(client.trace, dtype=np.int64))
    burst_s = (burst_end - t0) / 1e9
    answered = sum(client.statuses.values())
    return {
        "offered_rps": args.rate,
        "duration_s": args.duration,
        "burst_s": burst_s,
        "drain_s": (drained - burst_end) / 1e9,
        "scheduled": total,
        "sent": client.sent,
        "not_sent": not_sent,
        "answered": answered,
        "statuses": {str(k): v for k, v in sorted(client.statuses.items())},
        "socket_errors": dict(client.socket_errors),
        "no_answer": no_answer,
        "sent_rps": client.sent / burst_s,
        "answered_rps": answered / ((drained - t0) / 1e9),
        "max_backlog": client.max_backlog,
        "max_connections_open": client.max_open,
        "connect_failures": client.connect_failures,
        "max_schedule_lag_ms": max_lag_ns / 1e6,
        "latency_from_send_ms": {str(k): percentiles(v) for k, v in client.from_send.items()},
        "latency_from_schedule_ms": {
            str(k): percentiles(v) for k, v in client.from_schedule.items()
        },
        "per_second": {
            str(second): {str(k): v for k, v in sorted(counts.items())}
            for second, counts in sorted(client.per_second.items())
        },
        "client_cpu_s": cpu,
        "client_cpu_cores": cpu / ((drained - t0) / 1e9),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://host:port/path (POST)")
    parser.add_argument("--body", required=True, help="request body file (JSON)")
    parser.add_argument("--rate", type=float, required=True, help="scheduled requests per s")
    parser.add_argument("--duration", type=float, default=10.0, help="burst seconds")
    parser.add_argument("--connections", type=int, default=1000, help="most open connections")
    parser.add_argument("--preopen", type=int, default=1000, help="connections opened first")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for answers")
    parser.add_argument("--tag", default="", help="roost-user header (finds the log rows)")
    parser.add_argument(
        "--trace", default="", help=".npy file for (scheduled, sent, answered ns, status) rows"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
