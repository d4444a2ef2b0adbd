"""The data plane: one set of handlers that every transport (REST today, gRPC next) calls.

Transports decode their wire format into an :class:`~serving.oip.InferRequest`, call
:meth:`DataPlane.infer`, and encode the :class:`InferResult`. Every inference, failed ones
included, is recorded in the prediction log.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from registry import InvalidRequest, RoostError
from registry.errors import DeadlineExceeded
from serving import oip
from serving.batching import ExecutionTimeout, InstancesStuck, QueueFull
from serving.breaker import BreakerOpen
from serving.kserve_v1 import decode_instances
from serving.metrics import GatewayMetrics
from serving.repository import LoadedVersion, ModelRepository
from serving.router import Decision, RequestFacts
from serving.shadows import ShadowCopy, ShadowMirror
from warehouse import LogUnavailable, PredictionLogWriter, PredictionRecord

SERVER_NAME = "roost"
SERVER_VERSION = "0.1.0"
MAX_LOGGED_INPUT_CHARS = 65536
EXTENSIONS = ("binary_tensor_data", "model_repository")
FLAGS_HEADER = "roost-flags"
RECENT_REQUESTS = 100_000  # served request ids remembered in memory for feedback
LOG_FEATURES_PARAMETER = "roost.features"  # features.online.LOG_PARAMETER


@dataclass(frozen=True)
class CallContext:
    """What a transport knows about the caller, beyond the payload."""

    protocol: str
    user_id: str | None = None
    request_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers with lower-case names (segment rules and feature flags read them)."""
    unit: str | None = None
    """The experiment unit when it is not the user (e.g. an entity id); default: user_id."""


@dataclass(frozen=True)
class InferResult:
    model: str
    version: int
    request_id: str
    outputs: list[tuple[str, np.ndarray]]
    decision: Decision

    def response_parameters(self) -> dict[str, str]:
        """The router's decision, as OIP response ``parameters``."""
        params = {"roost_variant": self.decision.variant, "roost_route": self.decision.route}
        if self.decision.experiment:
            params["roost_experiment"] = self.decision.experiment
        return params


class DataPlane:
    """Transport-independent handlers for metadata, readiness and inference."""

    def __init__(
        self,
        repository: ModelRepository,
        log_writer: PredictionLogWriter,
        metrics: GatewayMetrics | None = None,
        shadow_queue: int = 1000,
        shadow_concurrency: int = 64,
    ) -> None:
        self.repository = repository
        self.log_writer = log_writer
        self.metrics = metrics
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

    def _new_id(self) -> str:
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

    # -- inference --------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        version: str | None,
        payload: bytes,
        decode: Callable[[bytes], oip.InferRequest],
        context: CallContext,
        decode_for: Callable[[bytes, LoadedVersion], oip.InferRequest] | None = None,
    ) -> tuple[oip.InferRequest, InferResult]:
        """Decode, route, validate, queue for the batcher, log, and mirror one request.

        ``decode`` turns the transport's payload into an OIP request (``decode_for`` instead, when
        decoding depends on the chosen version, as KServe v1 records do); a payload it rejects
        is logged against the version that would have answered. The router (see
        :mod:`serving.router`) picks the version unless ``version`` pins one;
        shadow copies are offered to the mirror after the primary has its answer.
        """
        started = time.perf_counter()
        request_id = context.request_id or ""
        raw_inputs = payload[:MAX_LOGGED_INPUT_CHARS].decode("utf-8", "replace")
        loaded: LoadedVersion | None = None
        decision: Decision | None = None
        try:
            facts = _facts(context, None)
            loaded, decision = self.repository.route(model, version, facts)
            request = decode(payload) if decode_for is None else decode_for(payload, loaded)
            if request.parameters and self.repository.routes_on_attributes(model):
                loaded, decision = self.repository.route(
                    model, version, _facts(context, request.parameters)
                )
            used = request.parameters.pop(LOG_FEATURES_PARAMETER, None)
            if used is not None:  # features looked up in the online store, for the log
                raw_inputs = orjson.dumps({"request": raw_inputs, "features": used}).decode()
            request_id = request.id or request_id or self._new_id()
            feeds = oip.validate_against_signature(
                request, loaded.info.signature, loaded.config.nan_policy
            )
            outputs = await loaded.batcher.submit(feeds, _timeout_ms(request))
            selected = oip.select_outputs(request, loaded.info.signature, outputs)
        except RoostError as exc:
            request_id = request_id or self._new_id()
            await self._log_failure(
                model, loaded, decision, request_id, context, raw_inputs, started, exc
            )
            raise
        result = InferResult(model, loaded.info.version, request_id, selected, decision)
        self._remember(request_id, model, decision)
        await self._log(
            model, loaded.info.version, request_id, context, raw_inputs,
            _outputs_json(selected), started, 200, None, decision,
        )
        if decision.shadows:
            for shadow in decision.shadows:
                self.mirror.offer(
                    ShadowCopy(
                        model, shadow, request_id, request, raw_inputs, context.user_id,
                        context.protocol,
                    )
                )
        return request, result

    async def run_shadow(self, copy: ShadowCopy) -> None:
        """Answer one mirrored copy with its shadow version and log it (``shadow = true``).

        Not durable-waited: nobody receives this answer.
        """
        started = time.perf_counter()
        loaded = self.repository.resolve(copy.model, str(copy.version))
        status, error, outputs = 200, None, ""
        try:
            feeds = oip.validate_against_signature(
                copy.request, loaded.info.signature, loaded.config.nan_policy
            )
            result = await loaded.batcher.submit(feeds, None)
            outputs = _outputs_json(oip.select_outputs(copy.request, loaded.info.signature, result))
        except RoostError as exc:
            status, error = exc.status_code, exc.message
        except Exception as exc:  # the shadow's failure stays the shadow's
            status, error = 500, f"shadow failed: {exc}"
        self.log_writer.append(
            PredictionRecord(
                request_id=copy.request_id,
                ts=datetime.now(UTC),
                model=copy.model,
                version=copy.version,
                inputs=copy.inputs_text,
                outputs=outputs,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                status=status,
                user_id=copy.user_id,
                protocol=copy.protocol,
                error=error,
                variant=f"shadow-v{copy.version}",
                route="shadow",
                shadow=True,
            )
        )
        if status != 200:
            raise RoostError(error or "shadow failed")

    def instances_to_request(
        self, model: str, version: str | None, payload: bytes
    ) -> oip.InferRequest:
        """Decode a KServe v1 body (see :func:`serving.kserve_v1.decode_instances`)."""
        return decode_instances(self, model, version, payload)

    def instances_for(self, payload: bytes, loaded: LoadedVersion) -> oip.InferRequest:
        """Decode a KServe v1 body for the version the router chose."""
        return decode_instances(self, loaded.info.model, str(loaded.info.version), payload)

    # -- logging ----------------------------------------------------------------------------

    async def _log(
        self,
        model: str,
        version: int,
        request_id: str,
        context: CallContext,
        inputs: str,
        outputs: str,
        started: float,
        status: int,
        error: str | None,
        decision: Decision | None = None,
    ) -> None:
        """Record one prediction and wait until the record is durable (``log_durability:
        fsync``), so the transport answers only then; raises ``LogUnavailable`` (503) if the log
        cannot store it. The metric's latency includes that wait."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        waiter = self.log_writer.append_durable(
            PredictionRecord(
                request_id=request_id,
                ts=datetime.now(UTC),
                model=model,
                version=version,
                inputs=inputs[:MAX_LOGGED_INPUT_CHARS],
                outputs=outputs,
                latency_ms=latency_ms,
                status=status,
                user_id=context.user_id,
                protocol=context.protocol,
                error=error,
                variant=decision.variant if decision else None,
                experiment=decision.experiment if decision else None,
                route=decision.route if decision else None,
            )
        )
        if waiter is not None:
            try:
                await waiter
            except LogUnavailable:
                if self.metrics is not None:
                    self.metrics.record_request(
                        model, str(version), context.protocol, LogUnavailable.status_code,
                        time.perf_counter() - started,
                        variant=decision.variant if decision else "",  # traffic: per-variant
                    )
                raise
        if self.metrics is not None:
            self.metrics.record_request(
                model, str(version), context.protocol, status, time.perf_counter() - started,
                variant=decision.variant if decision else "",  # traffic: per-variant metrics
            )

    async def _log_failure(
        self,
        model: str,
        loaded: LoadedVersion | None,
        decision: Decision | None,
        request_id: str,
        context: CallContext,
        inputs: str,
        started: float,
        exc: RoostError,
    ) -> None:
        # Requests for models that do not exist are not predictions: nothing to record.
        if loaded is None:
            return
        if (
            self.metrics is not None
            and isinstance(exc, QueueFull | BreakerOpen | DeadlineExceeded)
            and not isinstance(exc, ExecutionTimeout)  # it ran: roost_execution_timeouts
        ):
            reason = (
                "breaker_open" if isinstance(exc, BreakerOpen)
                else "instances_stuck" if isinstance(exc, InstancesStuck)
                else "queue_full" if isinstance(exc, QueueFull) else "deadline"
            )
            self.metrics.record_rejection(model, str(loaded.info.version), reason)
        # The caller re-raises ``exc``: a log failure must not replace the request's own error.
        with contextlib.suppress(LogUnavailable):
            await self._log(
                model, loaded.info.version, request_id, context, inputs, "", started,
                exc.status_code, exc.message, decision,
            )


def _facts(context: CallContext, attributes: dict[str, Any] | None) -> RequestFacts:
    headers = context.headers
    raw_flags = headers.get(FLAGS_HEADER)
    flags = frozenset(f.strip() for f in raw_flags.split(",") if f.strip()) if raw_flags else (
        frozenset()
    )
    unit = context.user_id if context.user_id is not None else context.unit
    return RequestFacts(unit, headers, attributes or {}, flags)


def _timeout_ms(request: oip.InferRequest) -> float | None:
    """The request's queue deadline: Triton's ``parameters.timeout`` in microseconds."""
    raw = request.parameters.get("timeout")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise InvalidRequest(f"parameters.timeout: expected microseconds > 0, got {raw!r}")
    return float(raw) / 1000.0


def _outputs_json(outputs: list[tuple[str, np.ndarray]]) -> str:
    return orjson.dumps([oip.tensor_to_json(name, array) for name, array in outputs]).decode()
