"""The engine: one worker thread stepping the model over every running sequence.

Each iteration of the worker (:meth:`LLMEngine._loop`):

1. under the lock, drop aborted sequences (their cache freed), then let the
   :class:`~serving.llm.scheduler.Scheduler` admit waiting ones within the step's budgets;
2. outside the lock, prefill each admitted prompt (its first token comes out of it), then run
   one batched decode step for every sequence that was already running;
3. sample each sequence's next token with its own generator, turn it into text (whole UTF-8
   characters, stop strings held back) and hand the event to the request's coroutine with
   ``loop.call_soon_threadsafe``; a sequence that hit eos, a stop string or ``max_tokens``
   leaves the batch in the same iteration.

So a request that arrives while others decode starts at the next iteration (continuous,
iteration-level batching); the event loop never runs the model. :class:`Generation` is the
request's side: an async iterator of :class:`TokenEvent` s whose ``cancel`` aborts the
sequence (the client went away).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from registry.errors import RoostError, ServiceUnavailable
from serving.llm.model import CausalLM, KVCache
from serving.llm.sampling import SamplingParams, sample
from serving.llm.scheduler import Scheduler, SchedulerLimits, Sequence
from serving.llm.text import IncrementalDetokenizer, StopMatcher, token_bytes_table

log = logging.getLogger("roost.serving.llm")


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New text of one sequence; the last event has ``finish_reason`` (or ``error``)."""

    text: str
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None = None  # stop | length | abort
    ttft_s: float | None = None
    error: RoostError | None = None


class EngineObserver(Protocol):
    """What the engine reports (serving/llm/metrics.py turns it into Prometheus figures)."""

    def occupancy(self, running: int, waiting: int, kv_used: int, kv_total: int) -> None: ...


Sink = Callable[[TokenEvent], None]
"""Where a sequence's events go; called on its event loop (or the engine's thread without one)."""


def _deliver_all(items: list[tuple[Sink, TokenEvent]]) -> None:
    for sink, event in items:
        sink(event)


class _SeqState:
    __slots__ = (
        "arrived", "cache", "detok", "last", "loop", "params", "rng", "sink", "stop", "ttft",
    )

    def __init__(
        self, params: SamplingParams, table: list[bytes], sink: Sink,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.loop = loop
        self.params = params
        self.rng = params.rng()
        self.detok = IncrementalDetokenizer(table)
        self.stop = StopMatcher(params.stop)
        self.sink = sink
        self.arrived = time.perf_counter()
        self.last = 0.0
        self.ttft: float | None = None
        self.cache: KVCache | None = None


class LLMEngine:
    """Iteration-level batching of one :class:`CausalLM` (see the module docstring)."""

    def __init__(
        self, model: CausalLM, limits: SchedulerLimits, observer: EngineObserver | None = None
    ) -> None:
        self.model = model
        self.scheduler = Scheduler(limits)
        self.observer = observer
        self._table = token_bytes_table(model.tokenizer)
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._closing = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self._outbox: list[tuple[_SeqState, TokenEvent]] = []

    # -- lifecycle (any thread) ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llm-engine", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new sequences, let running ones finish (up to ``timeout_s``), stop."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            while not self.scheduler.idle and time.monotonic() < deadline:
                self._cond.wait(0.05)
            for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                seq.aborted = True
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def load(self) -> int:
        """Running + waiting sequences (to pick the least busy instance)."""
        return len(self.scheduler.running) + len(self.scheduler.waiting)

    def submit(
        self, prompt: list[int], params: SamplingParams, sink: Sink,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Sequence:
        """Queue a sequence whose events go to ``sink`` (on ``loop``: one wake-up of each loop
        per engine step carries every event of that step); raises 400 (could never run) or
        503 (queue full, closing)."""
        seq = Sequence(next(self._ids), prompt, params.max_tokens)
        seq.state = _SeqState(params, self._table, sink, loop)
        with self._cond:
            if self._closing:
                raise ServiceUnavailable("the model version is being unloaded", retry_after_s=1)
            self.scheduler.add(seq)
            self._cond.notify()
        return seq

    def abort(self, seq: Sequence) -> None:
        """The client went away: the sequence leaves at the next step and frees its cache."""
        with self._cond:
            seq.aborted = True
            self._cond.notify()

    def warm_up(self, runs: int) -> None:
        """A short prefill and a few decode steps, ``runs`` times (blocking)."""
        prompt = self.model.encode("Hello")
        for _ in range(runs):
            cache = KVCache(self.model.config, len(prompt) + 4)
            logits = self.model.prefill(prompt, cache)
            for _ in range(3):
                logits = self.model.decode([int(np.argmax(logits))], [cache])[0]

    # -- the worker thread --------------------------------------------------------------------

    def _loop(self) -> None:
        scheduler = self.scheduler
        while True:
            with self._cond:
                while scheduler.idle and not self._stopped:
                    self._cond.wait()
                scheduler.drop_aborted(self._aborted)
                if self._stopped and scheduler.idle:
                    return
                admitted = scheduler.schedule()
                running = [s for s in scheduler.running if s not in admitted]
                self._report()
            if not admitted and not running:
                continue
            try:
                self._step(admitted, running)
            except Exception as exc:  # the model failed: every sequence in the step fails
                log.exception("LLM engine step failed")
                error = RoostError(f"the model failed: {exc}")
                for seq in [*admitted, *running]:
                    self._finish(seq, "", None, error)
            self._flush()
            with self._cond:
                self._report()

    def _step(self, admitted: list[Sequence], running: list[Sequence]) -> None:
        model = self.model
        for seq in admitted:
            state: _SeqState = seq.state
            state.cache = KVCache(model.config, seq.reserve)
            logits = model.prefill(seq.prompt, state.cache)
            self._accept(seq, logits)
        if admitted:
            self._flush()  # first tokens go out before the decode step
        decoding = [s for s in running if not s.aborted]
        if decoding:
            caches = [s.state.cache for s in decoding]
            logits = model.decode([s.output[-1] for s in decoding], caches)
            for seq, row in zip(decoding, logits, strict=True):
                self._accept(seq, row)
        self.steps += 1

    def _accept(self, seq: Sequence, logits: np.ndarray) -> None:
        state: _SeqState = seq.state
        params = state.params
        token = sample(logits, params, state.rng)
        now = time.perf_counter()
        if state.ttft is None:
            state.ttft = now - state.arrived
        state.last = now
        seq.output.append(token)
        if token == self.model.config.eos_token_id and not params.ignore_eos:
            self._finish(seq, state.stop.feed(state.detok.flush()) + state.stop.flush(), "stop")
            return
        text = state.stop.feed(state.detok.add(token))
        if state.stop.stopped:
            self._finish(seq, text, "stop")
        elif len(seq.output) >= seq.max_tokens:
            tail = state.stop.feed(state.detok.flush())
            self._finish(seq, text + tail + ("" if state.stop.stopped else state.stop.flush()),
                         "stop" if state.stop.stopped else "length")
        elif text:
            self._outbox.append((state, TokenEvent(text, len(seq.output), len(seq.prompt))))

    def _finish(
        self, seq: Sequence, text: str, reason: str | None, error: RoostError | None = None
    ) -> None:
        state: _SeqState = seq.state
        with self._cond:
            if seq in self.scheduler.running:
                self.scheduler.finish(seq)
        state.cache = None
        if not seq.aborted:
            self._outbox.append((state, TokenEvent(
                text, len(seq.output), len(seq.prompt), reason, state.ttft, error
            )))

    def _flush(self) -> None:
        """Hand the step's events over: one ``call_soon_threadsafe`` per event loop."""
        outbox, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Sink, TokenEvent]]] = {}
        for state, event in outbox:
            if state.loop is None:
                state.sink(event)
            else:
                by_loop.setdefault(state.loop, []).append((state.sink, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the loop was closed: nobody is listening any more
                pass

    def _aborted(self, seq: Sequence) -> None:
        seq.state.cache = None

    def _report(self) -> None:
        if self.observer is not None:
            s = self.scheduler
            self.observer.occupancy(
                len(s.running), len(s.waiting), s.reserved, s.limits.kv_cache_tokens
            )


class Generation:
    """One request's stream of :class:`TokenEvent` s (an async iterator on the event loop)."""

    def __init__(self, engine: LLMEngine, prompt: list[int], params: SamplingParams) -> None:
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        put = self._queue.put_nowait
        self.engine = engine
        self.prompt_tokens = len(prompt)
        self.done = False

        self.seq = engine.submit(prompt, params, put, loop)

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> TokenEvent:
        if self.done:
            raise StopAsyncIteration
        event = await self._queue.get()
        queue = self._queue
        while not queue.empty() and event.finish_reason is None and event.error is None:
            # the client is behind the engine: hand on everything that is ready as one event
            more = queue.get_nowait()
            event = TokenEvent(event.text + more.text, more.completion_tokens,
                               more.prompt_tokens, more.finish_reason, more.ttft_s, more.error)
        if event.error is not None:
            self.done = True
            raise event.error
        if event.finish_reason is not None:
            self.done = True
        return event

    def cancel(self) -> None:
        """Abort the sequence unless it has finished (idempotent)."""
        if not self.done:
            self.done = True
            self.engine.abort(self.seq)
