"""REST transport: Open Inference Protocol v2 and KServe v1 routes over the data plane."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from registry import InvalidRequest, Registry
from serving.auth import ANONYMOUS, Principal, PrincipalDep
from serving.dataplane import CallContext, DataPlane
from serving.gateway import Gateway
from serving.kserve_v1 import decode_records, predictions
from serving.pipeline import Rejected
from serving.protocol.binary_codec import (
    HEADER_LENGTH,
    binary_outputs,
    decode_binary_request,
    decode_json_request,
    encode_binary_response,
    parse_header_length,
)
from serving.protocol.json_codec import encode_infer_response
from serving.protocol.render import json_preview
from serving.protocol.types import DecodeLimits

USER_HEADER = "roost-user"
REQUEST_ID_HEADER = "x-request-id"
VARIANT_HEADER = "roost-variant"
_HEADER_LENGTH = HEADER_LENGTH.lower()


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code, media_type="application/json")


async def get_gateway(request: Request) -> Gateway:  # async: no thread-pool hop
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
"""The app's :class:`~serving.gateway.Gateway` (registry, settings, scope, repository, ...)."""


async def get_dataplane(gateway: GatewayDep) -> DataPlane:
    return gateway.plane


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]


async def get_registry(gateway: GatewayDep) -> Registry:
    return gateway.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def _context(request: Request, protocol: str) -> CallContext:
    headers = request.headers
    return CallContext(
        protocol=protocol,
        user_id=headers.get(USER_HEADER),
        request_id=headers.get(REQUEST_ID_HEADER),
        headers={k.lower(): v for k, v in headers.items()},
    )


health = APIRouter(tags=["health"])


@health.get("/metrics", include_in_schema=False)
async def metrics(plane: DataPlaneDep) -> Response:
    if plane.metrics is None:
        return json_response({"error": "metrics are disabled"}, 404)
    depths = {
        (m, str(v)): loaded.batcher.depth
        for (m, v), loaded in plane.repository.table.loaded.items()
    }
    body, content_type = plane.metrics.exposition(depths)
    return Response(body, media_type=content_type)


@health.get("/v2/health/live")
async def live() -> Response:
    return json_response({"live": True})


@health.get("/v2/health/ready")
async def ready(plane: DataPlaneDep) -> Response:
    ok, reasons = plane.repository.readiness()
    body: dict[str, Any] = {"ready": ok}
    if reasons:
        body["reasons"] = reasons
    return json_response(body, 200 if ok else 503)


v2 = APIRouter(tags=["open-inference-protocol-v2"])


@v2.get("/v2")
async def server_metadata(plane: DataPlaneDep) -> Response:
    return json_response(plane.server_metadata())


@v2.get("/v2/models/{model}")
@v2.get("/v2/models/{model}/versions/{version}")
async def model_metadata(plane: DataPlaneDep, model: str, version: str | None = None) -> Response:
    return json_response(plane.model_metadata(model, version))


@v2.get("/v2/models/{model}/ready")
@v2.get("/v2/models/{model}/versions/{version}/ready")
async def model_ready(plane: DataPlaneDep, model: str, version: str | None = None) -> Response:
    plane.model_ready(model, version)
    return json_response({"name": model, "ready": True})


async def handle_v2_infer(
    plane: DataPlane,
    model: str,
    version: str | None,
    body: bytes,
    headers: Mapping[str, str],
    limits: DecodeLimits,
    principal: Principal = ANONYMOUS,
    arrived: float | None = None,
    alone: Callable[[], bool] | None = None,
) -> tuple[bytes, str, dict[str, str]]:
    """One OIP v2 infer over HTTP: (response body, media type, extra headers); the queue
    deadline counts from ``arrived`` (``time.monotonic()`` when the edge took the request).
    ``alone``: whether no other inference request is in flight in this process (asked when the
    request starts and again once its answer is encoded): then the log record's fdatasync runs
    here, on the event loop (:attr:`CallContext.alone`).

    Decodes the body (v2 JSON, or Triton's binary tensor extension when
    ``Inference-Header-Content-Length`` is set) with ``limits``; a body that does not decode is
    logged through :meth:`DataPlane.reject`. Shared by the FastAPI route (kept for the OpenAPI
    document) and the HTTP edge, which answers the route itself (serving/edge.py).
    """
    durable: list[asyncio.Future[None]] = []  # the log record's sync, awaited after encoding
    context = CallContext(
        "v2-rest", headers.get(USER_HEADER), headers.get(REQUEST_ID_HEADER), headers,
        principal=principal, arrived=arrived, durable=durable,
        alone=alone is not None and alone(),
    )
    header = headers.get(_HEADER_LENGTH)  # ASGI header names are lower-case
    try:
        if header is None:
            request = decode_json_request(body, limits)
        else:  # Triton's binary tensor data extension
            request = decode_binary_request(body, parse_header_length(header, len(body)), limits)
    except InvalidRequest as exc:
        await plane.reject(model, version, context, exc, _rejected(body, header))
    result = await plane.infer(model, version, request, context)
    flags = binary_outputs(request, result.outputs)
    variant = {VARIANT_HEADER: result.decision.variant}
    if flags is None:
        encoded = encode_infer_response(
            result.model, str(result.version), result.request_id, result.outputs,
            result.response_parameters(),
        )
        await _durable(plane, durable, context.alone and alone is not None and alone())
        # LogUnavailable: 503, the answer never leaves
        return encoded, "application/json", variant
    encoded, json_length = encode_binary_response(
        result.model, str(result.version), result.request_id, result.outputs, flags
    )
    await _durable(plane, durable, context.alone and alone is not None and alone())
    return (
        encoded,
        "application/octet-stream",
        {HEADER_LENGTH: str(json_length), **variant},
    )


async def _durable(plane: DataPlane, durable: list[asyncio.Future[None]], alone: bool) -> None:
    """Wait until the log record of the answer is durable (fdatasynced here when still
    ``alone``; else the syncer syncs it, woken by the log's fallback on the next loop turn)."""
    if alone and durable and not durable[-1].done():
        plane.log_writer.sync_here()
    for waiter in durable:
        await waiter


def _rejected(body: bytes, header: str | None) -> Rejected:
    """A body that did not decode, for the log: its tensor headers (of the JSON part of a
    binary request) and its size."""
    json_part: bytes | memoryview = body
    if header is not None:
        text = header.strip()
        length = int(text) if text.isascii() and text.isdigit() else 0
        json_part = memoryview(body)[: min(length, len(body))]
    request_id, tensors = json_preview(json_part)
    return Rejected(len(body), tuple(tensors), request_id)


def _limits(gateway: Gateway) -> DecodeLimits:
    return DecodeLimits.from_settings(gateway.settings)


@v2.post("/v2/models/{model}/infer")
@v2.post("/v2/models/{model}/versions/{version}/infer")
async def infer(
    request: Request,
    gateway: GatewayDep,
    principal: PrincipalDep,
    model: str,
    version: str | None = None,
) -> Response:
    plane = gateway.plane
    body = await request.body()
    encoded, media_type, extra = await handle_v2_infer(
        plane, model, version, body, request.headers, _limits(gateway), principal
    )
    return Response(encoded, media_type=media_type, headers=extra)


v1 = APIRouter(tags=["kserve-v1"])


@v1.get("/v1/models/{model}")
async def v1_model(plane: DataPlaneDep, model: str) -> Response:
    plane.model_ready(model, None)
    return json_response({"name": model, "ready": True})


@v1.post("/v1/models/{model}:predict")
async def v1_predict(
    request: Request, gateway: GatewayDep, principal: PrincipalDep, model: str
) -> Response:
    plane = gateway.plane
    body = await request.body()
    context = replace(_context(request, "v1-rest"), principal=principal)
    try:
        records = decode_records(body, _limits(gateway))
    except InvalidRequest as exc:
        await plane.reject(model, None, context, exc, Rejected(len(body)))
    result = await plane.infer(model, None, records, context)
    rows = result.request.inputs[0].shape[0]
    response = json_response(
        {
            "predictions": predictions(result.outputs, rows),
            "model_name": model,
            "model_version": str(result.version),
            "id": result.request_id,
            "parameters": result.response_parameters(),
        }
    )
    response.headers[VARIANT_HEADER] = result.decision.variant
    return response
