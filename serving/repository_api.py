"""Triton's model repository extension: index, load and unload.

Load and unload act on the registry's deployment (audited under the caller's name, every
gateway follows within a poll), not on one process: with several workers or replicas they all agree.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from registry import Registry
from serving.auth import Principal, PrincipalDep
from serving.rest import DataPlaneDep, json_response

repository = APIRouter(tags=["model-repository"])


def _registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


def _index(plane_table: Any, registry: Registry) -> list[dict[str, Any]]:
    deployments = {d.model: d for d in registry.list_deployments()}
    rows: list[dict[str, Any]] = []
    for model in registry.list_models():
        entry: dict[str, Any] = {"name": model.name}
        serving = plane_table.production.get(model.name)
        deployment = deployments.get(model.name)
        failed = [(v, why) for (m, v), why in plane_table.failures.items() if m == model.name]
        if serving is not None:
            entry |= {"version": str(serving), "state": "READY", "reason": ""}
            if failed:
                entry["reason"] = f"version {failed[0][0]} failed to load: {failed[0][1]}"
        elif failed:
            entry |= {"version": str(failed[0][0]), "state": "UNAVAILABLE", "reason": failed[0][1]}
        elif deployment is None or deployment.production_version is None:
            entry |= {"state": "UNAVAILABLE", "reason": "no production deployment"}
        elif not deployment.policy.get("serving_enabled", True):
            entry |= {
                "version": str(deployment.production_version),
                "state": "UNAVAILABLE",
                "reason": "unloaded",
            }
        else:
            entry |= {
                "version": str(deployment.production_version),
                "state": "LOADING",
                "reason": "",
            }
        rows.append(entry)
    return rows


@repository.post("/v2/repository/index")
async def index(request: Request, plane: DataPlaneDep) -> Response:
    body = await request.body()
    ready_only = b'"ready":true' in body.replace(b" ", b"")
    rows = await asyncio.to_thread(_index, plane.repository.table, _registry(request))
    if ready_only:
        rows = [r for r in rows if r["state"] == "READY"]
    return json_response(rows)


async def _set_enabled(
    request: Request, plane: DataPlaneDep, who: Principal, model: str, enabled: bool
) -> None:
    await asyncio.to_thread(
        _registry(request).set_serving_enabled,
        model,
        enabled,
        reason="repository API",
        actor=who.actor,
    )
    await plane.repository.sync()


@repository.post("/v2/repository/models/{model}/load")
async def load(request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str) -> Response:
    await _set_enabled(request, plane, who, model, True)
    plane.repository.resolve(model, None)  # raises 503 with the reason if it failed to load
    return json_response({})


@repository.post("/v2/repository/models/{model}/unload")
async def unload(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str
) -> Response:
    await _set_enabled(request, plane, who, model, False)
    return json_response({})
