"""A raw ASGI fast path for ``POST /v2/models/{m}[/versions/{v}]/infer``.

FastAPI's routing and dependency solving cost several times the model call for a tabular model,
so the hot endpoint is matched with one regex before the FastAPI app and answered by the same
handler the FastAPI route uses (``rest.handle_v2_infer``), with the same error mapping. Every
other request goes to FastAPI unchanged (the route stays there for the OpenAPI document).
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
from serving.rest import handle_v2_infer

log = logging.getLogger("roost.serving")

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
MAX_BODY_BYTES = 64 * 1024 * 1024


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class InferFastPath:
    """ASGI middleware: serves OIP v2 infer directly, passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, owner: Any) -> None:
        self.app = app
        self.owner = owner  # the FastAPI app, whose state holds the data plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and getattr(self.owner.state, "draining", False)
            and await _refuse_while_draining(scope, send)
        ):
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                await self._infer(scope, receive, send, match)
                return
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, match: re.Match[str]
    ) -> None:
        plane = getattr(self.owner.state, "dataplane", None)
        if plane is None:
            await _send(send, 503, orjson.dumps({"error": "the gateway is starting"}), [])
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        model = unquote(match.group(1))
        version = unquote(match.group(2)) if match.group(2) is not None else None
        try:
            body = await _read_body(receive)
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


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _TooLarge()
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _TooLarge(RoostError):
    status_code = 413

    def __init__(self) -> None:
        super().__init__(f"request body exceeds {MAX_BODY_BYTES} bytes")


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
