"""Request bodies of the text-generation APIs (pydantic): OpenAI's and Triton's generate.

Fields the engine does not implement are refused when set to anything but their default
(``n``, ``best_of``, ``logprobs``, ...), so a client never silently gets something other than
what it asked for; unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.llm.backend import GenerationRequest

MAX_STOP = 4


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    """The Roost model name; ``name:version`` pins a version (no routing)."""
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    """vLLM's extension: keep generating past the end-of-sequence token."""
    logprobs: Any = None
    best_of: int | None = None

    @field_validator("n")
    @classmethod
    def _one(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"only n=1 is supported, got {n}")
        return n

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: Any) -> Any:
        if value not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(value)}")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"expected one prompt (a string), got a list of {len(value)}")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    def to_generation(self) -> GenerationRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return GenerationRequest(
            prompt=prompt, max_tokens=self.max_tokens, temperature=self.temperature,
            top_p=self.top_p, seed=self.seed, stop=_stops(self.stop), ignore_eos=self.ignore_eos,
        )


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def to_generation(self) -> GenerationRequest:
        return GenerationRequest(
            messages=tuple((m.role, m.text) for m in self.messages),
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            stop=_stops(self.stop), ignore_eos=self.ignore_eos,
        )


class GenerateParameters(BaseModel):
    """Triton generate's ``parameters`` (what the engine reads; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False


class GenerateRequest(BaseModel):
    """``POST /v2/models/{m}[/versions/{v}]/generate[_stream]`` (Triton's generate extension)."""

    model_config = ConfigDict(extra="ignore")

    text_input: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)

    def to_generation(self) -> GenerationRequest:
        p = self.parameters
        return GenerationRequest(
            prompt=self.text_input, max_tokens=p.max_tokens, temperature=p.temperature,
            top_p=p.top_p, seed=p.seed, stop=_stops(p.stop), ignore_eos=p.ignore_eos,
        )
