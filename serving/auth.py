"""Who is calling: API keys, roles, model scope and per-key rate limits, for HTTP and gRPC.

Which role a request needs is decided by the route: the HTTP edge's route table
(:mod:`serving.edge`) and, for gRPC, the RPC. ``admin`` is needed for anything that changes
state, ``predict`` for inference and feedback, ``read`` for the rest; health probes and the API
docs are public. Admin always needs a key; predict and read need one when
``ROOST_AUTH_REQUIRED`` is set. Keys come as ``x-api-key`` or ``authorization: Bearer``; a
model-scoped key only reaches its models. Lookups are cached for a few seconds, so a revoked key
stops working within that time on every gateway.

The caller, once known, is a :class:`Principal`; FastAPI routes take it as
:data:`PrincipalDep` and name it (``Principal.actor``) in every registry change they make, so
the audit log says who.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from registry import Registry, RoostError, RoostSettings
from registry.errors import Forbidden, RateLimited, Unauthorized
from registry.keys import DEV_API_KEY, ApiKey, authenticate

CACHE_S = 5.0


@dataclass(frozen=True)
class Principal:
    """The caller of one request: the API key it presented, or nobody (``key_id`` None)."""

    key_id: str | None
    name: str
    roles: frozenset[str]
    models: frozenset[str] | None  # None: every model

    @property
    def actor(self) -> str:
        """How audit records name the caller: ``key:<name>``, ``dev`` or ``anonymous``."""
        if self.key_id is None:
            return "anonymous"
        if self.key_id == DEV_API_KEY.id:
            return "dev"
        return f"key:{self.name}"

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(key.id, key.name, key.roles, key.models)


ANONYMOUS = Principal(None, "anonymous", frozenset(), None)
"""The caller of a request that presented no key where none is required."""


async def get_principal(request: Request) -> Principal:  # async: no thread-pool hop
    state = request.scope.get("state")
    principal = state.get("principal") if state else None
    return principal if isinstance(principal, Principal) else ANONYMOUS


PrincipalDep = Annotated[Principal, Depends(get_principal)]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class KeyChecker:
    """Key lookups cached for a few seconds, and per-key token buckets (HTTP and gRPC share it)."""

    def __init__(self, registry: Registry, settings: RoostSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._cache: dict[str, tuple[float, ApiKey | RoostError]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._principals: dict[str, tuple[ApiKey, Principal]] = {}  # by key id

    async def authorize(
        self, presented: str | None, role: str, model: str | None, *, how: str = "x-api-key"
    ) -> Principal:
        """The caller of a request needing ``role`` (on ``model``), or raise Unauthorized (401),
        Forbidden (403) or RateLimited (429). ``how`` names where keys go, for the message."""
        if role != "admin" and not self.settings.auth_required:
            return ANONYMOUS
        if presented is None:
            raise Unauthorized(f"an API key with role '{role}' is required ({how})")
        found = await self.lookup(presented)
        if isinstance(found, RoostError):
            raise found
        if not found.allows(role, model):
            scope_note = f" for model '{model}'" if model else ""
            raise Forbidden(f"key '{found.id}' lacks role '{role}'{scope_note}")
        if not self.take(found):
            raise RateLimited(
                f"key '{found.id}' is over its rate limit of {found.rate_limit_rps:g} requests/s",
                retry_after_s=1,
            )
        known = self._principals.get(found.id)
        if known is None or known[0] is not found:  # one Principal per cached key lookup
            if len(self._principals) > 10_000:
                self._principals.clear()
            known = self._principals[found.id] = (found, Principal.of(found))
        return known[1]

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


def presented_key(headers: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> str | None:
    """The key in ``x-api-key`` or ``authorization: Bearer``, if any (ASGI raw headers)."""
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if name == b"x-api-key":
            return str(value.decode("latin-1")).strip()
        if name == b"authorization":
            text = value.decode("latin-1")
            if text.lower().startswith("bearer "):
                return str(text[7:]).strip()
    return None
