"""The data plane: one request pipeline that every transport (REST, gRPC, KServe v1) calls.

Transports decode their wire format themselves, with the gateway's limits, and hand
:meth:`DataPlane.infer` a decoded request (:class:`~serving.protocol.InferRequest`, or a
:class:`~serving.pipeline.RecordsRequest` for KServe v1 instances); a payload that does not
decode goes to :meth:`DataPlane.reject` instead. ``infer`` is the pipeline, one method per step:

1. **route**: the router picks the version (unless the request pins one);
2. **adapt**: the request as that version's input (v1 records in its feature order), or the
   entity batch to look up (:mod:`serving.pipeline`);
3. **enrich**: entity batches only: online features, off the event loop;
4. **validate**: against the version's signature and ``nan_policy``;
5. **batch**: the version's batcher and backend;
6. **log**: the prediction log (durable before the answer); ``inputs`` is always
   :func:`~serving.protocol.render.render_inputs` of the adapted request and the features used;
7. **mirror**: copies for the decision's shadows, answered off the request path.

Every inference, failed ones included, is recorded in the prediction log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from registry import InvalidRequest, RoostError
from serving.metrics import GatewayMetrics
from serving.pipeline import (
    CallContext,
    EntityBatch,
    InferResult,
    PipelineState,
    RecordsRequest,
    Rejected,
    adapt,
)
from serving.protocol.render import render_inputs, render_rejected
from serving.protocol.types import DEFAULT_LIMITS, DecodeLimits, InferRequest
from serving.protocol.validation import select_outputs, validate_against_signature
from serving.recorder import PredictionRecorder, outputs_json
from serving.repository import LoadedVersion, ModelRepository
from serving.router import Decision, RequestFacts
from serving.shadows import ShadowCopy, ShadowMirror
from warehouse import PredictionLogWriter
from warehouse.minimise import log_exclude_of

if TYPE_CHECKING:
    from features.online import OnlineFeatures
    from serving.governance import Governance

__all__ = ["CallContext", "DataPlane", "InferResult", "RecordsRequest", "Rejected"]

logger = logging.getLogger(__name__)

SERVER_NAME = "roost"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("binary_tensor_data", "model_repository")
FLAGS_HEADER = "roost-flags"
RECENT_REQUESTS = 100_000  # served request ids remembered in memory for feedback


class DataPlane:
    """Transport-independent handlers for metadata, readiness and inference."""

    governance: Governance | None = None
    """Residency refusals, consent-minimised logging (serving/governance.py; app.py installs)."""

    def __init__(
        self,
        repository: ModelRepository,
        log_writer: PredictionLogWriter,
        metrics: GatewayMetrics | None = None,
        shadow_queue: int = 1000,
        shadow_concurrency: int = 64,
        features: OnlineFeatures | None = None,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.repository = repository
        self.features = features  # the online store's lookups (the enrich step)
        settings = getattr(repository, "settings", None)
        self.limits = limits or (
            DecodeLimits.from_settings(settings) if settings is not None else DEFAULT_LIMITS
        )
        """The limits for what the pipeline builds itself (adapted records, looked-up rows)."""
        self.log_writer = log_writer
        self.metrics = metrics
        region = getattr(settings, "region", None)  # ROOST_REGION, on every log row
        self.recorder = PredictionRecorder(log_writer, metrics, region)
        self.mirror = ShadowMirror(
            self.run_shadow, max_queue=shadow_queue, workers=shadow_concurrency
        )
        if metrics is not None:
            self.mirror.on_drop = metrics.record_shadow_drop
            self.mirror.on_outcome = metrics.record_shadow_copy  # traffic: copies by outcome
        # Recent request ids -> (model, version, experiment, route), for feedback.
        self.recent: OrderedDict[str, tuple[str, int, str | None, str]] = OrderedDict()
        # Request ids: a random per-process prefix and a counter (uuid4 costs a system call).
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

    def _remember(self, request_id: str, model: str, decision: Decision) -> None:
        recent = self.recent
        recent[request_id] = (model, decision.version, decision.experiment, decision.route)
        if len(recent) > RECENT_REQUESTS:
            recent.popitem(last=False)

    def new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    # -- metadata ---------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        loaded = self.repository.resolve(model, version)
        info = loaded.info
        served = sorted(v for m, v in self.repository.table.loaded if m == model)
        return {
            "name": model,
            "versions": [str(v) for v in served],
            "platform": loaded.platform,
            "inputs": [t.to_dict() for t in info.signature.inputs],
            "outputs": [t.to_dict() for t in info.signature.outputs],
            "parameters": {
                "version": str(info.version),
                "state": info.state.value,
                "sha256": info.sha256,
                "feature_names": list(info.signature.feature_names or []),
            },
        }

    def model_ready(self, model: str, version: str | None) -> bool:
        self.repository.resolve(model, version)
        return True

    # -- inference: the pipeline ---------------------------------------------------------

    async def infer(
        self,
        model: str,
        version: str | None,
        request: InferRequest | RecordsRequest,
        context: CallContext,
    ) -> InferResult:
        """Answer one decoded request: route, adapt, enrich, validate, batch, log, mirror.

        Every step is a method below; a step's :class:`RoostError` is logged against the version
        that would have answered (when there is one) and raised to the transport.
        """
        request_id = request.id or context.request_id or self.new_request_id()
        call = PipelineState(time.perf_counter(), request_id)
        try:
            if self.governance is not None:  # 451 before routing: nothing computed or logged
                self.governance.admit(model, context.user_id)
            loaded, decision = call.loaded, call.decision = self.route(
                model, version, request, context
            )
            adapted = adapt(request, loaded, self.limits)
            if isinstance(adapted, EntityBatch):
                adapted, call.features = await self.enrich(adapted)
            call.adapted = adapted
            feeds = self.validate(adapted, loaded)
            outputs = await self.batch(adapted, loaded, feeds, context.arrived)
        except RoostError as exc:
            inputs = self._failed_inputs(request, call)
            await self.recorder.failure(model, call, context, inputs, exc)
            raise
        result = InferResult(
            model, loaded.info.version, call.request_id, outputs, decision, adapted
        )
        self._remember(call.request_id, model, decision)
        inputs = render_inputs(adapted, call.features, log_exclude(loaded))
        await self.recorder.success(result, context, inputs, call.started)
        if decision.shadows:
            self.mirror_copies(result, request, inputs, context)
        return result

    def route(
        self,
        model: str,
        version: str | None,
        request: InferRequest | RecordsRequest,
        context: CallContext,
    ) -> tuple[LoadedVersion, Decision]:
        """The version that answers (the router's choice unless ``version`` pins one)."""
        return self.repository.route(model, version, _facts(context, request))

    async def enrich(self, batch: EntityBatch) -> tuple[InferRequest, dict[str, Any]]:
        """Look the batch's entities up in the online store, off the event loop (one
        ``get_online_features`` call); the model input and the features used, for the log."""
        online = self.online_features()
        if batch.instances is not None:
            instances = batch.instances
            lookup = await asyncio.to_thread(
                online.lookup, batch.service, batch.feature_names, instances, batch.where
            )
        else:
            columns = batch.columns or {}
            lookup = await asyncio.to_thread(
                online.lookup_columns, batch.service, batch.feature_names, columns
            )
        return batch.to_request(lookup.rows, self.limits), lookup.to_log()

    def online_features(self) -> OnlineFeatures:
        """The online store's lookups (opened by the gateway at start when a version needs it)."""
        if self.features is None:
            from features.online import shared_online_features

            self.features = shared_online_features(self.repository.settings.home)
        return self.features

    def validate(self, request: InferRequest, loaded: LoadedVersion) -> dict[str, np.ndarray]:
        """The request against the version's signature (and its ``nan_policy``)."""
        return validate_against_signature(
            request, loaded.info.signature, loaded.config.nan_policy
        )

    async def batch(
        self,
        request: InferRequest,
        loaded: LoadedVersion,
        feeds: dict[str, np.ndarray],
        arrived: float | None = None,
    ) -> list[tuple[str, np.ndarray]]:
        """Queue for the version's batcher (the deadline counts from ``arrived``); the outputs
        the request asked for."""
        outputs = await loaded.batcher.submit(feeds, _timeout_ms(request), arrived)
        return select_outputs(request, loaded.info.signature, outputs)

    def mirror_copies(
        self,
        result: InferResult,
        request: InferRequest | RecordsRequest,
        inputs: str,
        context: CallContext,
    ) -> None:
        """Offer a copy to each shadow of the decision (never waits)."""
        for shadow in result.decision.shadows:
            self.mirror.offer(
                ShadowCopy(
                    result.model, shadow, result.request_id, request, result.request, inputs,
                    context.user_id, context.protocol,
                )
            )

    async def reject(
        self,
        model: str,
        version: str | None,
        context: CallContext,
        error: RoostError,
        preview: Rejected,
    ) -> NoReturn:
        """Log a payload the transport could not decode against the version that would have
        answered it, then raise ``error`` (an unknown model raises NotFound, unlogged)."""
        request_id = preview.request_id or context.request_id or self.new_request_id()
        call = PipelineState(time.perf_counter(), request_id)
        call.loaded, call.decision = self.repository.route(model, version, _facts(context, None))
        await self.recorder.failure(model, call, context, preview.render(), error)
        raise error

    @staticmethod
    def _failed_inputs(request: InferRequest | RecordsRequest, call: PipelineState) -> str:
        """The log's inputs for a request that failed: as far as it got."""
        exclude = log_exclude(call.loaded)
        if call.adapted is not None:
            return render_inputs(call.adapted, call.features, exclude)
        if isinstance(request, RecordsRequest):
            return render_rejected(request.size)
        return render_inputs(request, None, exclude)

    async def run_shadow(self, copy: ShadowCopy) -> None:
        """Answer one mirrored copy with its shadow version and log it (``shadow = true``).

        The copy is adapted (and its entities looked up) for the shadow version itself; its
        ``inputs`` are what that version saw. Not durable-waited: nobody receives this answer.
        """
        started = time.perf_counter()
        loaded = self.repository.resolve(copy.model, str(copy.version))
        status, error, outputs, inputs = 200, None, "", copy.inputs
        try:
            adapted = adapt(copy.request, loaded, self.limits)
            if isinstance(adapted, EntityBatch):
                request, features = await self.enrich(adapted)
                inputs = render_inputs(request, features, log_exclude(loaded))
            elif adapted is not copy.adapted:
                request, inputs = adapted, render_inputs(adapted, None, log_exclude(loaded))
            else:
                request = adapted
            feeds = self.validate(request, loaded)
            outputs = outputs_json(await self.batch(request, loaded, feeds))
        except RoostError as exc:
            status, error = exc.status_code, exc.message
        except Exception as exc:  # the shadow's failure stays the shadow's
            status, error = 500, f"shadow failed: {exc}"
        self.recorder.shadow(copy.origin, inputs, outputs, started, status, error)
        if status != 200:
            raise RoostError(error or "shadow failed")


def log_exclude(loaded: LoadedVersion | None) -> frozenset[str]:
    """The inputs (and features) the version's ``log_exclude`` keeps out of the log."""
    if loaded is None:
        return frozenset()
    try:
        return log_exclude_of(loaded.info.config)
    except RoostError as exc:  # `roost config` checks it; a bad value must not fail requests
        logger.error("%s version %s: %s", loaded.info.model, loaded.info.version, exc.message)
        return frozenset()


def _facts(context: CallContext, request: InferRequest | RecordsRequest | None) -> RequestFacts:
    """What the router sees: the unit, headers, the request's parameters and feature flags."""
    headers = context.headers
    raw_flags = headers.get(FLAGS_HEADER)
    flags = frozenset(f.strip() for f in raw_flags.split(",") if f.strip()) if raw_flags else (
        frozenset()
    )
    unit = context.user_id if context.user_id is not None else context.unit
    if unit is None and isinstance(request, RecordsRequest):
        unit = request.entity_unit()
    attributes = request.parameters if request is not None else None
    return RequestFacts(unit, headers, attributes or {}, flags)


def _timeout_ms(request: InferRequest) -> float | None:
    """The request's queue deadline: Triton's ``parameters.timeout`` in microseconds."""
    raw = request.parameters.get("timeout")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise InvalidRequest(f"parameters.timeout: expected microseconds > 0, got {raw!r}")
    return float(raw) / 1000.0
