"""The gateway's one HTTP edge: the raw ASGI layer every HTTP request passes first.

One route table (:data:`ROUTES`: method, path pattern, role, handler) decides, per request and
with one regex match and one pass over the headers:

* **draining**: while the gateway drains (SIGTERM), readiness answers 503 ``draining`` and new
  inference requests 503 with Retry-After; everything else (liveness, metadata) goes on;
* **who**: the role the route needs (``predict``/``read``/``admin``, or public), checked with
  :class:`serving.auth.KeyChecker` (model scope, per-key rate limit); the caller goes on as a
  :class:`serving.auth.Principal` in ``scope["state"]["principal"]`` (FastAPI:
  ``PrincipalDep``);
* **the body**: ``Content-Encoding: gzip``/``deflate`` bodies are inflated incrementally, and the
  body limit ``max_request_bytes`` applies to the wire bytes and to the inflated bytes (413; a
  zip bomb is refused without being inflated); other encodings get 415; the infer decoders get
  the gateway's ``max_tensor_elements`` and ``max_json_depth`` as :class:`DecodeLimits`
  (``Edge.limits``, passed to :func:`serving.rest.handle_v2_infer`);
* **the hot route**: OIP v2 infer is answered here (FastAPI's routing and dependency solving
  cost several times the model call for a tabular model); everything else goes to FastAPI.
  Infer responses of :data:`COMPRESS_MIN_BYTES` or more honour ``Accept-Encoding``;
* **shedding**: an infer request that would be refused (the version's queue full, its breaker
  open, the process over ``max_inflight_requests``) is answered 503 from its path and the
  routing state, before its body is read (:mod:`serving.shedding`); the deadline of the
  requests that go on counts from here, so reading and decoding the body count against it.

Every error is rendered by :func:`render_error`, here and in the FastAPI exception handlers
(:func:`install`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from registry import Registry, RoostError, RoostSettings, ServiceUnavailable
from registry.errors import Draining, InvalidRequest
from serving.auth import ANONYMOUS, KeyChecker, Principal, presented_key
from serving.bodies import (
    COMPRESS_MIN_BYTES,
    ClientGone,
    RawHeaders,
    check_encoding,
    compress,
    compressing,
    inflating,
    limited,
    read_body,
    too_large,
)
from serving.protocol.types import DecodeLimits
from serving.rest import handle_v2_infer
from serving.shedding import ARRIVED, RESERVED, Admission, reason_of

log = logging.getLogger("roost.serving")

MAX_BODY_BYTES = 64 * 1024 * 1024
"""The body limit when the app carries no settings (``RoostSettings.max_request_bytes``)."""

Handler = Callable[
    ["Edge", Scope, Receive, Send, "tuple[str | None, ...]", dict[bytes, bytes]], Awaitable[None]
]


# --------------------------------------------------------------------------------------------
# errors


def render_error(exc: BaseException) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, JSON body ``{"error": message}``) for any exception; never a traceback.
    Unexpected exceptions are logged and answered 500 ``internal server error``."""
    if isinstance(exc, RoostError):
        status, headers = exc.to_http()
        return status, headers, orjson.dumps({"error": exc.message})
    log.error("unhandled error", exc_info=exc)
    return 500, {}, b'{"error":"internal server error"}'


def error_response(exc: BaseException) -> Response:
    status, headers, body = render_error(exc)
    return Response(body, status, headers=headers, media_type="application/json")


async def send_error(send: Send, exc: BaseException, extra: RawHeaders | None = None) -> None:
    status, headers, body = render_error(exc)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await _send(send, status, body, raw + extra if extra else raw)


def _validation_message(exc: RequestValidationError) -> str:
    """``field: what is wrong`` for the first error (``body`` prefix and pydantic's
    ``Value error,`` dropped: the message of a validator names its field itself)."""
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', 'invalid')}"
    loc = [str(p) for p in first.get("loc", ())]
    if len(loc) > 1 and loc[0] == "body":
        loc = loc[1:]
    message = str(first.get("msg", "invalid"))
    if first.get("type") == "value_error" and "error" in first.get("ctx", {}):
        message = str(first["ctx"]["error"])
        if loc == ["body"]:
            return message
    return f"{'.'.join(loc)}: {message}"


def install(app: FastAPI, registry: Registry, settings: RoostSettings) -> None:
    """Put the edge in front of ``app`` and render every error with :func:`render_error`."""
    app.add_middleware(Edge, owner=app, checker=KeyChecker(registry, settings))

    @app.exception_handler(RoostError)
    async def roost_error(_request: Request, exc: RoostError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        body = orjson.dumps({"error": str(exc.detail)})
        return Response(body, exc.status_code, headers=exc.headers, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidRequest(_validation_message(exc)))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        return error_response(exc)


# --------------------------------------------------------------------------------------------
# the route table


@dataclass(frozen=True)
class Route:
    """``pattern``'s first group, if it has groups, is the model (for key scope)."""

    method: str | None  # None: any method
    pattern: str
    role: str | None  # None: public
    handler: Handler | None = None  # None: FastAPI answers
    draining: tuple[int, RawHeaders, bytes] | None = None  # the answer while draining
    compress: bool = False  # honour Accept-Encoding on its responses


async def _infer(
    edge: Edge,
    scope: Scope,
    receive: Receive,
    send: Send,
    groups: tuple[str | None, ...],
    raw: dict[bytes, bytes],
) -> None:
    """OIP v2 infer, without FastAPI (the same :func:`serving.rest.handle_v2_infer`); refused
    before the body is read when it would be refused anyway (:mod:`serving.shedding`)."""
    arrived = scope["state"].get(ARRIVED) or time.monotonic()  # from the HTTP protocol
    plane = getattr(edge.owner.state, "dataplane", None)
    if plane is None:
        await send_error(send, ServiceUnavailable("the gateway is starting"))
        return
    model = unquote(groups[0] or "")
    version = unquote(groups[1]) if groups[1] else None
    admission = edge.admission
    reserved = scope["state"].pop(RESERVED, False)
    if not reserved:  # else admitted by the HTTP protocol: slot taken
        refused = admission.refusal(plane.repository, model, version)
        if refused is not None:
            await _refuse(admission, plane, model, refused, raw, send, arrived)
            return
        admission.inflight += 1
    try:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw.items()}
        try:
            body = await read_body(receive, edge.max_bytes, raw.get(b"content-encoding"))
            encoded, media_type, extra = await handle_v2_infer(
                plane, model, version, body, headers, edge.limits, scope["state"]["principal"],
                arrived, admission.alone if reserved else None,
            )
        except ClientGone:
            return  # nobody to answer; nothing was run
        except Exception as exc:  # noqa: BLE001 - rendered (and logged if unexpected)
            await send_error(send, exc)
            return
        out = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        accept = raw.get(b"accept-encoding")
        if accept is not None and len(encoded) >= COMPRESS_MIN_BYTES:
            encoded = compress(encoded, accept, out)
        await _send(send, 200, encoded, out, media_type)
    finally:
        admission.inflight -= 1


async def _refuse(
    admission: Admission,
    plane: Any,
    model: str,
    refused: tuple[ServiceUnavailable, Any],
    raw: dict[bytes, bytes],
    send: Send,
    arrived: float,
) -> None:
    """Answer an early refusal (its body unread) and count it. The connection stays open (the
    server discards the unread body), unless the client waits for ``100 Continue`` before it
    sends the body it announced: it may send it after all, where the next request belongs."""
    error, loaded = refused
    metrics = plane.metrics
    if metrics is not None:
        admission.count(
            metrics, plane.repository, model, loaded, reason_of(error),
            time.monotonic() - arrived,
        )
    status, headers, body = admission.render(error, b"expect" in raw)
    await _send(send, status, body, headers)


def _draining_refusal() -> tuple[int, RawHeaders, bytes]:
    status, headers, body = render_error(Draining("the gateway is draining (shutting down)"))
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return status, [*raw, (b"connection", b"close")], body


_REFUSE = _draining_refusal()
_NOT_READY = (
    503, [(b"connection", b"close")], orjson.dumps({"ready": False, "reasons": ["draining"]})
)
MODEL = r"([^/]+)"

ROUTES: tuple[Route, ...] = (
    Route("POST", rf"/v2/models/{MODEL}(?:/versions/([^/]+))?/infer", "predict", _infer,
          draining=_REFUSE, compress=True),
    Route("POST", r"/v1/models/([^/:]+):predict", "predict", draining=_REFUSE, compress=True),
    Route("POST", rf"/v2/models/{MODEL}(?:/versions/([^/]+))?/explain", "predict",
          draining=_REFUSE),  # serving/explain_api.py
    Route("POST", r"/v1/models/([^/:]+):explain", "predict", draining=_REFUSE),
    Route("POST", r"/v1/feedback", "predict"),
    # text generation (serving/llm/api.py): the model is in the body, the handler checks scope
    Route("POST", r"/v1/completions|/v1/chat/completions", "predict", draining=_REFUSE),
    Route("POST", rf"/v2/models/{MODEL}(?:/versions/([^/]+))?/generate(?:_stream)?", "predict",
          draining=_REFUSE),
    Route("GET", r"/v2/health/ready", None, draining=_NOT_READY),
    Route("GET", r"/v2/health/live", None),
    Route(None, r"/docs|/docs/oauth2-redirect|/openapi\.json", None),
    Route(None, rf"/admin/models/{MODEL}(?:/.*)?", "admin"),
    Route(None, r"/admin/consent/[^/]+", "admin"),  # serving/consent_api.py
    Route(None, r"/admin/.*", "admin"),
    Route(None, rf"/v2/repository/models/{MODEL}/(?:load|unload)", "admin"),
    Route(None, r"/v[12]/models/([^/:]+)(?:[/:].*)?", "read"),  # metadata and readiness
)
"""First match wins; a path no route matches needs ``read``. A route matched with another
method needs ``read`` (FastAPI answers 405 or 404)."""


def _compile(routes: tuple[Route, ...]) -> tuple[re.Pattern[str], dict[int, tuple[Route, int]]]:
    """One regex for the whole table; its match's ``lastindex`` names the route."""
    parts, at, group = [], {}, 1
    for route in routes:
        inner = re.compile(route.pattern).groups
        parts.append(f"({route.pattern})")
        at[group] = (route, inner)
        group += 1 + inner
    return re.compile("|".join(parts)), at


_TABLE, _ROUTE_AT = _compile(ROUTES)
_DEFAULT = Route(None, "", "read")


# --------------------------------------------------------------------------------------------
# the middleware


class Edge:
    """ASGI middleware in front of the FastAPI app; see the module docstring."""

    def __init__(self, app: ASGIApp, owner: Any, checker: KeyChecker) -> None:
        self.app = app
        self.owner = owner  # the FastAPI app: its state holds the data plane and ``draining``
        self.checker = checker
        settings = checker.settings
        self.auth_required = bool(settings.auth_required)
        self.max_bytes = int(getattr(settings, "max_request_bytes", MAX_BODY_BYTES))
        self.limits = DecodeLimits.from_settings(settings)
        self.admission = Admission(int(getattr(settings, "max_inflight_requests", 128)))
        owner.state.edge = self  # serving/http_protocol.py refuses early with it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = _TABLE.fullmatch(scope["path"])
        groups: tuple[str | None, ...] = ()
        if match is None:
            route = _DEFAULT
        else:
            route, inner = _ROUTE_AT[match.lastindex or 0]
            if inner:
                start = match.lastindex or 0
                groups = match.groups()[start : start + inner]
            if route.method is not None and route.method != scope["method"]:
                route = _DEFAULT
        if route.draining is not None and getattr(self.owner.state, "draining", False):
            status, headers, body = route.draining
            await _send(send, status, body, headers)
            return
        raw = dict(scope["headers"])
        try:
            principal = ANONYMOUS
            if route.role is not None and (self.auth_required or route.role == "admin"):
                model = groups[0] if groups else None
                principal = await self.checker.authorize(
                    presented_key(raw), route.role, unquote(model) if model else None
                )
            encoding = raw.get(b"content-encoding")
            if encoding is not None:
                encoding = check_encoding(encoding)
                if encoding is None:  # identity
                    del raw[b"content-encoding"]
                else:
                    raw[b"content-encoding"] = encoding
            declared = raw.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                # Answered before the body is read; the server discards whatever of it still
                # comes (closing instead could reset the connection before the client reads it).
                raise too_large(self.max_bytes, f" (Content-Length: {int(declared)})")
        except RoostError as exc:
            await send_error(send, exc)
            return
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["principal"] = principal
        if route.handler is not None:
            await route.handler(self, scope, receive, send, groups, raw)
            return
        if encoding is not None:
            scope = dict(scope)
            scope["headers"] = [
                (k, v) for k, v in scope["headers"]
                if k not in (b"content-encoding", b"content-length")
            ]
            receive = inflating(receive, self.max_bytes, encoding)
        else:
            receive = limited(receive, self.max_bytes)
        accept = raw.get(b"accept-encoding") if route.compress else None
        await self.app(scope, receive, compressing(send, accept) if accept else send)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: RawHeaders,
    media_type: str = "application/json",
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "COMPRESS_MIN_BYTES",
    "ROUTES",
    "ClientGone",
    "Edge",
    "Principal",
    "Route",
    "error_response",
    "install",
    "render_error",
    "send_error",
]
