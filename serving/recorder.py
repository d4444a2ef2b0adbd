"""The data plane's log step: one prediction record per answer (and per failure), with metrics.

The ``inputs`` column is always the pipeline's rendering (:mod:`serving.protocol.render`):
``render_inputs`` of the request the version saw and the online features used, or
``render_rejected`` for a payload that did not decode; ``outputs`` is the v2 JSON of the outputs.
``region`` is the gateway's ``ROOST_REGION``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import orjson

from registry import RoostError
from registry.errors import DeadlineExceeded
from serving.batching import ExecutionTimeout, InstancesStuck, QueueFull
from serving.breaker import BreakerOpen
from serving.metrics import GatewayMetrics
from serving.protocol.json_codec import tensor_json
from serving.router import Decision
from serving.shadows import ShadowOrigin
from warehouse import LogUnavailable, PredictionLogWriter, PredictionRecord

if TYPE_CHECKING:
    from serving.governance import Governance
    from serving.pipeline import CallContext, InferResult, PipelineState

__all__ = ["PredictionRecorder", "outputs_json"]


def outputs_json(outputs: list[tuple[str, np.ndarray]]) -> str:
    """The outputs as v2 JSON tensors; numeric data serialized by orjson straight from numpy
    (each value in its own precision, e.g. FP32's shortest form), as the response is."""
    return orjson.dumps(
        [tensor_json(name, array, numpy_data=True) for name, array in outputs],
        option=orjson.OPT_SERIALIZE_NUMPY,
    ).decode()


class PredictionRecorder:
    """Writes prediction records and counts requests (``roost_requests``, rejections)."""

    def __init__(
        self,
        writer: PredictionLogWriter,
        metrics: GatewayMetrics | None,
        region: str | None = None,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.region = region  # ROOST_REGION: every record says which region served it
        self.governance: Governance | None = None  # consent and attributes (governance.py)

    async def success(
        self, result: InferResult, context: CallContext, inputs: str, started: float
    ) -> None:
        await self._record(
            result.model, result.version, result.request_id, context, inputs,
            outputs_json(result.outputs), started, 200, None, result.decision,
            defer=context.durable,
        )

    async def failure(
        self, model: str, call: PipelineState, context: CallContext, inputs: str,
        exc: RoostError,
    ) -> None:
        """Record a failed request against the version that would have answered; never
        raises (the caller re-raises ``exc``: a log failure must not replace it)."""
        loaded = call.loaded
        if loaded is None:  # requests for models that do not exist are not predictions
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
        with contextlib.suppress(LogUnavailable):
            await self._record(
                model, loaded.info.version, call.request_id, context, inputs, "", call.started,
                exc.status_code, exc.message, call.decision,
            )

    async def text_generation(
        self, model: str, version: int, request_id: str, context: CallContext, inputs: str,
        outputs: str, started: float, decision: Decision,
    ) -> None:
        """A finished text generation (serving/llm/): ``inputs``/``outputs`` as JSON text."""
        await self._record(
            model, version, request_id, context, inputs, outputs, started, 200, None, decision
        )

    def _count_durable(
        self, model: str, version: str, protocol: str, status: int, started: float,
        variant: str, waiter: asyncio.Future[None],
    ) -> None:
        """Count a request whose log wait its transport awaited (``defer``)."""
        if waiter.cancelled() or self.metrics is None:
            return
        if waiter.exception() is not None:
            status = LogUnavailable.status_code
        self.metrics.record_request(
            model, version, protocol, status, time.perf_counter() - started, variant=variant
        )

    def shadow(
        self, copy: ShadowOrigin, inputs: str, outputs: str, started: float, status: int,
        error: str | None,
    ) -> None:
        """A shadow's answer (``shadow = true``, under the primary's request id ``copy``
        names); not durable-waited: nobody receives this answer."""
        user_id = copy.user_id
        if self.governance is not None:
            user_id, inputs, outputs = self.governance.for_log(user_id, {}, inputs, outputs)
        self.writer.append(
            PredictionRecord(
                request_id=copy.request_id,
                ts=datetime.now(UTC),
                model=copy.model,
                version=copy.version,
                inputs=inputs,
                outputs=outputs,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                status=status,
                user_id=user_id,
                protocol=copy.protocol,
                error=error,
                variant=f"shadow-v{copy.version}",
                route="shadow",
                shadow=True,
                region=self.region,
            )
        )

    async def _record(
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
        decision: Decision | None,
        defer: list[asyncio.Future[None]] | None = None,
    ) -> None:
        """Record one prediction and wait until the record is durable (``log_durability``), so
        the transport answers only then; raises ``LogUnavailable`` (503) if the log cannot store
        it. With ``defer`` the wait is appended there for the transport to await (after it has
        encoded its answer) and the request is counted when it ends. The metric's latency
        includes that wait."""
        variant = decision.variant if decision else ""
        user_id = context.user_id
        if self.governance is not None:  # attributes logged; consent-minimised records
            user_id, inputs, outputs = self.governance.for_log(
                user_id, context.headers, inputs, outputs
            )
        waiter = self.writer.append_durable(
            PredictionRecord(
                request_id=request_id,
                ts=datetime.now(UTC),
                model=model,
                version=version,
                inputs=inputs,
                outputs=outputs,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                status=status,
                user_id=user_id,
                protocol=context.protocol,
                error=error,
                variant=decision.variant if decision else None,
                experiment=decision.experiment if decision else None,
                route=decision.route if decision else None,
                region=self.region,
            ),
            alone=defer is not None and context.alone,
        )
        if waiter is not None and defer is not None:
            defer.append(waiter)
            if self.metrics is not None:
                waiter.add_done_callback(
                    functools.partial(
                        self._count_durable, model, str(version), context.protocol, status,
                        started, variant,
                    )
                )
            return
        if waiter is not None:
            try:
                await waiter
            except LogUnavailable:
                if self.metrics is not None:
                    self.metrics.record_request(
                        model, str(version), context.protocol, LogUnavailable.status_code,
                        time.perf_counter() - started, variant=variant,
                    )
                raise
        if self.metrics is not None:
            self.metrics.record_request(
                model, str(version), context.protocol, status, time.perf_counter() - started,
                variant=variant,
            )
