"""Request and response bodies at the HTTP edge: the body limit, content codings.

``Content-Encoding: gzip``/``deflate`` request bodies are inflated chunk by chunk with
``zlib.decompressobj`` and a max length, so ``max_request_bytes`` bounds the inflated body too
and a zip bomb is refused after inflating at most that much (413). Responses of
:data:`COMPRESS_MIN_BYTES` or more are compressed as ``Accept-Encoding`` allows.
"""

from __future__ import annotations

import zlib

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Send

from registry import RoostError
from registry.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

COMPRESS_MIN_BYTES = 1024
"""Responses smaller than this are never compressed (it costs more than it saves)."""
WBITS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}  # deflate: zlib-wrapped (RFC 9110)

RawHeaders = list[tuple[bytes, bytes]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class BodyRejected(StarletteHTTPException):
    """A :class:`RoostError` raised while a FastAPI route reads the body: FastAPI passes an
    HTTPException from body parsing on as it is (anything else would become a bare 400)."""

    def __init__(self, error: RoostError) -> None:
        status, headers = error.to_http()
        super().__init__(status, error.message, headers or None)


# --------------------------------------------------------------------------------------------
# request bodies


def too_large(limit: int, note: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body exceeds the limit of {limit} bytes{note}; see max_request_bytes"
    )


def check_encoding(value: bytes) -> bytes | None:
    """The request's content coding (None for identity), or 415."""
    coding = value.strip().lower()
    if coding in WBITS:
        return coding
    if coding in (b"", b"identity"):
        return None
    raise UnsupportedMediaType(
        f"Content-Encoding '{value.decode('latin-1')}' is not supported; send gzip, deflate "
        "or an uncompressed body"
    )


class Inflater:
    """Inflates a gzip/deflate body chunk by chunk, never past ``limit`` bytes out."""

    __slots__ = ("coding", "left", "limit", "zobj")

    def __init__(self, coding: bytes, limit: int) -> None:
        self.coding = coding.decode()
        self.zobj = zlib.decompressobj(WBITS[coding])
        self.limit = limit
        self.left = limit

    def feed(self, chunk: bytes) -> bytes:
        try:
            out = self.zobj.decompress(chunk, self.left + 1)  # at most one byte too many
        except zlib.error as exc:
            raise InvalidRequest(f"request body is not valid {self.coding} data: {exc}") from None
        self.left -= len(out)
        if self.left < 0 or self.zobj.unconsumed_tail:
            raise too_large(self.limit, " once decompressed")
        return out

    def finish(self) -> None:
        if not self.zobj.eof:
            raise InvalidRequest(f"request body: the {self.coding} data is truncated")


async def read_body(receive: Receive, max_bytes: int, coding: bytes | None = None) -> bytes:
    """The whole body (inflated if ``coding`` says gzip or deflate), under ``max_bytes``."""
    inflater = None if coding is None else Inflater(coding, max_bytes)
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
                raise too_large(max_bytes)
            chunks.append(chunk if inflater is None else inflater.feed(chunk))
        if not message.get("more_body", False):
            break
    if inflater is not None:
        inflater.finish()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def limited(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that raises 413 (:class:`BodyRejected`, rendered by the app) once the body
    passes ``max_bytes``: the limit for routes that read a body without ``Content-Length``."""
    size = 0

    async def limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > max_bytes:
                raise BodyRejected(too_large(max_bytes))
        return message

    return limited


def inflating(receive: Receive, max_bytes: int, coding: bytes) -> Receive:
    """``receive`` that hands the app the inflated body, under the same limits."""
    inflater = Inflater(coding, max_bytes)
    size = 0

    async def inflating() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        try:
            if size > max_bytes:
                raise too_large(max_bytes)
            body = inflater.feed(chunk) if chunk else b""
            if not more:
                inflater.finish()
        except RoostError as exc:
            raise BodyRejected(exc) from None
        return {"type": "http.request", "body": body, "more_body": more}

    return inflating


# --------------------------------------------------------------------------------------------
# responses


def accepted_coding(accept: bytes) -> bytes | None:
    """gzip or deflate if ``Accept-Encoding`` takes them (gzip first), else None."""
    taken: set[bytes] = set()
    for part in accept.lower().split(b","):
        name, _, params = part.partition(b";")
        name = name.strip()
        if params.strip().replace(b" ", b"") in (b"q=0", b"q=0.0", b"q=0.00", b"q=0.000"):
            continue
        if name == b"*":
            taken.add(b"gzip")
        elif name in (b"gzip", b"deflate"):
            taken.add(name)
    return b"gzip" if b"gzip" in taken else b"deflate" if b"deflate" in taken else None


def compress(body: bytes, accept: bytes, headers: RawHeaders) -> bytes:
    """``body`` compressed as the client accepts (adding Content-Encoding to ``headers``)."""
    coding = accepted_coding(accept)
    if coding is None:
        return body
    headers.append((b"content-encoding", coding))
    headers.append((b"vary", b"accept-encoding"))
    return zlib.compress(body, 1, WBITS[coding])


def compressing(send: Send, accept: bytes) -> Send:
    """``send`` that compresses a single-message response of :data:`COMPRESS_MIN_BYTES` or
    more (a streamed one goes as it is)."""
    start: Message | None = None

    async def compressing(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if start is not None and message["type"] == "http.response.body":
            head, start = start, None
            body = message.get("body", b"")
            headers = list(head.get("headers", []))
            if (
                not message.get("more_body", False)
                and len(body) >= COMPRESS_MIN_BYTES
                and all(k != b"content-encoding" for k, _ in headers)
            ):
                extra: RawHeaders = []
                packed = compress(body, accept, extra)
                if extra:
                    headers = [(k, v) for k, v in headers if k != b"content-length"]
                    headers += [(b"content-length", str(len(packed)).encode()), *extra]
                    await send({**head, "headers": headers})
                    await send({"type": "http.response.body", "body": packed})
                    return
            await send(head)
        await send(message)

    return compressing
