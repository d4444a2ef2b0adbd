"""Load shedding at the HTTP edge: a request that will be refused is refused before its body.

Under overload most requests are refused; if each refusal first reads, decodes, validates and
logs its body it costs about what an answer costs, so the gateway never sheds load, its event
loop turns grow with the number of connections, and even the requests it accepts miss their
deadlines. :class:`Admission` lets the edge (:mod:`serving.edge`) answer 503 from the path
alone, before ``receive()`` is called:

* **over the process's admission limit**: more than ``max_inflight_requests`` inference
  requests are in flight in this process (from admission to the last byte of the answer):
  :class:`Overloaded`;
* **the version would refuse**: its queue is full, its circuit breaker is open (or half-open
  with its probe running), every instance is set aside, or it is being unloaded
  (:meth:`serving.batching.DynamicBatcher.refusal`, which has no side effects).

Which version answers may depend on the body (a traffic policy's segment rules read request
parameters): for a model with a traffic policy the request is refused early only when every
loaded version of the model would refuse; otherwise it goes on and the version chosen decides.
Draining is refused earlier still, by the route table (:mod:`serving.edge`).

An early refusal is not written to the prediction log (nothing was decoded: there is no input
to record, and a durable write per refusal is what made refusing as dear as answering); it is
counted in ``roost_requests_total`` (status 503) and ``roost_rejected_requests_total`` with its
reason (``queue_full``, ``breaker_open``, ``instances_stuck``, ``unavailable``,
``overloaded``). The connection stays open: the HTTP server discards the unread body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from registry.errors import ServiceUnavailable
from serving.batching import InstancesStuck, QueueFull
from serving.breaker import BreakerOpen

if TYPE_CHECKING:
    from serving.metrics import GatewayMetrics
    from serving.repository import ModelRepository
    from serving.routing_table import LoadedVersion, RoutingTable

Rendered = tuple[int, list[tuple[bytes, bytes]], bytes]
RENDERED_KEPT = 256
"""Rendered refusals kept (the batchers and breakers share one error object while its message
holds, so under overload one rendering serves many refusals)."""

ARRIVED = "arrived"
"""``scope["state"]`` key of a request's arrival (``time.monotonic()``), set by the HTTP
protocol when it read the headers (:mod:`serving.http_protocol`); the deadline counts from it."""

RESERVED = "inflight_reserved"
"""``scope["state"]`` key set when the HTTP protocol admitted an infer request and took its
in-flight slot at once (requests read in one event-loop turn are admitted one by one, not all
against the count before their tasks ran); the edge takes the slot over, or the protocol gives
it back when the answer is written or the connection is lost."""

__all__ = ["ARRIVED", "RESERVED", "Admission", "Overloaded", "reason_of"]


class Overloaded(ServiceUnavailable):
    """This gateway process has ``max_inflight_requests`` inference requests in flight
    (503 with Retry-After)."""

    retry_after_s = 1.0


def reason_of(error: ServiceUnavailable) -> str:
    """The ``reason`` label of ``roost_rejected_requests_total`` for an early refusal."""
    if isinstance(error, BreakerOpen):
        return "breaker_open"
    if isinstance(error, InstancesStuck):
        return "instances_stuck"
    if isinstance(error, QueueFull):
        return "queue_full"
    if isinstance(error, Overloaded):
        return "overloaded"
    return "unavailable"


class Admission:
    """The per-process in-flight count and the early-refusal decision (see the module)."""

    __slots__ = (
        "_candidates", "_counters", "_overloaded", "_rendered", "_table", "inflight",
        "max_inflight",
    )

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight  # 0: no limit
        self.inflight = 0
        self._table: RoutingTable | None = None
        self._candidates: dict[str, tuple[LoadedVersion, ...]] = {}
        self._overloaded: Overloaded | None = None
        self._rendered: dict[int, tuple[ServiceUnavailable, Rendered]] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}


    def alone(self) -> bool:
        """Whether exactly one inference request is in flight in this process (the caller's).
        Exact only when slots are taken as requests are read (the HTTP protocol's
        ``RESERVED``): requests read in one loop turn are counted before any of them runs."""
        return self.inflight == 1

    def overloaded(self) -> Overloaded | None:
        if not self.max_inflight or self.inflight < self.max_inflight:
            return None
        if self._overloaded is None:
            self._overloaded = Overloaded(
                f"the gateway is overloaded: {self.max_inflight} inference requests in flight "
                f"in this process (max_inflight_requests: {self.max_inflight}); retry later"
            )
        return self._overloaded

    def render(self, error: ServiceUnavailable, close: bool) -> Rendered:
        """(status, raw headers, JSON body) of an early refusal, rendered once per error."""
        kept = self._rendered.get(id(error))
        if kept is None or kept[0] is not error:
            status, headers = error.to_http()
            raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            if len(self._rendered) >= RENDERED_KEPT:
                self._rendered.clear()
            kept = self._rendered[id(error)] = (
                error, (status, raw, orjson.dumps({"error": error.message}))
            )
        status, raw, body = kept[1]
        return (status, [*raw, (b"connection", b"close")], body) if close else kept[1]

    def count(
        self,
        metrics: GatewayMetrics,
        repository: ModelRepository,
        model: str,
        loaded: LoadedVersion | None,
        reason: str,
        seconds: float,
    ) -> None:
        """``roost_rejected_requests_total`` and ``roost_requests_total`` (503). A refusal of
        the whole process (``overloaded``) names the model only when it is served: the path is
        the client's, and every name it makes up would be a new metric series."""
        if loaded is not None:
            version = str(loaded.info.version)
        else:
            version = ""
            table = repository.table
            if model not in table.production and model not in table.routers:
                model = ""
        key = (model, version, reason)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.rejected.labels(model, version, reason)
        counter.inc()
        metrics.record_request(model, version, "v2-rest", 503, seconds)

    def refusal(
        self, repository: ModelRepository, model: str, version: str | None
    ) -> tuple[ServiceUnavailable, LoadedVersion | None] | None:
        """The 503 the request for ``model`` (``version``) would get, and the version that
        refused it, decided from the routing state alone; None: read the body and go on (the
        model is unknown, a version may accept it, or routing needs the body)."""
        over = self.overloaded()
        if over is not None:
            return over, None
        table = repository.table
        if version is not None:
            if not (version.isascii() and version.isdigit()) or len(version) > 18:
                return None  # the normal path answers 404 naming the version
            loaded = table.loaded.get((model, int(version)))
        elif model in table.routers:
            return self._every_candidate_refuses(table, model)
        else:
            number = table.production.get(model)
            loaded = None if number is None else table.loaded.get((model, number))
        if loaded is None:
            return None
        error = loaded.batcher.refusal()
        return None if error is None else (error, loaded)

    def _every_candidate_refuses(
        self, table: RoutingTable, model: str
    ) -> tuple[ServiceUnavailable, LoadedVersion] | None:
        """A routed model: refused only if every loaded version of it would refuse (the
        production version's reason is the one given)."""
        if table is not self._table:
            self._table, self._candidates = table, {}
        candidates = self._candidates.get(model)
        if candidates is None:
            production = table.production.get(model)
            candidates = self._candidates[model] = tuple(
                sorted(
                    (v for (m, _), v in table.loaded.items() if m == model),
                    key=lambda v: v.info.version != production,
                )
            )
        first: tuple[ServiceUnavailable, LoadedVersion] | None = None
        for loaded in candidates:
            error = loaded.batcher.refusal()
            if error is None:
                return None
            if first is None:
                first = (error, loaded)
        return first
