"""Remote text generation: an OpenAI-compatible upstream (``backend: openai``, e.g. vLLM) and
Triton's generate extension (``backend: triton`` versions of text-generation models).

Both stream: the upstream is always asked for a stream (server-sent events) and its chunks are
passed on as they come, whether the caller streams or not. Errors are Roost errors naming the
upstream: unreachable or overloaded: 503; a timeout: 504; a refused request: 400 with the
upstream's message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Self

import httpx
import orjson

from registry import RoostSettings, ServingConfig, VersionInfo
from registry.errors import DeadlineExceeded, InvalidRequest, RoostError, ServiceUnavailable
from serving.llm.backend import GenerationRequest, GenerationStream, Tensors, refuse_infer
from serving.llm.engine import TokenEvent


def _upstream_error(where: str, status: int, body: bytes) -> RoostError:
    message = body.decode("utf-8", "replace")[:500]
    try:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", message))
        elif isinstance(error, str):
            message = error
    except orjson.JSONDecodeError:
        pass
    if status in (429, 503):
        return ServiceUnavailable(f"{where}: {message}", retry_after_s=1)
    if 400 <= status < 500:
        return InvalidRequest(f"{where}: {message}")
    return ServiceUnavailable(f"{where} failed ({status}): {message}")


async def _open(
    client: httpx.AsyncClient, where: str, url: str, body: dict[str, Any]
) -> httpx.Response:
    """POST ``body`` and return the streaming response once its status is known."""
    try:
        request = client.build_request("POST", url, content=orjson.dumps(body),
                                       headers={"content-type": "application/json"})
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise DeadlineExceeded(f"{where}: no answer in time") from None
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"{where} cannot be reached: {exc}", retry_after_s=1) from None
    if response.status_code >= 400:
        content = await response.aread()
        await response.aclose()
        raise _upstream_error(where, response.status_code, content)
    return response


async def _events(response: httpx.Response, where: str) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, until ``[DONE]`` or its end."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                yield orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ServiceUnavailable(f"{where}: sent an event that is not JSON") from None
    except httpx.TimeoutException:
        raise DeadlineExceeded(f"{where}: stopped answering mid-stream") from None
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"{where}: the stream broke: {exc}") from None


class _RemoteStream:
    """Token events parsed from a remote's event stream (``parse`` reads one payload)."""

    def __init__(self, response: httpx.Response, where: str, chat: bool, kind: str) -> None:
        self.response = response
        self.where = where
        self.chat = chat
        self.kind = kind
        self.prompt_tokens = 0
        self.started = time.perf_counter()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        chunks, reason, completion = 0, None, None
        try:
            async for payload in _events(self.response, self.where):
                if "error" in payload:
                    raise _upstream_error(self.where, 500, orjson.dumps(payload))
                text, finish = self._parse(payload)
                usage = payload.get("usage")
                if isinstance(usage, dict):
                    self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    completion = int(usage.get("completion_tokens") or 0)
                if finish:
                    reason = finish
                if text:
                    chunks += 1
                    yield TokenEvent(text, chunks, self.prompt_tokens)
        finally:
            await self.response.aclose()
        yield TokenEvent(
            "", completion if completion is not None else chunks, self.prompt_tokens,
            reason or "stop",
        )

    def _parse(self, payload: dict[str, Any]) -> tuple[str, str | None]:
        if self.kind == "triton":
            return str(payload.get("text_output") or ""), payload.get("finish_reason")
        choices = payload.get("choices") or []
        if not choices:
            return "", None
        choice = choices[0]
        if self.chat:
            text = (choice.get("delta") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        return str(text), choice.get("finish_reason")

    async def aclose(self) -> None:
        await self.response.aclose()


class OpenAIBackend:
    """A version answered by an OpenAI-compatible server (vLLM, or another Roost gateway)."""

    platform = "openai"

    def __init__(self, model: str, config: ServingConfig) -> None:
        if config.upstream_url is None:
            raise InvalidRequest("upstream_url: required when backend is openai")
        self.model_name = model
        self.base = config.upstream_url.rstrip("/")
        self.upstream_model = config.upstream_model or model
        self.timeout_s = float(config.upstream_timeout_s)
        self.providers = [f"openai:{self.base}"]
        self.where = f"upstream {self.base} (model '{self.upstream_model}')"
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def load(
        cls, info: VersionInfo, artifact: bytes, config: ServingConfig, settings: RoostSettings
    ) -> Self:
        """The upstream serves the model; the artifact (sha256-checked) is only recorded."""
        return cls(info.model, config)

    def warm_up(self, runs: int, samples: list[Tensors] | None = None) -> None:
        """Nothing to warm here: the upstream keeps its own model warm."""

    def infer(self, feeds: Tensors) -> Tensors:
        raise refuse_infer(self.model_name)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self._client

    async def start(self, request: GenerationRequest) -> GenerationStream:
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        if request.is_chat:
            body["messages"] = [{"role": r, "content": c} for r, c in request.messages]
            path = "/chat/completions"
        else:
            body["prompt"] = request.prompt
            path = "/completions"
        response = await _open(self._http(), self.where, self.base + path, body)
        return _RemoteStream(response, self.where, request.is_chat, "openai")


class TritonGenerate:
    """Triton's generate extension on a ``backend: triton`` version's remote (HTTP)."""

    def __init__(self, model: str, config: ServingConfig) -> None:
        name = config.triton_model or model
        version = f"/versions/{config.triton_model_version}" if config.triton_model_version else ""
        self.url = f"http://{config.triton_url}/v2/models/{name}{version}/generate_stream"
        self.where = f"triton at {config.triton_url} (model '{name}')"
        self.timeout_s = float(config.triton_timeout_s)

    async def start(self, request: GenerationRequest) -> GenerationStream:
        prompt = request.prompt
        if prompt is None:  # Triton's generate takes text only: a plain role-prefixed chat
            prompt = "".join(f"{r}: {c}\n" for r, c in request.messages) + "assistant:"
        parameters: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p}
        if request.max_tokens is not None:
            parameters["max_tokens"] = request.max_tokens
        if request.seed is not None:
            parameters["seed"] = request.seed
        if request.stop:
            parameters["stop"] = list(request.stop)
        client = httpx.AsyncClient(timeout=self.timeout_s)
        try:
            response = await _open(
                client, self.where, self.url, {"text_input": prompt, "parameters": parameters}
            )
        except BaseException:
            await client.aclose()
            raise
        return _ClientOwningStream(_RemoteStream(response, self.where, False, "triton"), client)


class _ClientOwningStream:
    """A remote stream that closes its own HTTP client when done."""

    def __init__(self, stream: _RemoteStream, client: httpx.AsyncClient) -> None:
        self.stream = stream
        self.client = client
        self.prompt_tokens = 0

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        try:
            async for event in self.stream:
                self.prompt_tokens = self.stream.prompt_tokens
                yield event
        finally:
            await self.client.aclose()

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._iterate()

    async def aclose(self) -> None:
        await self.stream.aclose()
        await self.client.aclose()
