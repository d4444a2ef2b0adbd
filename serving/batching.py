"""Dynamic batching and bounded request queues, one :class:`DynamicBatcher` per model version.

A request's rows wait in a bounded queue; each execution instance takes the oldest request and
keeps adding queued requests while the batch stays under ``max_batch_size`` rows, waiting at most
``max_queue_delay_ms`` for more (and stopping early at a ``preferred_batch_sizes`` size). The
merged batch runs on the instance's own thread (an async backend is awaited), the outputs are
split back by row counts in order, and a failing batch fails every request in it with the same
error.

A full queue refuses at once (503 with Retry-After); a request whose deadline passes while it
is queued is answered 504 and never reaches the model. The deadline counts from the request's
arrival (``submit(arrived=...)``: when the transport started on it), so reading and decoding
its body count against it: a request already past its deadline when it reaches the queue is
answered 504 at once. :meth:`DynamicBatcher.refusal` says, without queueing anything, whether
``submit`` would refuse now: the HTTP edge asks it before it reads a request's body (see
:mod:`serving.shedding`). With ``max_batch_size: 0`` (a model with
no batch dimension) requests still pass the queue and deadlines but run one at a time.

Fault isolation. Each batch's outcome goes to the version's circuit breaker (see
:mod:`serving.breaker`), which refuses requests at once while the backend keeps failing. A
batch may run at most ``execution_timeout_ms``; past it, its requests are answered 504
(:class:`ExecutionTimeout`) and the breaker counts a failure. A remote (async) backend's call is
cancelled. A thread-run backend (ONNX Runtime) cannot be interrupted: its instance is *set
aside* -- its consumer takes no more batches, the other instances keep serving the queue --
until the stuck call returns, and then rejoins (a call that never returns keeps one thread and
the batch's memory for the life of the process). While every instance is set aside, requests
are refused with 503 at once instead of waiting out their deadline. A model fast enough to run
inline on the event loop (typical batch under ``INLINE_BELOW_S``) has no timeout: a call that
hung there would stall the whole process, which the liveness probe then reports.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from registry.errors import DeadlineExceeded, InvalidRequest, RoostError, ServiceUnavailable
from registry.serving_config import ServingConfig

if TYPE_CHECKING:
    from serving.breaker import CircuitBreaker

log = logging.getLogger("roost.serving")

Tensors = dict[str, np.ndarray]
SyncRunFn = Callable[[Tensors], Tensors]
AsyncRunFn = Callable[[Tensors], Awaitable[Tensors]]
RunFn = SyncRunFn | AsyncRunFn
INLINE_BELOW_S = 0.0003  # typical batch time under which a sync model runs on the event loop


@dataclass(eq=False)
class _Pending:
    feeds: Tensors
    rows: int
    deadline: float
    enqueued: float
    arrived: float
    future: asyncio.Future[Tensors]
    signature: tuple[Any, ...] = field(default=())
    probe: bool = False  # the half-open breaker's probe request


class QueueFull(ServiceUnavailable):
    """The version's queue is at ``max_queue_size`` (503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class InstancesStuck(QueueFull):
    """Every instance of the version is set aside in a timed-out batch (503, Retry-After)."""


class ExecutionTimeout(DeadlineExceeded):
    """A batch ran past the version's ``execution_timeout_ms`` (504; a breaker failure)."""


@dataclass
class BatcherStats:
    """Counters the metrics exporter reads."""

    batches: int = 0
    rows: int = 0
    rejected_full: int = 0
    expired: int = 0
    timeouts: int = 0
    last_batch_rows: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


def _timed_run(runner: SyncRunFn, feeds: Tensors) -> tuple[Tensors, float]:
    """``runner(feeds)`` and how long the call itself took (s)."""
    started = time.perf_counter()
    outputs = runner(feeds)
    return outputs, time.perf_counter() - started


class DynamicBatcher:
    """Queues requests for one version and runs them in merged batches on its instances."""

    def __init__(
        self,
        name: str,
        runners: Sequence[RunFn],
        config: ServingConfig,
        *,
        observe: Callable[[int, float, float, int], None] | None = None,
        breaker: CircuitBreaker | None = None,
        on_timeout: Callable[[int, bool], None] | None = None,
    ) -> None:
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        self.name = name
        self.config = config
        self.stats = BatcherStats()
        self._runners = list(runners)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._observe = observe  # (batch rows, queue wait s, inference s, queue depth) -> None
        self.breaker = breaker
        self._on_timeout = on_timeout  # (instances set aside now, whether a batch timed out)
        self.set_aside: set[int] = set()  # instances whose timed-out call has not returned
        self._closed = False
        self._full: QueueFull | None = None  # the early refusal of a full queue (one message)
        # Fast models (a few microseconds) run inline on the event loop when there is one
        # instance; anything slower, or several instances, runs on the instances' threads.
        self._inline = len(self._runners) == 1
        self._typical_s = float("inf")
        self._consumer_idle = False  # the (one) consumer waits for work: nothing is running
        self._burst = False  # a request was submitted in this event-loop iteration

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        for i, runner in enumerate(self._runners):
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"roost-{self.name}-{i}")
            self._executors.append(executor)
            self._tasks.append(asyncio.create_task(self._consume(i, runner, executor)))

    async def stop(self) -> None:
        """Stop taking requests, fail what is still queued, and end the instances."""
        self._closed = True
        while self._queue:
            pending = self._queue.popleft()
            _fail(pending, ServiceUnavailable(f"{self.name} is being unloaded"))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for executor in self._executors:
            executor.shutdown(wait=False)

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def instances(self) -> int:
        return len(self._runners)

    def health(self) -> list[str]:
        """Why the version may not answer (readiness reasons): its breaker, stuck instances."""
        reasons = []
        if self.breaker is not None:
            described = self.breaker.describe()
            if described:
                reasons.append(described)
        if self.set_aside:
            reasons.append(
                f"{len(self.set_aside)} of {len(self._runners)} instance(s) set aside: a batch "
                f"ran past execution_timeout_ms ({self.config.execution_timeout_ms:g} ms) and "
                "has not returned"
            )
        return reasons

    # -- submit ------------------------------------------------------------------------------

    def refusal(self) -> ServiceUnavailable | None:
        """Why :meth:`submit` would refuse a request now, without queueing anything (and
        without taking the half-open breaker's probe slot); None when it would queue it.
        The error is shared between calls (it is answered, never raised)."""
        if self._closed or self._wakeup is None:
            return ServiceUnavailable(f"{self.name} is not accepting requests")
        if len(self._queue) >= self.config.max_queue_size:
            if self._full is None:
                self._full = self._queue_full()
            return self._full
        if len(self.set_aside) == len(self._runners):
            if self.breaker is not None and self.breaker.retry_in_s() > 0:
                return self.breaker.refusal()
            return self._all_set_aside()
        return self.breaker.refusal() if self.breaker is not None else None

    def _queue_full(self) -> QueueFull:
        return QueueFull(
            f"{self.name}: queue is full ({self.config.max_queue_size} requests waiting); "
            "retry later",
            retry_after_s=1,
        )

    async def submit(
        self, feeds: Tensors, timeout_ms: float | None = None, arrived: float | None = None
    ) -> Tensors:
        """Queue one request's tensors; resolves to its share of the batch's outputs.

        The deadline is ``arrived`` (``time.monotonic()`` when the transport started on the
        request; default: now) plus ``timeout_ms`` (default: ``queue_timeout_ms``); a request
        already past it is answered 504 at once, unqueued.
        """
        if self._closed or self._wakeup is None:
            raise ServiceUnavailable(f"{self.name} is not accepting requests")
        config = self.config
        if len(self._queue) >= config.max_queue_size:
            self.stats.rejected_full += 1
            raise self._queue_full()
        rows = _rows(feeds) if config.max_batch_size else 1
        if config.max_batch_size and rows > config.max_batch_size:
            raise InvalidRequest(
                f"batch of {rows} rows exceeds max_batch_size {config.max_batch_size}"
            )
        timeout = config.queue_timeout_ms if timeout_ms is None else timeout_ms
        if timeout <= 0:
            raise InvalidRequest(f"timeout: expected > 0 ms, got {timeout:g}")
        timeout = min(timeout, config.max_queue_timeout_ms)
        if len(self.set_aside) == len(self._runners):
            if self.breaker is not None and self.breaker.retry_in_s() > 0:
                raise self.breaker.rejection()  # open: its message says when it retries
            raise self._all_set_aside()
        now = time.monotonic()
        if arrived is None or arrived > now:
            arrived = now
        deadline = arrived + timeout / 1000.0
        if deadline <= now:
            self.stats.expired += 1
            raise DeadlineExceeded(
                f"{self.name}: request was {(now - arrived) * 1000:.0f} ms old when it reached "
                f"the queue (reading and decoding it took that long), past its deadline of "
                f"{timeout:g} ms; it was not run"
            )
        probe = self.breaker.admit() if self.breaker is not None else False
        loop = asyncio.get_running_loop()
        if not self._burst:  # the first request of this event-loop iteration
            self._burst = True
            loop.call_soon(self._end_burst)
            if self._consumer_idle and not self._queue and self._runs_here():
                return self._run_here(feeds, rows)
        future: asyncio.Future[Tensors] = loop.create_future()
        pending = _Pending(feeds, rows, deadline, now, arrived, future, _compat(feeds), probe)
        self._queue.append(pending)
        self._wakeup.set()
        return await future

    # -- the instances -----------------------------------------------------------------------

    async def _consume(self, index: int, runner: RunFn, executor: ThreadPoolExecutor) -> None:
        assert self._wakeup is not None
        timeout_s = self.config.execution_timeout_ms / 1000.0
        stuck: asyncio.Future[Any] | None = None  # a timed-out call still running on the thread
        stuck_since = 0.0
        while True:
            if stuck is not None:
                await self._set_aside(index, stuck, stuck_since)
                stuck = None
            while not self._queue:
                self._wakeup.clear()
                self._consumer_idle = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._consumer_idle = False
            batch = await self._collect()
            if not batch:
                continue
            started = time.monotonic()
            try:
                merged = _merge(batch) if len(batch) > 1 else batch[0].feeds
                if inspect.iscoroutinefunction(runner):  # a remote backend (Triton): no thread
                    timer = asyncio.timeout(timeout_s)
                    try:
                        async with timer:
                            outputs = await runner(merged)
                    except TimeoutError:
                        if not timer.expired():
                            raise
                        raise self._timed_out(started, None) from None
                elif self._inline and self._typical_s < INLINE_BELOW_S:
                    # A thread round trip costs more than a model this fast; run it right here.
                    outputs, took_s = _timed_run(cast(SyncRunFn, runner), merged)
                    self._learn(took_s)
                else:
                    call = executor.submit(_timed_run, cast(SyncRunFn, runner), merged)
                    timer = asyncio.timeout(timeout_s)
                    try:
                        async with timer:
                            outputs, took_s = await asyncio.wrap_future(call)
                            self._learn(took_s)
                    except TimeoutError:
                        if not timer.expired():
                            raise
                        # Cancelling the wrapper cannot stop a running call: wait for it apart.
                        stuck, stuck_since = asyncio.wrap_future(call), started
                        raise self._timed_out(started, index) from None
                parts = _split(outputs, [p.rows for p in batch]) if len(batch) > 1 else [outputs]
            except asyncio.CancelledError:
                for pending in batch:
                    _fail(pending, ServiceUnavailable(f"{self.name} was unloaded"))
                raise
            except RoostError as exc:
                for pending in batch:
                    _fail(pending, exc)
                self._outcome(exc)
                continue
            except Exception as exc:  # the model failed: every waiter gets the same error
                error = RoostError(f"{self.name}: inference failed: {exc}")
                for pending in batch:
                    _fail(pending, error)
                self._outcome(error)
                continue
            finally:
                self._record(batch, started)
            self._outcome(None)
            for pending, part in zip(batch, parts, strict=True):
                if not pending.future.done():
                    pending.future.set_result(part)

    def _timed_out(self, started: float, index: int | None) -> ExecutionTimeout:
        self.stats.timeouts += 1
        took = (time.monotonic() - started) * 1000
        where = (
            "the call was cancelled"
            if index is None
            else f"instance {index} is set aside until its call returns"
        )
        return ExecutionTimeout(
            f"{self.name}: the batch did not finish within execution_timeout_ms "
            f"({self.config.execution_timeout_ms:g} ms; ran {took:.0f} ms); {where}"
        )

    def _outcome(self, error: RoostError | None) -> None:
        """Tell the breaker how a batch went; a trip fails the queue at once."""
        breaker = self.breaker
        if breaker is None:
            if isinstance(error, ExecutionTimeout) and self._on_timeout is not None:
                self._on_timeout(len(self.set_aside), True)
            return
        if error is None or error.status_code < 500:  # the backend answered
            breaker.record_success()
        elif breaker.record_failure(error.message):
            log.error("%s: circuit breaker opened: %s", self.name, breaker.describe())
            self._fail_queued(breaker.rejection())
        if isinstance(error, ExecutionTimeout) and self._on_timeout is not None:
            self._on_timeout(len(self.set_aside), True)

    async def _set_aside(self, index: int, call: asyncio.Future[Any], started: float) -> None:
        """Take no batches on this instance until its timed-out call returns."""
        self.set_aside.add(index)
        log.error(
            "%s: instance %d is stuck in a batch past execution_timeout_ms; it takes no batches "
            "until the call returns (%d of %d instances set aside)",
            self.name, index, len(self.set_aside), len(self._runners),
        )
        if self._on_timeout is not None:
            self._on_timeout(len(self.set_aside), False)
        if len(self.set_aside) == len(self._runners):
            self._fail_queued(self._all_set_aside())
        try:
            await asyncio.wait([call])
        finally:
            self.set_aside.discard(index)
            if self._on_timeout is not None:
                self._on_timeout(len(self.set_aside), False)
        log.warning(
            "%s: instance %d returned after %.1f s and takes batches again",
            self.name, index, time.monotonic() - started,
        )

    def _all_set_aside(self) -> InstancesStuck:
        return InstancesStuck(
            f"{self.name}: every instance ({len(self._runners)}) is stuck in a batch that ran "
            f"past execution_timeout_ms ({self.config.execution_timeout_ms:g} ms); retry later",
            retry_after_s=1,
        )

    def _fail_queued(self, error: RoostError) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if pending.probe and self.breaker is not None:
                self.breaker.probe_abandoned()
            _fail(pending, error)

    async def _collect(self) -> list[_Pending]:
        """Take the oldest live request plus whatever fits behind it (within the delay)."""
        config = self.config
        batch: list[_Pending] = []
        rows = 0
        limit = config.max_batch_size or 1
        wait_until = time.monotonic() + config.max_queue_delay_ms / 1000.0
        while True:
            now = time.monotonic()
            while self._queue:
                head = self._queue[0]
                if head.future.done():  # the client went away
                    self._queue.popleft()
                    self._abandon(head)
                    continue
                if head.deadline <= now:
                    self._queue.popleft()
                    self._abandon(head)
                    self.stats.expired += 1
                    _fail(
                        head,
                        DeadlineExceeded(
                            f"{self.name}: request waited "
                            f"{(now - head.enqueued) * 1000:.0f} ms in the queue "
                            f"({(now - head.arrived) * 1000:.0f} ms since it arrived), past "
                            "its deadline; it was not run"
                        ),
                    )
                    continue
                if batch and (rows + head.rows > limit or head.signature != batch[0].signature):
                    return batch
                self._queue.popleft()
                batch.append(head)
                rows += head.rows
                if rows >= limit or not config.max_batch_size:
                    return batch
            if not batch:
                return batch
            if rows in config.preferred_batch_sizes:
                return batch
            remaining = wait_until - time.monotonic()
            if remaining <= 0:
                return batch
            assert self._wakeup is not None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                pass

    def _abandon(self, pending: _Pending) -> None:
        if pending.probe and self.breaker is not None:
            self.breaker.probe_abandoned()

    def _learn(self, took_s: float) -> None:
        """Track the model's own time per batch (measured on the thread that ran it: a thread
        round trip under load costs more than a small model, and counting it would keep a
        fast model off the event loop for good)."""
        self._typical_s = took_s if self._typical_s == float("inf") else (
            0.9 * self._typical_s + 0.1 * took_s
        )

    def _end_burst(self) -> None:
        self._burst = False

    def _runs_here(self) -> bool:
        """Whether a request that is the first of its event-loop iteration, finds the queue
        empty and the consumer idle runs in its own task: a fast model (typical batch under
        ``INLINE_BELOW_S``) on one synchronous instance, and no batching delay asked for. It
        saves the hand-off to the consumer task and back (two event-loop iterations and a
        future) for a lone request (one in flight); requests arriving together (the rest of the
        iteration) still queue and are merged into one batch."""
        return (
            self._inline
            and self._typical_s < INLINE_BELOW_S
            and not self.config.max_queue_delay_ms
            and not inspect.iscoroutinefunction(self._runners[0])
        )

    def _run_here(self, feeds: Tensors, rows: int) -> Tensors:
        """One request's batch, run in the caller's task (see :meth:`_runs_here`)."""
        started = time.monotonic()
        try:
            outputs, took_s = _timed_run(cast(SyncRunFn, self._runners[0]), feeds)
        except RoostError as exc:
            self._count(rows, started, 0.0)
            self._outcome(exc)
            raise
        except Exception as exc:  # the model failed, as in a queued batch
            error = RoostError(f"{self.name}: inference failed: {exc}")
            self._count(rows, started, 0.0)
            self._outcome(error)
            raise error from None
        self._learn(took_s)
        self._count(rows, started, 0.0)
        self._outcome(None)
        return outputs

    def _record(self, batch: list[_Pending], started: float) -> None:
        self._count(sum(p.rows for p in batch), started,
                    max(started - p.enqueued for p in batch))

    def _count(self, rows: int, started: float, waited: float) -> None:
        took = time.monotonic() - started
        stats = self.stats
        stats.batches += 1
        stats.rows += rows
        stats.last_batch_rows = rows
        stats.batch_sizes[rows] += 1
        if self._observe is not None:
            self._observe(rows, waited, took, len(self._queue))


def _fail(pending: _Pending, error: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)


def _rows(feeds: Tensors) -> int:
    counts = {a.shape[0] if a.ndim else 1 for a in feeds.values()}
    if len(counts) != 1:
        raise InvalidRequest(
            "inputs disagree on the batch dimension: "
            + ", ".join(f"{n}={a.shape[0] if a.ndim else 1}" for n, a in feeds.items())
        )
    return counts.pop()


def _compat(feeds: Tensors) -> tuple[Any, ...]:
    """Requests batch together only when every input agrees on dtype and non-batch dims."""
    return tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(feeds.items()))


def _merge(batch: list[_Pending]) -> Tensors:
    names = batch[0].feeds.keys()
    return {n: np.concatenate([p.feeds[n] for p in batch], axis=0) for n in names}


def _split(outputs: Tensors, rows: list[int]) -> list[Tensors]:
    total = sum(rows)
    bounds = np.cumsum(rows)[:-1]
    parts: list[Tensors] = [{} for _ in rows]
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise RoostError(
                f"output '{name}' has shape {list(array.shape)}, not {total} rows: the model "
                "cannot be batched; set max_batch_size: 0"
            )
        for part, piece in zip(parts, np.split(array, bounds), strict=True):
            part[name] = piece
    return parts
