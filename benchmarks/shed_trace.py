"""Where a request's time goes inside the gateway under a burst (benchmark instrumentation).

:class:`TracingProtocol` is the gateway's HTTP protocol (serving/http_protocol.py) plus timing:
for every request the protocol passes on it records when its headers were read (its arrival),
when its ASGI task first ran, when its answer started and when it was written; a timer every
10 ms records how late the event loop ran it (the loop's turn length). At exit the percentiles
go to the JSON file named by ``ROOST_TRACE_OUT``. Used by ``shed_burst.py --trace``:

    PYTHONPATH=benchmarks .venv/bin/python -m uvicorn --factory \\
        serving.app:create_app_from_env --http shed_trace:TracingProtocol
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np

from serving.http_protocol import ANSWERED, EarlyRefusalProtocol

TICK_S = 0.01


class Trace:
    """The samples of one process."""

    def __init__(self) -> None:
        self.by_status: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
        self.refused_in_protocol = 0
        self.lag_s: list[float] = []
        self.started = False

    def tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = time.monotonic()
        self.lag_s.append(now - due)
        loop.call_at(now + TICK_S, self.tick, loop, now + TICK_S)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.started:
            self.started = True
            due = time.monotonic() + TICK_S
            loop.call_at(due, self.tick, loop, due)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float]) -> dict[str, float]:
            if not values:
                return {}
            a = np.asarray(values) * 1000
            return {
                "count": int(a.size),
                **{f"p{p}": round(float(np.percentile(a, p)), 2) for p in (50, 90, 99)},
                "max": round(float(a.max()), 2),
            }

        out: dict[str, Any] = {
            "refused_in_protocol": self.refused_in_protocol,
            "loop_lag_ms": pct(self.lag_s),
        }
        for status, samples in sorted(self.by_status.items()):
            to_task, to_answer, total = zip(*samples, strict=True)
            out[str(status)] = {
                "headers_to_task_ms": pct(list(to_task)),
                "task_to_answer_ms": pct(list(to_answer)),
                "headers_to_written_ms": pct(list(total)),
            }
        return out


TRACE = Trace()


def _dump() -> None:
    path = os.environ.get("ROOST_TRACE_OUT")
    if path:
        with open(path, "w") as out:
            json.dump(TRACE.summary(), out, indent=2)


atexit.register(_dump)


class _Timed:
    """The ASGI app, noting when each request's task first ran."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["state"]["trace_task"] = time.monotonic()
        await self.app(scope, receive, send)


class TracingProtocol(EarlyRefusalProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = _Timed(self.app)
        TRACE.start(self.loop)

    def on_headers_complete(self) -> None:
        arrived = time.monotonic()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is ANSWERED:
            TRACE.refused_in_protocol += 1
            return
        state = self.scope["state"]
        inner = cycle.send
        status = [0, 0.0]

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0], status[1] = message["status"], time.monotonic()
            await inner(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                now = time.monotonic()
                task = state.get("trace_task", arrived)
                TRACE.by_status[int(status[0])].append(
                    (task - arrived, status[1] - task, now - arrived)
                )

        cycle.send = send  # type: ignore[method-assign]
