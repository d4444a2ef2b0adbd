"""Explanations: ``POST /v1/models/{m}:explain`` (KServe v1) and ``POST /v2/models/{m}[/versions/
{v}]/explain`` (an OIP v2 infer body): per-feature attributions per row.

The version is the one a pinned v2 path names, else the model's production version (the
router's canary / experiment split is for predictions, not explanations). Rows are validated
like an infer request (KServe v1 records are put in the version's feature order), then
explained by :func:`registry.explain.explain` against the background sample stored with the
version, in a worker thread (``asyncio.to_thread``: the event loop keeps serving predictions),
one explanation at a time per gateway process, within:

* ``ROOST_EXPLAIN_MAX_ROWS`` rows per request (413 naming it);
* ``ROOST_EXPLAIN_MAX_EVALS`` model evaluations per row (a request's ``max_evals`` above it:
  400 naming it; default ``min(ROOST_EXPLAIN_MAX_EVALS, max(500, 2 * features + 1))``);
* ``ROOST_EXPLAIN_TIMEOUT_S`` seconds (504 naming it).

The first explanation in a process also pays SHAP's one-off numba compilation (several
seconds; not counted against the timeout). Every explanation that reached a version is logged in
the prediction log with ``route = 'explain'`` and protocol ``v1-explain`` / ``v2-explain``:
``inputs`` as for a prediction, ``outputs`` the response's ``explanations`` JSON, under the
response's ``id`` (the body's ``id``, else ``X-Request-Id``, else a new one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from registry import InvalidRequest, RoostError
from registry.errors import PayloadTooLarge, ServiceUnavailable
from registry.explain import (
    METHOD,
    background_digest,
    decode_background,
    explain,
    is_tree_ensemble,
    min_evals,
)
from registry.quantize import session as ort_session
from serving.dataplane import DataPlane, log_exclude
from serving.kserve_v1 import decode_records
from serving.pipeline import EntityBatch, adapt
from serving.protocol.json_codec import decode_infer_request
from serving.protocol.render import render_inputs
from serving.protocol.types import DecodeLimits, InferRequest
from serving.protocol.validation import validate_against_signature
from serving.rest import REQUEST_ID_HEADER, USER_HEADER, GatewayDep
from serving.routing_table import LoadedVersion
from warehouse import LogUnavailable, PredictionRecord

__all__ = ["explanations"]

explanations = APIRouter(tags=["explanations"])
_CACHED = 8  # sessions and backgrounds kept per process (by sha256)


class Explainers:
    """Per-process state: ONNX sessions and background samples by sha256, one-at-a-time lock."""

    def __init__(self) -> None:
        self.sessions: OrderedDict[str, Any] = OrderedDict()
        self.backgrounds: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = asyncio.Lock()
        self.warm = False

    @staticmethod
    def _keep(cache: OrderedDict[str, Any], key: str, value: Any) -> Any:
        cache[key] = value
        while len(cache) > _CACHED:
            cache.popitem(last=False)
        return value

    def prepare(self, registry: Any, loaded: LoadedVersion) -> tuple[Any, np.ndarray, bool]:
        """(session, background, tree ensemble?) of the version (runs in a worker thread)."""
        info = loaded.info
        digest = background_digest(info)
        background = self.backgrounds.get(digest)
        if background is None:
            background = self._keep(
                self.backgrounds, digest, decode_background(registry.artifacts.get(digest))
            )
        cached = self.sessions.get(info.sha256)
        if cached is None:
            data = registry.load_artifact(info.model, info.version)
            cached = self._keep(self.sessions, info.sha256, (ort_session(data),
                                                              is_tree_ensemble(data)))
        if not self.warm:  # SHAP's numba compilation, once per process, outside the budget
            explain(cached[0], background[:1], background[:2], max_evals=min_evals(
                background.shape[1]), timeout_s=600)
            self.warm = True
        return cached[0], background, cached[1]


def _explainers(request: Request) -> Explainers:
    state = request.app.state
    found = getattr(state, "explainers", None)
    if found is None:
        found = state.explainers = Explainers()
    assert isinstance(found, Explainers)
    return found


def _int_param(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name}: expected an integer, got {value!r}")
    return value


async def _run(
    request: Request, gateway: Any, loaded: LoadedVersion, adapted: InferRequest,
    request_id: str, protocol: str, params: dict[str, Any],
) -> Response:
    """Validate, bound, explain (in a thread), log; the response (errors are logged too)."""
    settings = gateway.settings
    plane: DataPlane = gateway.plane
    started = time.perf_counter()
    info = loaded.info
    status, error, outputs = 200, None, ""
    try:
        feeds = validate_against_signature(adapted, info.signature, loaded.config.nan_policy)
        if len(feeds) != 1:
            raise InvalidRequest("inputs: only a model with one 2-D input can be explained")
        X = next(iter(feeds.values()))
        label = "instances" if protocol == "v1-explain" else "inputs"
        if X.ndim != 2:
            raise InvalidRequest(f"{label}: expected 2-D rows to explain, got shape {X.shape}")
        if X.shape[0] > settings.explain_max_rows:
            raise PayloadTooLarge(
                f"{label}: {X.shape[0]} rows asked to explain; at most "
                f"ROOST_EXPLAIN_MAX_ROWS={settings.explain_max_rows} per request"
            )
        limit = int(settings.explain_max_evals)
        asked = _int_param(params.get("max_evals"), "max_evals")
        need = min_evals(X.shape[1])
        if asked is not None and asked > limit:
            raise InvalidRequest(
                f"max_evals: {asked} is above ROOST_EXPLAIN_MAX_EVALS={limit}"
            )
        evals = asked if asked is not None else min(limit, max(500, need))
        if evals < need:
            raise InvalidRequest(
                f"max_evals: {evals} is too few for {X.shape[1]} features (at least {need}; "
                f"ROOST_EXPLAIN_MAX_EVALS={limit})"
            )
        target = _int_param(params.get("target"), "target")
        explainers = _explainers(request)
        async with explainers.lock:
            sess, background, tree = await asyncio.to_thread(
                explainers.prepare, gateway.registry, loaded
            )
            result = await asyncio.to_thread(
                explain, sess, X, background, max_evals=evals,
                timeout_s=float(settings.explain_timeout_s), target=target,
            )
        rows = result.rows()
        outputs = orjson.dumps(rows).decode()
        body = {
            "model_name": info.model,
            "model_version": str(info.version),
            "id": request_id,
            "method": METHOD,
            "model_kind": "tree_ensemble" if tree else "onnx",
            "output": result.output,
            "max_evals": result.max_evals,
            "background_rows": int(background.shape[0]),
            "feature_names": list(info.signature.feature_names or [])
            or [f"f{i}" for i in range(X.shape[1])],
            "explanations": rows,
        }
    except RoostError as exc:
        status, error = exc.status_code, exc.message
        raise
    except Exception as exc:  # logged as a failure, then rendered 500 by the app
        status, error = 500, f"explanation failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        record = PredictionRecord(
            request_id=request_id, ts=datetime.now(UTC), model=info.model, version=info.version,
            inputs=render_inputs(adapted, None, log_exclude(loaded)), outputs=outputs,
            latency_ms=(time.perf_counter() - started) * 1000.0, status=status,
            user_id=request.headers.get(USER_HEADER), protocol=protocol, error=error,
            variant="explain", route="explain",
        )
        waiter = plane.log_writer.append_durable(record)
        if waiter is not None:
            if status == 200:
                await waiter  # LogUnavailable (503): the answer waits for its record
            else:
                with contextlib.suppress(LogUnavailable):  # never replace the error
                    await waiter
    return Response(orjson.dumps(body), media_type="application/json")


def _request_id(request: Request, body_id: str | None) -> str:
    return body_id or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def _limits(gateway: Any) -> DecodeLimits:
    return DecodeLimits.from_settings(gateway.settings)


def _plane(gateway: Any) -> DataPlane:
    plane = getattr(gateway, "plane", None)
    if plane is None:
        raise ServiceUnavailable("the gateway is starting")
    assert isinstance(plane, DataPlane)
    return plane


@explanations.post("/v1/models/{model}:explain")
async def v1_explain(request: Request, gateway: GatewayDep, model: str) -> Response:
    """KServe v1 ``{"instances": [...]}`` (rows or records; optional ``max_evals``,
    ``target``): attributions of the production version."""
    plane = _plane(gateway)
    body = await request.body()
    records = decode_records(body, _limits(gateway))
    try:
        params = orjson.loads(body)
    except orjson.JSONDecodeError:  # decode_records accepted it: cannot happen
        params = {}
    loaded = plane.repository.resolve(model, None)
    adapted = adapt(records, loaded, plane.limits)
    if isinstance(adapted, EntityBatch):
        raise InvalidRequest("instances: entity instances cannot be explained; send the features")
    request_id = _request_id(request, records.id)
    return await _run(request, gateway, loaded, adapted, request_id, "v1-explain", params)


@explanations.post("/v2/models/{model}/explain")
@explanations.post("/v2/models/{model}/versions/{version}/explain")
async def v2_explain(
    request: Request, gateway: GatewayDep, model: str, version: str | None = None
) -> Response:
    """An OIP v2 infer body (``parameters``: optional ``max_evals``, ``target``): attributions
    of the named version, or the production version."""
    plane = _plane(gateway)
    decoded = decode_infer_request(await request.body(), _limits(gateway))
    loaded = plane.repository.resolve(model, version)
    request_id = _request_id(request, decoded.id)
    return await _run(
        request, gateway, loaded, decoded, request_id, "v2-explain", decoded.parameters
    )
