"""Admin API for traffic: policies, canaries, shadows and experiments (state-changing), staged
rollouts (``/rollout``: start, pause, resume, cancel, status) and the one-click production
rollback (``/rollback``; not ``/canary/rollback``, which takes a canary's traffic away).

Changes go to the registry (validated, audited under the caller's name, generation bumped) and
this gateway applies them at once; other gateways pick them up on their next poll. Request
bodies are pydantic models, so ``/openapi.json`` describes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as FastPath
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from registry import NotFound, Registry
from registry import traffic_ops as ops
from registry.traffic import TrafficPolicy
from serving.auth import PrincipalDep
from serving.rest import DataPlaneDep, json_response

admin = APIRouter(prefix="/admin/models/{model}", tags=["admin"])

Percent = Annotated[StrictInt | StrictFloat, Field(description="0 to 100")]
MAX_VERSION = 2**31 - 1
VersionNumber = Annotated[StrictInt, Field(ge=1, le=MAX_VERSION, description="A version number")]
"""Version numbers are 1, 2, ... per model; the bound keeps absurd values out of the database."""


class PolicyBody(BaseModel):
    """A whole traffic policy (as ``GET .../traffic`` shows it); the registry checks it."""

    model_config = ConfigDict(extra="allow")
    canary: dict[str, Any] | None = None
    experiments: list[dict[str, Any]] = []
    shadows: list[dict[str, Any]] = []
    segments: list[dict[str, Any]] = []
    bandit: dict[str, Any] | None = None
    flags: list[str] = []


class CanaryBody(BaseModel):
    version: VersionNumber
    percent: Percent


class RollbackBody(BaseModel):
    reason: str | None = None


class ProductionRollbackBody(BaseModel):
    to_version: VersionNumber | None = Field(
        default=None, description="The DEPRECATED version to bring back (default: the previous)"
    )
    reason: str | None = None


class RolloutBody(BaseModel):
    version: VersionNumber
    schedule: list[StrictInt | StrictFloat] | None = Field(
        default=None, description="Canary percents, increasing, ending at 100"
    )
    reason: str | None = None


class ReasonBody(BaseModel):
    reason: str | None = None


class ShadowBody(BaseModel):
    version: VersionNumber
    percent: Percent = 100.0


class VariantBody(BaseModel):
    version: VersionNumber
    weight: StrictInt | StrictFloat
    name: str | None = None


class ExperimentBody(BaseModel):
    id: str
    variants: list[VariantBody] = Field(min_length=1)
    salt: str | None = None
    share: StrictInt | StrictFloat | None = Field(
        default=None, description="% of the experiment layer (default: the largest free range)"
    )


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
async def replace(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str, body: PolicyBody
) -> Response:
    data = body.model_dump(exclude_unset=True)
    return await _apply(
        request, plane, lambda r: r.set_policy(model, data, reason="admin API", actor=who.actor)
    )


@admin.post("/canary")
async def canary(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str, body: CanaryBody
) -> Response:
    percent = float(body.percent)
    return await _apply(
        request, plane, lambda r: r.start_canary(model, body.version, percent, actor=who.actor)
    )


@admin.post("/canary/promote")
async def promote(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str
) -> Response:
    return await _apply(request, plane, lambda r: ops.promote_canary(r, model, actor=who.actor))


@admin.post("/canary/rollback")
async def rollback(
    request: Request,
    plane: DataPlaneDep,
    who: PrincipalDep,
    model: str,
    body: RollbackBody | None = None,
) -> Response:
    reason = (body.reason if body else None) or "rolled back through the admin API"
    return await _apply(
        request, plane, lambda r: r.rollback_canary(model, reason=reason, actor=who.actor)
    )


@admin.post("/shadows")
async def add_shadow(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str, body: ShadowBody
) -> Response:
    percent = float(body.percent)
    return await _apply(
        request,
        plane,
        lambda r: ops.set_shadow(r, model, body.version, percent, actor=who.actor),
    )


@admin.delete("/shadows/{version}")
async def delete_shadow(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str,
    version: Annotated[int, FastPath(ge=1, le=MAX_VERSION)],
) -> Response:
    return await _apply(
        request, plane, lambda r: ops.remove_shadow(r, model, version, actor=who.actor)
    )


@admin.post("/experiments")
async def start_experiment(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str, body: ExperimentBody
) -> Response:
    variants = [v.model_dump(exclude_none=True) for v in body.variants]
    share = None if body.share is None else float(body.share)
    return await _apply(
        request,
        plane,
        lambda r: ops.start_experiment(
            r, model, body.id, variants, body.salt, actor=who.actor, share=share
        ),
    )


@admin.delete("/experiments/{experiment_id}")
async def stop_experiment(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str, experiment_id: str
) -> Response:
    return await _apply(
        request, plane, lambda r: ops.stop_experiment(r, model, experiment_id, actor=who.actor)
    )


# -- staged rollouts and the production rollback ------------------------------------------------


async def _changed(request: Request, plane: DataPlaneDep, action: Callable[[Registry], Any]) -> Any:
    registry: Registry = request.app.state.registry
    result = await asyncio.to_thread(action, registry)
    await plane.repository.sync()
    return result


@admin.post("/rollback")
async def rollback_production(
    request: Request,
    plane: DataPlaneDep,
    who: PrincipalDep,
    model: str,
    body: ProductionRollbackBody | None = None,
) -> Response:
    """Bring back the previous production version (or ``to_version``); one transaction."""
    to_version = body.to_version if body else None
    reason = (body.reason if body else None) or "rollback through the admin API"
    info = await _changed(
        request,
        plane,
        lambda r: r.rollback(model, to_version=to_version, reason=reason, actor=who.actor),
    )
    return json_response(info.to_dict())


@admin.get("/rollout")
async def rollout_status(request: Request, model: str) -> Response:
    registry: Registry = request.app.state.registry
    status = await asyncio.to_thread(registry.get_rollout, model)
    if status is None:
        raise NotFound(f"model '{model}' has no rollout; start one with POST .../rollout")
    return json_response(status.to_dict())


@admin.post("/rollout")
async def start_rollout(
    request: Request, plane: DataPlaneDep, who: PrincipalDep, model: str, body: RolloutBody
) -> Response:
    schedule = None if body.schedule is None else [float(p) for p in body.schedule]
    reason = body.reason or "rollout through the admin API"
    status = await _changed(
        request,
        plane,
        lambda r: r.start_rollout(
            model, body.version, schedule=schedule, actor=who.actor, reason=reason
        ),
    )
    return json_response(status.to_dict())


def _steer(verb: str) -> None:
    async def steer(
        request: Request,
        plane: DataPlaneDep,
        who: PrincipalDep,
        model: str,
        body: ReasonBody | None = None,
    ) -> Response:
        reason = (body.reason if body else None) or f"{verb} through the admin API"
        status = await _changed(
            request,
            plane,
            lambda r: getattr(r, f"{verb}_rollout")(model, actor=who.actor, reason=reason),
        )
        return json_response(status.to_dict())

    steer.__name__ = f"{verb}_rollout"
    admin.post(f"/rollout/{verb}")(steer)


for _verb in ("pause", "resume", "cancel"):
    _steer(_verb)
