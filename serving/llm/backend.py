"""Text-generation backends behind the router: ``llm`` (the engine here) and ``openai``.

Both are model backends like the others (the repository loads, warms up and closes them), and
both are :class:`TextGenerator` s: :meth:`~TextGenerator.start` checks and queues one request
and returns its :class:`GenerationStream` (raising 400/503 before anything streams), which
yields :class:`~serving.llm.engine.TokenEvent` s. ``backend: triton`` versions generate through
the remote's generate extension (:mod:`serving.llm.remote`). OIP ``infer`` on a text-generation
version is refused: it has no tensor interface worth calling from outside.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from registry import RoostSettings, ServingConfig, VersionInfo
from registry.errors import InvalidRequest
from serving.llm.engine import EngineObserver, Generation, LLMEngine, TokenEvent
from serving.llm.model import CausalLM
from serving.llm.sampling import SamplingParams
from serving.llm.scheduler import SchedulerLimits

Tensors = dict[str, Any]


@dataclass(frozen=True)
class GenerationRequest:
    """One request, whichever API it came through (a prompt, or chat messages)."""

    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = ()
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        return self.prompt is None


class GenerationStream(Protocol):
    """The events of one generation; ``aclose`` stops it early (the client went away)."""

    prompt_tokens: int

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def aclose(self) -> None: ...


class TextGenerator(Protocol):
    async def start(self, request: GenerationRequest) -> GenerationStream: ...


def refuse_infer(model: str) -> InvalidRequest:
    return InvalidRequest(
        f"model '{model}' generates text: use POST /v1/completions, /v1/chat/completions or "
        f"/v2/models/{model}/generate"
    )


class _EngineStream:
    """A :class:`~serving.llm.engine.Generation` as a :class:`GenerationStream`."""

    def __init__(self, generation: Generation) -> None:
        self.generation = generation
        self.prompt_tokens = generation.prompt_tokens

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self.generation

    async def aclose(self) -> None:
        self.generation.cancel()


class LLMBackend:
    """The project's ONNX language models, run by an :class:`LLMEngine` in the gateway."""

    platform = "onnxruntime_llm"

    def __init__(self, model: str, lm: CausalLM, config: ServingConfig) -> None:
        self.model_name = model
        self.lm = lm
        self.providers = lm.providers
        kv_tokens = int(config.kv_cache_budget_mb * 2**20 // lm.config.bytes_per_token)
        self.limits = SchedulerLimits(
            max_num_seqs=int(config.max_num_seqs),
            max_num_batched_tokens=int(config.max_num_batched_tokens),
            kv_cache_tokens=kv_tokens,
            max_waiting=int(config.max_queue_size),
            mode=config.batching,
        )
        self.engine = LLMEngine(lm, self.limits)
        self.engine.start()

    @classmethod
    def load(
        cls, info: VersionInfo, artifact: bytes, config: ServingConfig, settings: RoostSettings
    ) -> Self:
        lm = CausalLM(artifact, settings.intra_op_threads, settings.execution_provider)
        return cls(info.model, lm, config)

    def attach(self, observer: EngineObserver) -> None:
        """Report the engine's occupancy to ``observer`` (the loader passes the metrics)."""
        self.engine.observer = observer

    def warm_up(self, runs: int, samples: list[Tensors] | None = None) -> None:
        self.engine.warm_up(max(runs, 1))

    def infer(self, feeds: Tensors) -> Tensors:
        raise refuse_infer(self.model_name)

    async def close(self) -> None:
        """Let running sequences finish (up to 30 s), then stop the engine's thread."""
        await asyncio.to_thread(self.engine.close)

    @property
    def load_now(self) -> int:
        return self.engine.load

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        lm = self.lm
        if request.prompt is not None:
            return lm.encode(request.prompt)
        return lm.encode(lm.chat_prompt(list(request.messages)))

    async def start(self, request: GenerationRequest) -> GenerationStream:
        prompt = self.prompt_ids(request)
        context = self.lm.config.max_positions
        if len(prompt) >= context:
            raise InvalidRequest(
                f"prompt: {len(prompt)} tokens, but this model's context is {context} tokens"
            )
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = context - len(prompt)
        elif len(prompt) + max_tokens > context:
            raise InvalidRequest(
                f"max_tokens: the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) "
                f"exceed this model's context of {context} tokens"
            )
        params = SamplingParams(
            max_tokens, request.temperature, request.top_p, request.seed, request.stop,
            request.ignore_eos,
        )
        return _EngineStream(Generation(self.engine, prompt, params))
