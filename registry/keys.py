"""API keys with roles (``predict``, ``read``, ``admin``), optional model scope and rate limit.

A key reads ``rk_<id>_<secret>``; the registry keeps only ``sha256(secret)``. ``admin`` implies
``read`` and ``predict``. In dev mode (``ROOST_DEV_MODE=true``) the well-known
:data:`DEV_KEY` is an admin key; anywhere else it is refused like any unknown key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from registry import audit
from registry.errors import InvalidRequest, NotFound, Unauthorized
from registry.service import Registry
from registry.tables import ApiKeyRow

ROLES = ("predict", "read", "admin")
DEV_KEY = "roost-dev-key"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    roles: frozenset[str]
    models: frozenset[str] | None  # None: every model
    rate_limit_rps: float
    revoked: bool = False

    def allows(self, role: str, model: str | None = None) -> bool:
        if self.revoked:
            return False
        if role not in self.roles and "admin" not in self.roles:
            return False
        return model is None or self.models is None or model in self.models

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "roles": sorted(self.roles),
            "models": None if self.models is None else sorted(self.models),
            "rate_limit_rps": self.rate_limit_rps,
            "revoked": self.revoked,
        }


DEV_API_KEY = ApiKey("dev", "dev mode", frozenset({"admin"}), None, 0.0)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _from_row(row: ApiKeyRow) -> ApiKey:
    models = (row.models or {}).get("models")
    return ApiKey(
        row.id,
        row.name,
        frozenset((row.roles or {}).get("roles", [])),
        None if models is None else frozenset(models),
        row.rate_limit_rps,
        row.revoked,
    )


def create_key(
    registry: Registry,
    name: str,
    roles: list[str],
    models: list[str] | None = None,
    rate_limit_rps: float = 0.0,
    actor: str | None = None,
) -> tuple[str, ApiKey]:
    """A new key; the plaintext is returned once and never stored."""
    bad = [r for r in roles if r not in ROLES]
    if not roles or bad:
        raise InvalidRequest(f"roles: expected one or more of {', '.join(ROLES)}, got {roles}")
    if rate_limit_rps < 0:
        raise InvalidRequest("rate_limit_rps: expected >= 0 (0: unlimited)")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    with registry._write() as session:
        session.add(
            ApiKeyRow(
                id=key_id,
                name=name,
                secret_sha256=_digest(secret),
                roles={"roles": sorted(set(roles))},
                models={"models": None if models is None else sorted(set(models))},
                rate_limit_rps=rate_limit_rps,
                revoked=False,
            )
        )
        audit.append(
            session,
            actor=actor or registry.default_actor,
            action="create_key",
            details={"id": key_id, "name": name, "roles": sorted(roles), "models": models},
        )
    return f"rk_{key_id}_{secret}", ApiKey(
        key_id,
        name,
        frozenset(roles),
        None if models is None else frozenset(models),
        rate_limit_rps,
    )


def list_keys(registry: Registry) -> list[ApiKey]:
    with registry._read() as session:
        rows = session.execute(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).scalars()
        return [_from_row(r) for r in rows]


def revoke_key(registry: Registry, key_id: str, actor: str | None = None) -> ApiKey:
    with registry._write() as session:
        row = session.get(ApiKeyRow, key_id)
        if row is None:
            raise NotFound(f"unknown key id '{key_id}'")
        row.revoked = True
        audit.append(
            session,
            actor=actor or registry.default_actor,
            action="revoke_key",
            details={"id": key_id},
        )
        return _from_row(row)


def authenticate(registry: Registry, presented: str, *, dev_mode: bool) -> ApiKey:
    """The key ``presented`` stands for; Unauthorized (401) when it is unknown or revoked."""
    if hmac.compare_digest(presented, DEV_KEY):
        if dev_mode:
            return DEV_API_KEY
        raise Unauthorized("the dev key is refused outside dev mode (ROOST_DEV_MODE)")
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "rk":
        raise Unauthorized("API key is malformed: expected rk_<id>_<secret>")
    with registry._read() as session:
        row = session.get(ApiKeyRow, parts[1])
    if row is None or not hmac.compare_digest(row.secret_sha256, _digest(parts[2])):
        raise Unauthorized("API key is not valid")
    if row.revoked:
        raise Unauthorized(f"API key '{row.id}' was revoked")
    return _from_row(row)
