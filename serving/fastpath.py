"""A raw ASGI fast path for ``POST /v2/models/{m}[/versions/{v}]/infer``.

FastAPI's routing and dependency solving cost several times the model call for a tabular model,
so the hot endpoint is matched with one regex before the FastAPI app and answered by the same
handler the FastAPI route uses (``rest.handle_v2_infer``), with the same error mapping. Every
other request goes to FastAPI unchanged (the route stays there for the OpenAPI document).

Being the outermost of the gateway's own layers, it also enforces the request limits for every
HTTP route: a body over ``max_request_bytes`` gets 413 (at once when ``Content-Length`` says
so, otherwise as soon as the bytes read pass it), and the decoders see the gateway's
``max_tensor_elements`` and ``max_json_depth`` (see :func:`serving.oip.using_limits`).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry import RoostError
from serving.batching import QueueFull
from serving.oip import LIMITS, DecodeLimits
from serving.rest import handle_v2_infer

log = logging.getLogger("roost.serving")

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
MAX_BODY_BYTES = 64 * 1024 * 1024
"""The body limit when the app carries no settings (``RoostSettings.max_request_bytes``)."""


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class InferFastPath:
    """ASGI middleware: serves OIP v2 infer directly, passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, owner: Any) -> None:
        self.app = app
        self.owner = owner  # the FastAPI app, whose state holds the data plane
        self._limits: tuple[int, DecodeLimits] | None = None

    def limits(self) -> tuple[int, DecodeLimits]:
        """(max_request_bytes, decoder limits) from the app's settings, read once."""
        if self._limits is None:
            settings = getattr(self.owner.state, "settings", None)
            if settings is None:
                self._limits = (MAX_BODY_BYTES, DecodeLimits())
            else:
                self._limits = (
                    int(settings.max_request_bytes), DecodeLimits.from_settings(settings)
                )
        return self._limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if getattr(self.owner.state, "draining", False) and await _refuse_while_draining(
            scope, send
        ):
            return
        max_bytes, limits = self.limits()
        declared = _content_length(scope)
        if declared is not None and declared > max_bytes:
            # Answered before the body is read; the server discards whatever of it still comes
            # (closing instead could reset the connection before the client reads the 413).
            body = orjson.dumps({"error": _TooLarge(max_bytes, declared).message})
            await _send(send, 413, body, [])
            return
        token = LIMITS.set(limits)  # what the decoders read (serving.oip.using_limits)
        try:
            if scope["method"] == "POST":
                match = INFER_PATH.match(scope["path"])
                if match is not None:
                    await self._infer(scope, receive, send, match, max_bytes)
                    return
            await self.app(scope, _limited(receive, max_bytes), send)
        finally:
            LIMITS.reset(token)

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        match: re.Match[str],
        max_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        plane = getattr(self.owner.state, "dataplane", None)
        if plane is None:
            await _send(send, 503, orjson.dumps({"error": "the gateway is starting"}), [])
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        model = unquote(match.group(1))
        version = unquote(match.group(2)) if match.group(2) is not None else None
        try:
            body = await _read_body(receive, max_bytes)
            encoded, media_type, extra = await handle_v2_infer(plane, model, version, body, headers)
        except ClientGone:
            return  # nobody to answer; nothing was run
        except RoostError as exc:
            extra_headers = []
            if isinstance(exc, QueueFull):
                extra_headers.append((b"retry-after", str(exc.retry_after_s).encode()))
            await _send(send, exc.status_code, orjson.dumps({"error": exc.message}), extra_headers)
            return
        except Exception:
            log.exception("unhandled error in infer")
            await _send(send, 500, orjson.dumps({"error": "internal server error"}), [])
            return
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await _send(send, 200, encoded, raw_headers, media_type)


V1_PREDICT_PATH = re.compile(r"^/v1/models/[^/]+:predict$")
READY_PATH = "/v2/health/ready"
_DRAINING = orjson.dumps({"error": "the gateway is draining (shutting down)"})


async def _refuse_while_draining(scope: Scope, send: Send) -> bool:
    """While the gateway drains (SIGTERM): readiness and new inference requests get 503.

    Returns whether it answered; everything else (liveness, metadata, metrics) goes on.
    """
    path, method = scope["path"], scope["method"]
    if method == "GET" and path == READY_PATH:
        body = orjson.dumps({"ready": False, "reasons": ["draining"]})
    elif method == "POST" and (INFER_PATH.match(path) or V1_PREDICT_PATH.match(path)):
        body = _DRAINING
    else:
        return False
    await _send(send, 503, body, [(b"connection", b"close")])
    return True


async def _read_body(receive: Receive, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_bytes:
                raise _TooLarge(max_bytes)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, when it sends one that is a number."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server has refused it already
    return None


def _limited(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises 413 (a RoostError, mapped by the app) once the body passes
    ``max_bytes``: the limit for routes that read a body without ``Content-Length``."""
    size = 0

    async def limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > max_bytes:
                raise _TooLarge(max_bytes)
        return message

    return limited


class _TooLarge(RoostError):
    status_code = 413

    def __init__(self, limit: int = MAX_BODY_BYTES, declared: int | None = None) -> None:
        size = f" (Content-Length: {declared})" if declared is not None else ""
        super().__init__(
            f"request body exceeds the limit of {limit} bytes{size}; see max_request_bytes"
        )


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
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
