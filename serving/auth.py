"""Authentication, authorization and per-key rate limits, in front of every HTTP route.

Each request needs a role by path: ``admin`` for anything that changes state (``/admin/...``,
repository load/unload), ``predict`` for inference and feedback, ``read`` for the rest;
health probes and the API docs are public. Admin always needs a key; predict and read need one
when ``ROOST_AUTH_REQUIRED`` is set. Keys come as ``x-api-key`` or ``authorization: Bearer``;
a model-scoped key only reaches its models. Lookups are cached for a few seconds, so a revoked
key stops working within that time on every gateway.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import unquote

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from registry import Registry, RoostError, RoostSettings
from registry.keys import ApiKey, authenticate

PUBLIC = ("/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/docs/oauth2-redirect")
MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)")
CACHE_S = 5.0


@dataclass
class _Bucket:
    tokens: float
    updated: float


def required_role(method: str, path: str) -> str | None:
    """The role a request needs, or None for public paths."""
    if path in PUBLIC:
        return None
    if path.startswith("/admin/") or (
        path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload"))
    ):
        return "admin"
    if method == "POST" and (
        path.endswith("/infer") or path.endswith(":predict") or path == "/v1/feedback"
    ):
        return "predict"
    return "read"


class AuthGate:
    """ASGI middleware: answers 401/403/429 itself, passes allowed requests to ``app``."""

    def __init__(self, app: ASGIApp, registry: Registry, settings: RoostSettings) -> None:
        self.app = app
        self.settings = settings
        self.checker = KeyChecker(registry, settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        role = required_role(scope["method"], path)
        if role is None or (role != "admin" and not self.settings.auth_required):
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        if presented is None:
            await _deny(send, 401, f"an API key with role '{role}' is required (x-api-key)")
            return
        found = await self.checker.lookup(presented)
        if isinstance(found, RoostError):
            await _deny(send, found.status_code, found.message)
            return
        match = MODEL_PATH.match(path)
        model = unquote(match.group(1)) if match else None
        if not found.allows(role, model):
            scope_note = f" for model '{model}'" if model else ""
            await _deny(send, 403, f"key '{found.id}' lacks role '{role}'{scope_note}")
            return
        if not self.checker.take(found):
            await _deny(
                send,
                429,
                f"key '{found.id}' is over its rate limit of {found.rate_limit_rps:g} requests/s",
                retry_after=1,
            )
            return
        await self.app(scope, receive, send)


class KeyChecker:
    """Key lookups cached for a few seconds, and per-key token buckets (HTTP and gRPC share it)."""

    def __init__(self, registry: Registry, settings: RoostSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._cache: dict[str, tuple[float, ApiKey | RoostError]] = {}
        self._buckets: dict[str, _Bucket] = {}

    async def lookup(self, presented: str) -> ApiKey | RoostError:
        now = time.monotonic()
        cached = self._cache.get(presented)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        try:
            found: ApiKey | RoostError = await asyncio.to_thread(
                authenticate, self.registry, presented, dev_mode=self.settings.dev_mode
            )
        except RoostError as exc:
            found = exc
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[presented] = (now, found)
        return found

    def take(self, key: ApiKey) -> bool:
        """Token bucket: ``rate_limit_rps`` per second, bursts up to one second's worth."""
        if key.rate_limit_rps <= 0:
            return True
        now = time.monotonic()
        rate = key.rate_limit_rps
        bucket = self._buckets.get(key.id)
        if bucket is None:
            bucket = self._buckets[key.id] = _Bucket(rate, now)
        bucket.tokens = min(rate, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


def _presented_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return str(value.decode("latin-1")).strip()
        if name == b"authorization":
            text = value.decode("latin-1")
            if text.lower().startswith("bearer "):
                return str(text[7:]).strip()
    return None


async def _deny(send: Send, status: int, message: str, retry_after: int | None = None) -> None:
    body = orjson.dumps({"error": message})
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="roost"'))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
