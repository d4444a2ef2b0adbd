"""REST transport: Open Inference Protocol v2 and KServe v1 routes over the data plane."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from registry import Registry
from serving import binary, oip
from serving.dataplane import CallContext, DataPlane
from serving.gateway import Gateway

USER_HEADER = "roost-user"
REQUEST_ID_HEADER = "x-request-id"
VARIANT_HEADER = "roost-variant"


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
) -> tuple[bytes, str, dict[str, str]]:
    """One OIP v2 infer over HTTP: (response body, media type, extra headers).

    Shared by the FastAPI route (kept for the OpenAPI document) and the HTTP edge, which
    answers the route itself (serving/edge.py).
    """
    header = headers.get(binary.HEADER_LENGTH.lower())  # ASGI header names are lower-case
    decode: Callable[[bytes], oip.InferRequest]
    if header is None:
        payload, decode = body, binary.decode_json_request
    else:  # Triton's binary tensor data extension
        payload, decode = binary.prepare_binary_request(body, header)
    context = CallContext(
        "v2-rest", headers.get(USER_HEADER), headers.get(REQUEST_ID_HEADER), headers
    )
    parsed, result = await plane.infer(model, version, payload, decode, context)
    flags = binary.binary_outputs(parsed, result.outputs)
    variant = {VARIANT_HEADER: result.decision.variant}
    if flags is None:
        encoded = oip.encode_infer_response(
            result.model, str(result.version), result.request_id, result.outputs,
            result.response_parameters(),
        )
        return encoded, "application/json", variant
    encoded, json_length = binary.encode_binary_response(
        result.model, str(result.version), result.request_id, result.outputs, flags
    )
    return (
        encoded,
        "application/octet-stream",
        {binary.HEADER_LENGTH: str(json_length), **variant},
    )


@v2.post("/v2/models/{model}/infer")
@v2.post("/v2/models/{model}/versions/{version}/infer")
async def infer(
    request: Request, plane: DataPlaneDep, model: str, version: str | None = None
) -> Response:
    body = await request.body()
    encoded, media_type, extra = await handle_v2_infer(plane, model, version, body, request.headers)
    return Response(encoded, media_type=media_type, headers=extra)


v1 = APIRouter(tags=["kserve-v1"])


def _no_decoder(_payload: bytes) -> oip.InferRequest:
    raise AssertionError("v1 bodies are decoded for the routed version")


def entity_unit(body: bytes) -> str | None:
    """The first instance's entity id (``customer_id=42``), the experiment unit of entity
    requests without a ``roost-user`` header."""
    if b'"entities"' not in body:
        return None
    try:
        data = orjson.loads(body)
        entities = data["instances"][0]["entities"]
        key = sorted(entities)[0]
        value = entities[key]
        if not isinstance(value, str | int | float):
            return None
        return f"{key}={value}"
    except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError, RecursionError):
        return None  # the decoder reports what is wrong with the body


@v1.get("/v1/models/{model}")
async def v1_model(plane: DataPlaneDep, model: str) -> Response:
    plane.model_ready(model, None)
    return json_response({"name": model, "ready": True})


@v1.post("/v1/models/{model}:predict")
async def v1_predict(request: Request, plane: DataPlaneDep, model: str) -> Response:
    body = await request.body()
    context = _context(request, "v1-rest")
    unit = entity_unit(body)
    if unit is not None:
        context = replace(context, unit=unit)
    parsed, result = await plane.infer(
        model, None, body, _no_decoder, context, decode_for=plane.instances_for
    )
    columns = {name: array.tolist() for name, array in result.outputs}
    rows = len(parsed.inputs[0].data)
    predictions = [{name: values[i] for name, values in columns.items()} for i in range(rows)]
    response = json_response(
        {
            "predictions": predictions,
            "model_name": model,
            "model_version": str(result.version),
            "id": result.request_id,
            "parameters": result.response_parameters(),
        }
    )
    response.headers[VARIANT_HEADER] = result.decision.variant
    return response
