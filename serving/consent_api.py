"""Admin API for consent (registry/consent.py): ``GET /admin/consent/{user}`` shows every
purpose's state, ``POST /admin/consent/{user}`` grants or withdraws purposes, audited under the
caller's key. Admin role (the edge's ``/admin/...`` routes). The gateway answering applies a
``logging`` withdrawal at once; the others within ``ROOST_CONSENT_REFRESH_S``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi import Path as FastPath
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from registry import Registry
from registry.consent import PURPOSES, ConsentStore
from serving.auth import PrincipalDep
from serving.rest import DataPlaneDep, RegistryDep, json_response

consent = APIRouter(prefix="/admin/consent", tags=["admin"])
UserPath = FastPath(min_length=1, max_length=256, description="The user id (roost-user)")


class ConsentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purposes: list[str] = Field(min_length=1, description=f"Of: {', '.join(PURPOSES)}")
    granted: bool = Field(description="true: grant; false: withdraw")


def _store(plane: Any, registry: Registry) -> ConsentStore:
    governance = getattr(plane, "governance", None)
    gate = getattr(governance, "consent", None)
    if gate is not None:
        return gate.store  # type: ignore[no-any-return]
    from warehouse.minimise import UserIdHasher

    return ConsentStore(registry, UserIdHasher.from_settings(plane.repository.settings,
                                                             warn=False))


@consent.get("/{user}")
async def get_consent(plane: DataPlaneDep, registry: RegistryDep,
                      user: str = UserPath) -> Response:
    store = _store(plane, registry)
    records = await asyncio.to_thread(store.get, user)
    return json_response({"purposes": [r.to_dict() for r in records]})


@consent.post("/{user}")
async def set_consent(body: ConsentBody, plane: DataPlaneDep, registry: RegistryDep,
                      who: PrincipalDep, user: str = UserPath) -> Response:
    store = _store(plane, registry)
    changed = await asyncio.to_thread(store.set, user, body.purposes, body.granted,
                                      actor=who.actor)
    gate = getattr(getattr(plane, "governance", None), "consent", None)
    if gate is not None:
        await asyncio.to_thread(gate.refresh)  # this gateway applies it to the next request
    return json_response({"purposes": [r.to_dict() for r in changed]})
