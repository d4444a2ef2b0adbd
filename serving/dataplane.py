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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from registry import InvalidRequest, RoostError
from registry.errors import DeadlineExceeded
from serving import oip
from serving.batching import QueueFull
from serving.metrics import GatewayMetrics
from serving.repository import LoadedVersion, ModelRepository
from warehouse import LogUnavailable, PredictionLogWriter, PredictionRecord

SERVER_NAME = "roost"
SERVER_VERSION = "0.1.0"
MAX_LOGGED_INPUT_CHARS = 65536
EXTENSIONS = ("binary_tensor_data", "model_repository")


@dataclass(frozen=True)
class CallContext:
    """What a transport knows about the caller, beyond the payload."""

    protocol: str
    user_id: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class InferResult:
    model: str
    version: int
    request_id: str
    outputs: list[tuple[str, np.ndarray]]


class DataPlane:
    """Transport-independent handlers for metadata, readiness and inference."""

    def __init__(
        self,
        repository: ModelRepository,
        log_writer: PredictionLogWriter,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.repository = repository
        self.log_writer = log_writer
        self.metrics = metrics
        # Request ids: a random per-process prefix and a counter (uuid4 costs a system call).
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

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
    ) -> tuple[oip.InferRequest, InferResult]:
        """Decode, route, validate, queue for the batcher, and log one inference request.

        ``decode`` turns the transport's payload into an OIP request; a payload it rejects is
        logged against the version that would have answered, like any other failed prediction.
        """
        started = time.perf_counter()
        request_id = context.request_id or ""
        raw_inputs = payload[:MAX_LOGGED_INPUT_CHARS].decode("utf-8", "replace")
        loaded: LoadedVersion | None = None
        try:
            loaded = self.repository.resolve(model, version)
            request = decode(payload)
            request_id = request.id or request_id or self._new_id()
            feeds = oip.validate_against_signature(request, loaded.info.signature)
            outputs = await loaded.batcher.submit(feeds, _timeout_ms(request))
            selected = oip.select_outputs(request, loaded.info.signature, outputs)
        except RoostError as exc:
            request_id = request_id or self._new_id()
            await self._log_failure(model, loaded, request_id, context, raw_inputs, started, exc)
            raise
        result = InferResult(model, loaded.info.version, request_id, selected)
        await self._log(
            model, loaded.info.version, request_id, context, raw_inputs,
            _outputs_json(selected), started, 200, None,
        )
        return request, result

    def instances_to_request(
        self, model: str, version: str | None, payload: bytes
    ) -> oip.InferRequest:
        """Decode a KServe v1 body: map ``instances`` (records or rows) onto the model's input.

        When the version names a feature service (``tags["feature_service"]``), instances may
        name entities instead: ``{"entities": {"customer_id": 42}, "features": {...}}``. The
        batch's features are then looked up in the online store in one call (see
        :mod:`features.online`) and the values used are returned under the request parameter
        ``roost.features`` for the prediction log.
        """
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or "instances" not in body:
            raise InvalidRequest('request body must be an object with "instances": [...]')
        instances = body["instances"]
        info = self.repository.resolve(model, version).info
        signature = info.signature
        if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 2:
            raise InvalidRequest(
                f"model '{model}' does not take one 2-D input; use the v2 infer endpoint"
            )
        spec = signature.inputs[0]
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest("instances: expected a non-empty list of records or rows")
        names = signature.feature_names
        rows: list[list[Any]] = []
        parameters: dict[str, Any] = {}
        if isinstance(instances[0], dict) and "entities" in instances[0]:
            service = info.tags.get("feature_service")
            if not isinstance(service, str) or names is None:
                raise InvalidRequest(
                    f"instances[0].entities: model '{model}' version {info.version} has no "
                    "feature service; send the features inline"
                )
            from features.online import LOG_PARAMETER, shared_online_features

            features = getattr(self, "features", None) or shared_online_features(
                self.repository.settings.home
            )
            lookup = features.lookup(service, names, instances)
            rows = lookup.rows
            parameters[LOG_PARAMETER] = lookup.to_log()
        else:  # records or rows, inline
            for i, instance in enumerate(instances):
                if isinstance(instance, dict):
                    if names is None:
                        raise InvalidRequest(
                            f"instances[{i}]: model '{model}' has no feature names; send rows "
                            "(lists of values) instead of records"
                        )
                    unknown = sorted(set(instance) - set(names))
                    if unknown:
                        raise InvalidRequest(
                            f"instances[{i}]: unknown feature '{unknown[0]}'; expected features: "
                            + ", ".join(names)
                        )
                    missing = [n for n in names if n not in instance]
                    if missing:
                        raise InvalidRequest(f"instances[{i}]: missing feature '{missing[0]}'")
                    rows.append([instance[n] for n in names])
                elif isinstance(instance, list):
                    rows.append(instance)
                else:
                    raise InvalidRequest(f"instances[{i}]: expected an object or a list")
        width = spec.shape[1]
        for i, row in enumerate(rows):
            if width >= 0 and len(row) != width:
                raise InvalidRequest(
                    f"instances[{i}]: expected {width} values, got {len(row)}"
                )
        shape = (len(rows), width if width >= 0 else len(rows[0]))
        array = oip.json_data_to_array(spec.name, spec.datatype, shape, rows)
        return oip.InferRequest(
            id=body.get("id") if isinstance(body.get("id"), str) else None,
            inputs=[oip.RequestInput(spec.name, spec.datatype, shape, array, {})],
            outputs=None,
            parameters=parameters,
        )

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
                    )
                raise
        if self.metrics is not None:
            self.metrics.record_request(
                model, str(version), context.protocol, status, time.perf_counter() - started
            )

    async def _log_failure(
        self,
        model: str,
        loaded: LoadedVersion | None,
        request_id: str,
        context: CallContext,
        inputs: str,
        started: float,
        exc: RoostError,
    ) -> None:
        # Requests for models that do not exist are not predictions: nothing to record.
        if loaded is None:
            return
        if self.metrics is not None and isinstance(exc, QueueFull | DeadlineExceeded):
            reason = "queue_full" if isinstance(exc, QueueFull) else "deadline"
            self.metrics.record_rejection(model, str(loaded.info.version), reason)
        # The caller re-raises ``exc``: a log failure must not replace the request's own error.
        with contextlib.suppress(LogUnavailable):
            await self._log(
                model, loaded.info.version, request_id, context, inputs, "", started,
                exc.status_code, exc.message,
            )


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
