"""The text-generation handler: route, start, follow, log and mirror one generation.

:class:`TextService` is what the HTTP routes (:mod:`serving.llm.api`) call. It uses the
gateway's own parts: the router picks the version exactly as for any model (A/B, canary,
segments, bandit; ``name:version`` pins one), the residency rule applies, the prediction
recorder logs one record per generation (failures and client aborts included, inputs and
outputs as JSON with the token counts, time to first token and finish reason), and the
decision's shadow versions get a copy of the request, answered off the request path and
logged with ``shadow = true``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from registry.errors import Forbidden, InvalidRequest, RoostError
from serving.auth import Principal
from serving.dataplane import DataPlane
from serving.llm.backend import GenerationRequest, GenerationStream, TextGenerator
from serving.llm.engine import TokenEvent
from serving.llm.remote import TritonGenerate
from serving.pipeline import CallContext, PipelineState
from serving.router import Decision, RequestFacts
from serving.routing_table import LoadedVersion
from serving.shadows import ShadowOrigin

log = logging.getLogger("roost.serving.llm")

FLAGS_HEADER = "roost-flags"


class ClientClosed(RoostError):
    """The client went away before the generation finished (logged as 499)."""

    status_code = 499


def split_model(name: str) -> tuple[str, str | None]:
    """``name`` or ``name:version`` (a version pins the answer; no routing)."""
    model, sep, version = name.rpartition(":")
    if sep and version.isdigit() and model:
        return model, version
    return name, None


def generator_of(loaded: LoadedVersion) -> TextGenerator:
    """The version's text generator: the least busy engine instance, the upstream, or the
    Triton remote's generate extension."""
    generators = [b for b in loaded.backends if hasattr(b, "start")]
    if generators:
        return cast(TextGenerator, min(generators, key=lambda b: getattr(b, "load_now", 0)))
    if loaded.config.backend == "triton":
        return TritonGenerate(loaded.info.model, loaded.config)
    info = loaded.info
    raise InvalidRequest(
        f"model: '{info.model}' version {info.version} is not a text-generation model "
        f"(backend {loaded.config.backend}); use /v2/models/{info.model}/infer"
    )


@dataclass
class Outcome:
    """What a finished (or failed) generation produced."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None


class Run:
    """One generation in progress: iterate :meth:`events`; the log record is written when it
    ends (before the last event is handed on), fails or is abandoned."""

    def __init__(
        self, service: TextService, loaded: LoadedVersion, decision: Decision,
        stream: GenerationStream, call: PipelineState, context: CallContext, inputs: str,
    ) -> None:
        self.service = service
        self.loaded = loaded
        self.decision = decision
        self.stream = stream
        self.call = call
        self.context = context
        self.inputs = inputs
        self.outcome = Outcome()
        self.model = loaded.info.model
        self.version = loaded.info.version
        self.request_id = call.request_id
        self.created = int(time.time())

    async def events(self) -> AsyncIterator[TokenEvent]:
        outcome, service = self.outcome, self.service
        llm = service.llm_metrics
        labels = (self.model, str(self.version))
        last = 0.0
        finished = False
        try:
            async for event in self.stream:
                now = time.perf_counter()
                if event.text:
                    if outcome.ttft_s is None:
                        outcome.ttft_s = now - self.call.started
                        if llm is not None:
                            llm.ttft.labels(*labels).observe(outcome.ttft_s)
                    elif llm is not None:
                        llm.itl.labels(*labels).observe(now - last)
                    last = now
                    outcome.text.append(event.text)
                outcome.completion_tokens = event.completion_tokens
                outcome.prompt_tokens = event.prompt_tokens or self.stream.prompt_tokens
                if event.finish_reason is not None:
                    outcome.finish_reason = event.finish_reason
                    finished = True
                    await self._record(None)
                yield event
        except RoostError as exc:
            finished = True
            await self._record(exc)
            raise
        finally:
            if not finished:  # abandoned (client gone): stop it, log it off the request path
                service.background(self.stream.aclose())
                service.background(self._record(ClientClosed("the client went away")))

    async def collect(self) -> Outcome:
        async for _ in self.events():
            pass
        return self.outcome

    async def _record(self, error: RoostError | None) -> None:
        outcome, service = self.outcome, self.service
        reason = outcome.finish_reason if error is None else (
            "abort" if isinstance(error, ClientClosed) else "error"
        )
        if service.llm_metrics is not None:
            service.llm_metrics.finish(
                self.model, str(self.version), reason or "error", outcome.prompt_tokens,
                outcome.completion_tokens,
            )
        recorder = service.plane.recorder
        if error is None:
            await recorder.text_generation(
                self.model, self.version, self.request_id, self.context, self.inputs,
                outputs_json(outcome), self.call.started, self.decision,
            )
        else:
            await recorder.failure(self.model, self.call, self.context, self.inputs, error)


def outputs_json(outcome: Outcome) -> str:
    return orjson.dumps({
        "text": "".join(outcome.text),
        "finish_reason": outcome.finish_reason,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "ttft_ms": None if outcome.ttft_s is None else round(outcome.ttft_s * 1000, 3),
    }).decode()


def inputs_json(request: GenerationRequest) -> str:
    body: dict[str, Any] = (
        {"prompt": request.prompt} if request.prompt is not None
        else {"messages": [{"role": r, "content": c} for r, c in request.messages]}
    )
    body.update(max_tokens=request.max_tokens, temperature=request.temperature,
                top_p=request.top_p, seed=request.seed, stop=list(request.stop))
    return orjson.dumps(body).decode()


class TextService:
    """Text generation over the gateway's data plane (see the module docstring)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        metrics = plane.metrics
        self.llm_metrics = metrics.llm if metrics is not None else None
        settings = plane.repository.settings
        self.max_shadows = int(getattr(settings, "shadow_queue_size", 1000))
        self._tasks: set[asyncio.Task[Any]] = set()

    def background(self, work: Any) -> None:
        """Run a coroutine to completion off the request (kept referenced until done)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(
        self, model_field: str, request: GenerationRequest, context: CallContext,
        version: str | None = None,
    ) -> Run:
        """Route and start one generation; errors (400, 403, 404, 503) before anything runs."""
        model, pinned = split_model(model_field) if version is None else (model_field, version)
        check_scope(context.principal, model)
        plane = self.plane
        call = PipelineState(time.perf_counter(), context.request_id or plane.new_request_id())
        inputs = inputs_json(request)
        if plane.governance is not None:
            plane.governance.admit(model, context.user_id)
        loaded, decision = plane.repository.route(model, pinned, facts_of(context))
        call.loaded, call.decision = loaded, decision
        try:
            stream = await generator_of(loaded).start(request)
        except RoostError as exc:
            await plane.recorder.failure(model, call, context, inputs, exc)
            raise
        for shadow in decision.shadows:
            self._mirror(model, shadow, request, context, call.request_id, inputs)
        return Run(self, loaded, decision, stream, call, context, inputs)

    def _mirror(
        self, model: str, version: int, request: GenerationRequest, context: CallContext,
        request_id: str, inputs: str,
    ) -> None:
        metrics = self.plane.metrics
        if len(self._tasks) >= self.max_shadows:
            if metrics is not None:
                metrics.record_shadow_copy(model, version, "dropped")
            return
        self.background(self._shadow(model, version, request, context, request_id, inputs))

    async def _shadow(
        self, model: str, version: int, request: GenerationRequest, context: CallContext,
        request_id: str, inputs: str,
    ) -> None:
        """Answer a mirrored copy with the shadow version; log it with ``shadow = true``."""
        started = time.perf_counter()
        outcome, status, error = Outcome(), 200, None
        try:
            loaded = self.plane.repository.resolve(model, str(version))
            stream = await generator_of(loaded).start(request)
            async for event in stream:
                outcome.text.append(event.text)
                outcome.completion_tokens = event.completion_tokens
                outcome.prompt_tokens = event.prompt_tokens
                if event.finish_reason is not None:
                    outcome.finish_reason = event.finish_reason
        except RoostError as exc:
            status, error = exc.status_code, exc.message
        except Exception as exc:  # a shadow's failure stays the shadow's
            status, error = 500, f"shadow failed: {exc}"
        copy = ShadowOrigin(model, version, request_id, context.user_id, context.protocol)
        outputs = outputs_json(outcome) if status == 200 else ""
        self.plane.recorder.shadow(copy, inputs, outputs, started, status, error)
        if self.plane.metrics is not None:
            self.plane.metrics.record_shadow_copy(
                model, version, "mirrored" if status == 200 else "failed"
            )


def check_scope(principal: Principal, model: str) -> None:
    """A model-scoped key reaches its models only (the edge cannot see a body's model)."""
    if principal.models is not None and model not in principal.models:
        raise Forbidden(f"key '{principal.key_id}' lacks role 'predict' for model '{model}'")


def facts_of(context: CallContext) -> RequestFacts:
    """What the router sees: the unit (roost-user), headers and feature flags."""
    raw = context.headers.get(FLAGS_HEADER)
    flags = frozenset(f.strip() for f in raw.split(",") if f.strip()) if raw else frozenset()
    unit = context.user_id if context.user_id is not None else context.unit
    return RequestFacts(unit, context.headers, {}, flags)
