"""Admin API for traffic: policies, canaries, shadows and experiments (state-changing).

Changes go to the registry (validated, audited, generation bumped) and this gateway applies them
at once; other gateways pick them up on their next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from registry import InvalidRequest, Registry
from registry import traffic_ops as ops
from registry.traffic import TrafficPolicy
from serving.rest import DataPlaneDep, json_response

admin = APIRouter(prefix="/admin/models/{model}", tags=["admin"])


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body: expected a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise InvalidRequest(f"{name}: expected {expected}, got {value!r}")
    return value


async def _apply(
    request: Request, plane: DataPlaneDep, action: Callable[[Registry], TrafficPolicy]
) -> Response:
    registry: Registry = request.app.state.registry
    policy = await asyncio.to_thread(action, registry)
    await plane.repository.sync()
    return json_response(policy.to_dict())


@admin.get("/traffic")
async def show(request: Request, model: str) -> Response:
    registry: Registry = request.app.state.registry
    return json_response((await asyncio.to_thread(registry.get_policy, model)).to_dict())


@admin.put("/traffic")
async def replace(request: Request, plane: DataPlaneDep, model: str) -> Response:
    data = await _body(request)
    return await _apply(
        request, plane, lambda r: r.set_policy(model, data, reason="admin API", actor="admin-api")
    )


@admin.post("/canary")
async def canary(request: Request, plane: DataPlaneDep, model: str) -> Response:
    data = await _body(request)
    version = _field(data, "version", int)
    percent = float(_field(data, "percent", (int, float)))
    return await _apply(
        request, plane, lambda r: r.start_canary(model, version, percent, actor="admin-api")
    )


@admin.post("/canary/promote")
async def promote(request: Request, plane: DataPlaneDep, model: str) -> Response:
    return await _apply(request, plane, lambda r: ops.promote_canary(r, model, actor="admin-api"))


@admin.post("/canary/rollback")
async def rollback(request: Request, plane: DataPlaneDep, model: str) -> Response:
    data = await _body(request)
    reason = str(data.get("reason") or "rolled back through the admin API")
    return await _apply(
        request, plane, lambda r: r.rollback_canary(model, reason=reason, actor="admin-api")
    )


@admin.post("/shadows")
async def add_shadow(request: Request, plane: DataPlaneDep, model: str) -> Response:
    data = await _body(request)
    version = _field(data, "version", int)
    percent = float(_field(data, "percent", (int, float))) if "percent" in data else 100.0
    return await _apply(
        request, plane, lambda r: ops.set_shadow(r, model, version, percent, actor="admin-api")
    )


@admin.delete("/shadows/{version}")
async def delete_shadow(
    request: Request, plane: DataPlaneDep, model: str, version: int
) -> Response:
    return await _apply(
        request, plane, lambda r: ops.remove_shadow(r, model, version, actor="admin-api")
    )


@admin.post("/experiments")
async def start_experiment(request: Request, plane: DataPlaneDep, model: str) -> Response:
    data = await _body(request)
    experiment_id = _field(data, "id", str)
    variants = _field(data, "variants", list)
    salt = data.get("salt")
    return await _apply(
        request,
        plane,
        lambda r: ops.start_experiment(r, model, experiment_id, variants, salt, actor="admin-api"),
    )


@admin.delete("/experiments/{experiment_id}")
async def stop_experiment(
    request: Request, plane: DataPlaneDep, model: str, experiment_id: str
) -> Response:
    return await _apply(
        request, plane, lambda r: ops.stop_experiment(r, model, experiment_id, actor="admin-api")
    )
