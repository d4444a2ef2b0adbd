"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol that refuses early itself.

:mod:`serving.shedding` decides from a request's path alone that it will be refused; the ASGI
edge (:mod:`serving.edge`) then answers 503 before reading the body. Even so every refusal
costs uvicorn's per-request work first: a scope, a :class:`RequestResponseCycle`, an
:class:`asyncio.Event`, a task and its loop turn, and the ASGI ``send`` messages. Under a burst
most requests are refused, so that work is most of what the gateway does.
:class:`EarlyRefusalProtocol` asks the same :class:`serving.shedding.Admission` as soon as the
request's headers are parsed (httptools' ``on_headers_complete``) and, when it refuses, writes
the rendered 503 to the socket there: no task, no scope handed to the app. What the client
gets is what the ASGI edge would have sent (status, ``Retry-After``, JSON body, uvicorn's
``date``/``server`` headers) and the refusal is counted in the same metrics.

Only the plain case is taken here; anything else goes to the ASGI edge unchanged, which
decides as before: a path other than OIP v2 infer, a path with ``%`` escapes or a
``root_path``, an API key to check (``ROOST_AUTH_REQUIRED``: the key check, its rate limit and
its 401/403/429 come first), a ``Content-Encoding`` the edge would refuse (415), a declared body
over the limit (413), a gateway that is draining or starting, an HTTP upgrade, or an earlier
request on the connection still being answered (pipelining: answers keep their order).

The connection stays open after a refusal: the request's cycle is marked answered, so the body
that follows (however late) is discarded by the parser callbacks, and the next request on the
connection is parsed as usual. The answer carries ``Connection: close`` (and the connection is
closed once it is written) when the client did not ask for keep-alive, or sent ``Expect:
100-continue`` (it may still send the body it announced, where the next request belongs).

An infer request it lets through takes its in-flight slot (``max_inflight_requests``) at once:
the hundreds of requests read in one event-loop turn are admitted one by one against the limit,
not all against the count from before their tasks ran (most would then be refused by the edge
after all, each at the price of a task). The edge takes the slot over
(:data:`serving.shedding.RESERVED`); if it never does (the gateway started draining meanwhile,
the app failed), the protocol gives it back when the answer is written or the connection lost.

Every request that goes on carries its arrival time, taken here, in ``scope["state"]`` under
:data:`ARRIVED`: its queue deadline counts from when its headers were read, not from when its
task first ran (with thousands of connections that can be an event-loop turn later).

Used by ``roost serve`` (``uvicorn.run(..., http=PROTOCOL)``; a string, so ``--workers N``
processes import it themselves); with plain uvicorn: ``--http serving.http_protocol:
EarlyRefusalProtocol``.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from serving.bodies import check_encoding
from serving.shedding import ARRIVED, RESERVED, Admission, reason_of

if TYPE_CHECKING:
    from registry.errors import ServiceUnavailable
    from serving.edge import Edge

PROTOCOL = "serving.http_protocol:EarlyRefusalProtocol"
"""uvicorn's ``http`` setting for the gateway (an import string: worker processes load it)."""

_NAME = rb"([^/%?\x80-\xff]+)"  # no escapes, no query, ASCII (as the edge's path after unquote)
INFER = re.compile(rb"/v2/models/" + _NAME + rb"(?:/versions/" + _NAME + rb")?/infer(?:\?.*)?")
"""OIP v2 infer: the first route of :data:`serving.edge.ROUTES`, so a match is that route."""

__all__ = ["ARRIVED", "PROTOCOL", "EarlyRefusalProtocol"]


class _Answered:
    """The cycle of a request refused here: answered, so the parser drops its body."""

    __slots__ = ()
    response_complete = True
    disconnected = False
    keep_alive = False
    message_event = cast(Any, type("_NoEvent", (), {"set": staticmethod(lambda: None)})())


ANSWERED = cast(RequestResponseCycle, _Answered())


class EarlyRefusalProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering early refusals itself (see the module)."""

    _edge: Edge | None = None
    _reserved: tuple[Admission, dict[str, Any]] | None = None  # the slot the answer holds
    _wire: dict[tuple[int, int, bool], tuple[object, object, bytes]] = {}

    def _release(self) -> None:
        """Give back the in-flight slot taken for the request being answered, unless the edge
        took it over (the edge never ran for it, or failed before: the slot would leak)."""
        reserved = self._reserved
        if reserved is not None:
            self._reserved = None
            if reserved[1].pop(RESERVED, False):
                reserved[0].inflight -= 1

    def on_response_complete(self) -> None:
        self._release()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        arrived = time.monotonic()
        if not self._refused(arrived):
            super().on_headers_complete()
            state = self.scope.get("state")
            if state is not None:
                state[ARRIVED] = arrived

    def _find_edge(self) -> Edge | None:
        """The gateway's :class:`serving.edge.Edge`, through uvicorn's wrappers (once per
        connection; None until the app has started)."""
        app: Any = self.app
        for _ in range(8):
            state = getattr(app, "state", None)
            if state is not None:
                edge = getattr(state, "edge", None)
                self._edge = edge
                return cast("Edge | None", edge)
            app = getattr(app, "app", None)
            if app is None:
                break
        return None

    def _refused(self, arrived: float) -> bool:
        """Answer the request here if the edge would refuse it before reading its body."""
        if self.parser.get_method() != b"POST" or self.root_path:
            return False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False  # pipelined behind an answer still being written
        match = INFER.fullmatch(self.url)
        if match is None:
            return False
        edge = self._edge or self._find_edge()
        if edge is None or edge.auth_required:
            return False
        owner_state = edge.owner.state
        plane = getattr(owner_state, "dataplane", None)
        if plane is None or getattr(owner_state, "draining", False):
            return False
        if self.parser.should_upgrade():
            return False
        for name, value in self.headers:
            if name == b"content-encoding":
                try:
                    check_encoding(value)
                except Exception:  # noqa: BLE001 - the edge answers 415 with its message
                    return False
            elif name == b"content-length":
                if value.isdigit() and int(value) > edge.max_bytes:
                    return False
        model = match.group(1).decode("latin-1")
        version = match.group(2)
        admission = edge.admission
        refused = admission.refusal(
            plane.repository, model, None if version is None else version.decode("latin-1")
        )
        if refused is None:  # admitted: its in-flight slot is taken now (see RESERVED)
            admission.inflight += 1
            self._reserved = (admission, self.scope["state"])
            self._reserved[1][RESERVED] = True
            return False
        error, loaded = refused
        if plane.metrics is not None:
            admission.count(
                plane.metrics, plane.repository, model, loaded, reason_of(error),
                time.monotonic() - arrived,
            )
        close = (
            self.expect_100_continue
            or not self.parser.should_keep_alive()
            or self.parser.get_http_version() != "1.1"
        )
        self.cycle = ANSWERED
        self.transport.write(self._rendered(edge, error, close))
        if close:
            self.transport.close()
        else:
            self.on_response_complete()
        return True

    def _rendered(self, edge: Edge, error: ServiceUnavailable, close: bool) -> bytes:
        """The whole HTTP answer, kept per (error, uvicorn's default headers, close): the
        default headers change once a second (``date``)."""
        defaults = self.server_state.default_headers
        key = (id(error), id(defaults), close)
        kept = self._wire.get(key)
        if kept is not None and kept[0] is error and kept[1] is defaults:
            return kept[2]
        status, headers, body = edge.admission.render(error, close)
        parts = [STATUS_LINE[status]]
        for name, value in [
            *defaults,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ]:
            parts += [name, b": ", value, b"\r\n"]  # render() adds "connection: close"
        parts += [b"\r\n", body]
        wire = b"".join(parts)
        if len(self._wire) >= 64:
            self._wire.clear()
        EarlyRefusalProtocol._wire[key] = (error, defaults, wire)
        return wire
