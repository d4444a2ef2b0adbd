"""Shadow traffic: mirrored copies of requests, answered by shadow versions off the request path.

The primary's answer never waits for a shadow: ``offer`` only puts the request on a bounded
queue (full: the copy is dropped and counted). Every copy's fate is reported through
``on_outcome(model, version, outcome)``: ``mirrored`` (the shadow answered), ``failed`` or
``dropped`` (``roost_shadow_copies_total``); ``on_drop`` still reports drops alone. Workers
take copies from the queue, run them through the shadow version's own batcher and log the
outputs with ``shadow = true`` under the primary's request id, so the two can be compared in
SQL. A shadow that is slow, failing or missing changes nothing for callers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.tasks import cancel_and_wait
from serving.protocol.types import InferRequest

if TYPE_CHECKING:
    from serving.pipeline import RecordsRequest

log = logging.getLogger("roost.serving")


@dataclass(frozen=True, slots=True)
class ShadowOrigin:
    """Whose answer a shadow's log record stands beside: the primary's request (any kind of
    request: tensors, or text for an LLM version)."""

    model: str
    version: int
    request_id: str
    user_id: str | None
    protocol: str


@dataclass(frozen=True, slots=True)
class ShadowCopy:
    """A mirrored request: as the transport decoded it (``request``, adapted again for the
    shadow version) and as the primary saw it (``adapted``, rendered as ``inputs``; the shadow's
    record reuses that rendering when the shadow sees the same request)."""

    model: str
    version: int
    request_id: str
    request: InferRequest | RecordsRequest
    adapted: InferRequest
    inputs: str
    user_id: str | None
    protocol: str

    @property
    def origin(self) -> ShadowOrigin:
        return ShadowOrigin(self.model, self.version, self.request_id, self.user_id,
                            self.protocol)


ShadowRunner = Callable[[ShadowCopy], Awaitable[None]]


class ShadowMirror:
    """A bounded queue of mirrored requests and the workers that answer them."""

    def __init__(self, run: ShadowRunner, max_queue: int = 1000, workers: int = 4) -> None:
        self._run = run
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=max_queue)
        self._workers_n = workers
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0
        self.failed = 0
        self.done = 0
        self.on_drop: Callable[[str, int], None] | None = None
        self.on_outcome: Callable[[str, int, str], None] | None = None

    def _report(self, copy: ShadowCopy, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(copy.model, copy.version, outcome)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self._workers_n)]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def offer(self, copy: ShadowCopy) -> bool:
        """Queue a copy without waiting; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(copy.model, copy.version)
            self._report(copy, "dropped")
            return False
        return True

    async def _work(self) -> None:
        while True:
            copy = await self._queue.get()
            try:
                await self._run(copy)
                self.done += 1
                self._report(copy, "mirrored")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a shadow's failure is recorded, never propagated
                self.failed += 1
                self._report(copy, "failed")
                log.debug("shadow %s v%d failed: %s", copy.model, copy.version, exc)
            finally:
                self._queue.task_done()
