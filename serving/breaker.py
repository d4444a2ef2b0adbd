"""A circuit breaker per model version: a failing backend is answered 503 at once, then probed.

States (one :class:`CircuitBreaker` per version, shared by its instances; it lives on the event
loop, so it needs no lock):

* **closed**: every request is let through. Each batch the backend runs is one outcome. The
  breaker opens after ``breaker_failures`` consecutive failed batches, or when at least
  ``breaker_failure_rate`` of the batches of the last :data:`RATE_WINDOW_S` seconds failed (with
  at least :data:`RATE_MIN_BATCHES` of them, so a quiet version does not trip on two errors).
* **open**: every request is refused at once with :class:`BreakerOpen` (503 with Retry-After),
  whose message names the version, why it opened and when it will be tried again; requests
  already queued when it opens get the same answer instead of waiting for a backend that fails.
* **half-open**: once ``breaker_reset_ms`` has passed, exactly one request (the probe) is let
  through; the others are still refused. The probe's batch succeeding closes the breaker, failing
  re-opens it for another ``breaker_reset_ms``. A probe that never reaches the backend (it
  expired in the queue, its client left) hands the probe slot to the next request.

What is a failure: a batch that raised a server-side error (status >= 500: the model raised, a
remote backend was unreachable or timed out, the batch ran past ``execution_timeout_ms``). A
4xx from a remote backend (it rejected the request) means the backend answered: a success.
Requests refused before they ran (full queue, deadline passed in the queue) are not outcomes.
"""

from __future__ import annotations

import collections
import enum
import math
import time
from collections.abc import Callable

from registry.errors import ServiceUnavailable
from registry.serving_config import ServingConfig

RATE_WINDOW_S = 10.0
"""The window the failure rate is measured over."""
RATE_MIN_BATCHES = 20
"""Fewest batches in the window before the failure rate can open the breaker."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(ServiceUnavailable):
    """The version's circuit breaker is open: answered 503 at once, with Retry-After.

    Every transport adds the Retry-After header (trailing metadata on gRPC) from
    ``retry_after_s`` (see :meth:`registry.errors.RoostError.to_http`).
    """

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class CircuitBreaker:
    """closed -> open -> half-open -> closed (or open again); see the module docstring."""

    def __init__(
        self,
        model: str,
        version: int | str,
        failures: int,
        failure_rate: float,
        reset_s: float,
        *,
        on_change: Callable[[BreakerState, bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = f"model '{model}' version {version}"
        self.failures = failures
        self.failure_rate = failure_rate
        self.reset_s = reset_s
        self.on_change = on_change  # (new state, whether this change is a trip)
        self.clock = clock
        self.trips = 0
        self.consecutive = 0
        self.last_error = ""
        self.reason = ""
        self.window_batches = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self._refusal: tuple[tuple[int, BreakerState, int], BreakerOpen] | None = None
        # The rate window in one-second buckets: second -> [batches, failures].
        self._window: collections.OrderedDict[int, list[int]] = collections.OrderedDict()

    @classmethod
    def for_config(
        cls,
        model: str,
        version: int | str,
        config: ServingConfig,
        on_change: Callable[[BreakerState, bool], None] | None = None,
    ) -> CircuitBreaker | None:
        """The breaker the version's knobs ask for, or None (``breaker_failures: 0``)."""
        if config.breaker_failures <= 0:
            return None
        return cls(
            model,
            version,
            int(config.breaker_failures),
            float(config.breaker_failure_rate),
            config.breaker_reset_ms / 1000.0,
            on_change=on_change,
        )

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.clock() - self._opened_at >= self.reset_s:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is BreakerState.CLOSED

    def retry_in_s(self) -> float:
        """Seconds until the next probe may go through (0 when half-open or closed)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_s - self.clock())

    def describe(self) -> str | None:
        """A readiness reason while not closed; None when closed."""
        state = self.state
        if state is BreakerState.CLOSED:
            return None
        if state is BreakerState.OPEN:
            return (
                f"circuit breaker open ({self.reason}; last error: {self.last_error}); "
                f"next probe in {self.retry_in_s():.1f} s"
            )
        return f"circuit breaker half-open, probing ({self.reason}; last error: {self.last_error})"

    # -- requests ----------------------------------------------------------------------------

    def admit(self) -> bool:
        """Let a request through, or raise :class:`BreakerOpen`.

        Returns True when the request is the half-open probe (its outcome decides the state;
        if it never runs, call :meth:`probe_abandoned`).
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return False
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        raise self.rejection()

    def refusal(self) -> BreakerOpen | None:
        """What :meth:`admit` would raise now, without taking the probe slot; None when a
        request would be let through (closed, or half-open with no probe running). The HTTP
        edge asks this before it reads a request's body."""
        state = self.state
        if state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self._probing
        ):
            return None
        # Under overload this is asked for every request: the answer is built once per trip
        # and tenth of a second (its message shows the wait to 0.1 s). Never raised, so the
        # shared instance collects no tracebacks.
        key = (self.trips, state, int(self.retry_in_s() * 10))
        cached = self._refusal
        if cached is None or cached[0] != key:
            cached = self._refusal = (key, self.rejection())
        return cached[1]

    def rejection(self) -> BreakerOpen:
        """The error a request refused by the open breaker gets."""
        if self.state is BreakerState.HALF_OPEN:
            return BreakerOpen(
                f"{self.what} is unavailable: circuit breaker half-open, a probe request is "
                f"testing the backend now ({self.reason}; last error: {self.last_error}); "
                "retry in 1 s",
                retry_after_s=1,
            )
        wait = self.retry_in_s()
        return BreakerOpen(
            f"{self.what} is unavailable: circuit breaker open ({self.reason}; last error: "
            f"{self.last_error}); the backend will be tried again in {wait:.1f} s",
            retry_after_s=max(1, math.ceil(wait)),
        )

    def probe_abandoned(self) -> None:
        """The probe never reached the backend: the next request may probe instead."""
        self._probing = False

    # -- outcomes ----------------------------------------------------------------------------

    def record_success(self) -> None:
        self.consecutive = 0
        self._observe(False)
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False
            self._set(BreakerState.CLOSED)

    def record_failure(self, error: str) -> bool:
        """Count a failed batch; returns True when this failure opened the breaker."""
        self.last_error = error
        state = self.state
        if state is BreakerState.OPEN:
            return False  # a batch that started before the breaker opened
        if state is BreakerState.HALF_OPEN:
            self._probing = False
            self.reason = "the probe request failed"
            self._trip()
            return True
        self.consecutive += 1
        rate = self._observe(True)
        if self.consecutive >= self.failures:
            self.reason = f"{self.consecutive} consecutive failed batches"
        elif rate is not None:
            self.reason = (
                f"{rate:.0%} of {self.window_batches} batches failed in the last "
                f"{RATE_WINDOW_S:g} s"
            )
        else:
            return False
        self._trip()
        return True

    def _observe(self, failed: bool) -> float | None:
        """Add an outcome to the rate window; the failure rate when it is over the limit."""
        if not self.failure_rate:
            return None
        second = int(self.clock())
        window = self._window
        counts = window.get(second)
        if counts is None:
            counts = window[second] = [0, 0]
            while next(iter(window)) <= second - RATE_WINDOW_S:
                window.popitem(last=False)
        counts[0] += 1
        counts[1] += failed
        if not failed:
            return None
        batches = sum(c[0] for c in window.values())
        if batches < RATE_MIN_BATCHES:
            return None
        self.window_batches = batches
        rate = sum(c[1] for c in window.values()) / batches
        return rate if rate >= self.failure_rate else None

    def _trip(self) -> None:
        self.trips += 1
        self.consecutive = 0
        self._window.clear()
        self._opened_at = self.clock()
        self._set(BreakerState.OPEN, tripped=True)

    def _set(self, state: BreakerState, tripped: bool = False) -> None:
        changed = state is not self._state
        self._state = state
        if (changed or tripped) and self.on_change is not None:
            self.on_change(state, tripped)
