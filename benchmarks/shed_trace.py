"""Where a request's time goes inside the gateway under a burst (benchmark instrumentation).

:class:`TracingProtocol` is the gateway's HTTP protocol (serving/http_protocol.py) plus timing:
for every request the protocol passes on it records when its headers were read (its arrival),
when its ASGI task first ran, when it reached the batcher's queue and when the batcher gave its
outputs back (``DynamicBatcher.submit`` is wrapped for this, in this probe only), when its
answer started and when it was written; a timer every 10 ms records how late the event loop
ran it (the loop's turn length). At exit the percentiles
go to the JSON file named by ``ROOST_TRACE_OUT``. Used by ``shed_burst.py --trace``:

    PYTHONPATH=benchmarks .venv/bin/python -m uvicorn --factory \\
        serving.app:create_app_from_env --http shed_trace:TracingProtocol
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np

from serving.batching import DynamicBatcher
from serving.http_protocol import ANSWERED, EarlyRefusalProtocol

STATE: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "trace_state", default=None
)
_submit = DynamicBatcher.submit


async def _timed_submit(self: DynamicBatcher, *args: Any, **kwargs: Any) -> Any:
    state = STATE.get()
    if state is not None:
        state["trace_submit"] = time.monotonic()
    try:
        return await _submit(self, *args, **kwargs)
    finally:
        if state is not None:
            state["trace_ran"] = time.monotonic()


DynamicBatcher.submit = _timed_submit  # type: ignore[method-assign]

TICK_S = 0.01


class Trace:
    """The samples of one process."""

    def __init__(self) -> None:
        self.by_status: dict[int, list[tuple[float, ...]]] = defaultdict(list)
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
        names = (
            "headers_to_task_ms", "task_to_queue_ms", "queue_to_outputs_ms",
            "outputs_to_answer_ms", "headers_to_written_ms",
        )
        for status, samples in sorted(self.by_status.items()):
            columns = list(zip(*samples, strict=True))
            out[str(status)] = {
                name: pct([v for v in column if v >= 0])
                for name, column in zip(names, columns, strict=True)
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
            STATE.set(scope["state"])
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
                queued = state.get("trace_submit")
                ran = state.get("trace_ran")
                TRACE.by_status[int(status[0])].append((
                    task - arrived,
                    -1.0 if queued is None else queued - task,
                    -1.0 if queued is None or ran is None else ran - queued,
                    -1.0 if ran is None else status[1] - ran,
                    now - arrived,
                ))

        cycle.send = send  # type: ignore[method-assign]
