"""HTTP routes of text generation: OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and
``/v1/models``, and the OIP generate extension ``/v2/models/{m}[/versions/{v}]/generate`` and
``generate_stream`` (Triton's shapes). Thin routes over :class:`~serving.llm.service.TextService`.

Streams are server-sent events (OpenAI's end with ``data: [DONE]``). OpenAI routes answer errors
in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``, ``param`` naming the
offending field); the generate routes in Roost's (``{"error": message}``). A client that goes
away stops its generation: a stream's generator is cancelled by the server, a plain request's
disconnect is watched while it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from registry.errors import InvalidRequest, RoostError
from serving.auth import PrincipalDep
from serving.edge import error_response, render_error
from serving.gateway import Gateway
from serving.llm.schemas import ChatCompletionRequest, CompletionRequest, GenerateRequest
from serving.llm.service import Outcome, Run, TextService
from serving.pipeline import CallContext
from serving.rest import REQUEST_ID_HEADER, USER_HEADER, VARIANT_HEADER, GatewayDep

openai_api = APIRouter(tags=["text-generation"])
B = TypeVar("B", bound=BaseModel)
CLIENT_CLOSED = 499
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
}


# -- errors -----------------------------------------------------------------------------------


def openai_error_body(exc: BaseException) -> tuple[int, dict[str, str], dict[str, Any]]:
    """OpenAI's error object for ``exc``; ``param`` is the field its message starts with."""
    status, headers, raw = render_error(exc)
    message = str(orjson.loads(raw).get("error", "error"))
    head, sep, _ = message.partition(":")
    param = head if sep and head and " " not in head and "'" not in head else None
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": None}
    return status, headers, {"error": error}


def openai_error(exc: BaseException) -> Response:
    status, headers, body = openai_error_body(exc)
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def validation_error(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return InvalidRequest("request body is not valid JSON")
    loc = ".".join(str(p) for p in first.get("loc", ())) or "body"
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return InvalidRequest(f"{loc}: {message}")


async def parse(request: Request, model: type[B]) -> B:
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


# -- plumbing ---------------------------------------------------------------------------------


def text_service(gateway: Gateway) -> TextService:
    """The gateway's text service (made on first use for the current data plane)."""
    plane = gateway.plane
    service: TextService | None = getattr(gateway.state, "text_service", None)
    if service is None or service.plane is not plane:
        service = gateway.state.text_service = TextService(plane)
    return service


def call_context(request: Request, principal: PrincipalDep, protocol: str) -> CallContext:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return CallContext(
        protocol, headers.get(USER_HEADER), headers.get(REQUEST_ID_HEADER), headers,
        principal=principal,
    )


async def until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def collect(request: Request, run: Run) -> Outcome | None:
    """Run to the end, or stop the generation when the client disconnects first (None)."""
    work = asyncio.ensure_future(run.collect())
    watch = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
    if work.cancelled():
        return None  # nobody to answer; the run logged the abort
    return work.result()


_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"),
                (b"\xe2\x80\xa9", b"\\u2029"))


def sse(payload: Any) -> bytes:
    """One server-sent event. U+0085, U+2028 and U+2029 are escaped: JSON allows them raw, but
    clients that split the stream with ``str.splitlines`` would cut the event there."""
    data = orjson.dumps(payload)
    for raw, escaped in _LINE_BREAKS:
        if raw in data:
            data = data.replace(raw, escaped)
    return b"data: " + data + b"\n\n"


def headers_of(run: Run) -> dict[str, str]:
    return {VARIANT_HEADER: run.decision.variant, REQUEST_ID_HEADER: run.request_id}


def usage(outcome: Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


# -- OpenAI -----------------------------------------------------------------------------------


async def _openai(
    request: Request, gateway: Gateway, principal: PrincipalDep, chat: bool
) -> Response:
    try:
        body: CompletionRequest | ChatCompletionRequest = await parse(
            request, ChatCompletionRequest if chat else CompletionRequest
        )
        context = call_context(request, principal, "openai")
        run = await text_service(gateway).start(body.model, body.to_generation(), context)
    except RoostError as exc:
        return openai_error(exc)
    prefix = "chatcmpl-" if chat else "cmpl-"
    head = {"id": prefix + run.request_id, "created": run.created, "model": body.model}
    if body.stream:
        chunks = _chat_chunks if chat else _completion_chunks
        return StreamingResponse(
            _openai_stream(run, head, chunks, body.include_usage),
            media_type="text/event-stream", headers={**SSE_HEADERS, **headers_of(run)},
        )
    try:
        outcome = await collect(request, run)
    except RoostError as exc:
        return openai_error(exc)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    text = "".join(outcome.text)
    if chat:
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text},
            "logprobs": None, "finish_reason": outcome.finish_reason,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None,
                  "finish_reason": outcome.finish_reason}
        kind = "text_completion"
    answer = {**head, "object": kind, "choices": [choice], "usage": usage(outcome),
              "system_fingerprint": None}
    return Response(orjson.dumps(answer), media_type="application/json",
                    headers=headers_of(run))


Chunker = Callable[[str | None, str | None, bool], dict[str, Any]]


def _completion_chunks(text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    return {"object": "text_completion", "choices": [
        {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    ]}


def _chat_chunks(text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {} if text is None else {"content": text}
    if first:
        delta["role"] = "assistant"
    return {"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    ]}


async def _openai_stream(
    run: Run, head: dict[str, Any], chunks: Chunker, include_usage: bool
) -> AsyncIterator[bytes]:
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    first = True
    try:
        async for event in run.events():
            if event.text:
                yield sse({**head, **chunks(event.text, None, first), **extra})
                first = False
            if event.finish_reason is not None:
                yield sse({**head, **chunks(None, event.finish_reason, first), **extra})
    except RoostError as exc:
        yield sse(openai_error_body(exc)[2])
        yield b"data: [DONE]\n\n"
        return
    if include_usage:
        yield sse({**head, **chunks(None, None, False), "choices": [],
                   "usage": usage(run.outcome)})
    yield b"data: [DONE]\n\n"


@openai_api.post("/v1/completions")
async def completions(request: Request, gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """OpenAI's completions: ``CompletionRequest`` in, a completion or an event stream out."""
    return await _openai(request, gateway, principal, chat=False)


@openai_api.post("/v1/chat/completions")
async def chat_completions(
    request: Request, gateway: GatewayDep, principal: PrincipalDep
) -> Response:
    """OpenAI's chat completions: ``ChatCompletionRequest`` in."""
    return await _openai(request, gateway, principal, chat=True)


@openai_api.get("/v1/models")
async def list_models(gateway: GatewayDep, principal: PrincipalDep) -> Response:
    """The text-generation models this gateway serves (those the caller's key reaches)."""
    table = gateway.plane.repository.table
    names = sorted({
        m for (m, _), loaded in table.loaded.items()
        if loaded.config.backend in ("llm", "openai")
        and (principal.models is None or m in principal.models)
    })
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "roost"} for m in names]
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")


# -- OIP generate extension -------------------------------------------------------------------


async def _generate(
    request: Request, gateway: Gateway, principal: PrincipalDep, model: str,
    version: str | None, stream: bool,
) -> Response:
    try:
        body = await parse(request, GenerateRequest)
        context = call_context(request, principal, "v2-generate")
        run = await text_service(gateway).start(model, body.to_generation(), context, version)
    except RoostError as exc:
        return error_response(exc)
    head = {"model_name": run.model, "model_version": str(run.version), "id": run.request_id}
    if stream:
        return StreamingResponse(_generate_stream(run, head), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers_of(run)})
    try:
        outcome = await collect(request, run)
    except RoostError as exc:
        return error_response(exc)
    if outcome is None:
        return Response(status_code=CLIENT_CLOSED)
    answer = {**head, "text_output": "".join(outcome.text),
              "finish_reason": outcome.finish_reason, "usage": usage(outcome)}
    return Response(orjson.dumps(answer), media_type="application/json",
                    headers=headers_of(run))


async def _generate_stream(run: Run, head: dict[str, Any]) -> AsyncIterator[bytes]:
    try:
        async for event in run.events():
            if event.text:
                yield sse({**head, "text_output": event.text})
            if event.finish_reason is not None:
                yield sse({**head, "text_output": "", "finish_reason": event.finish_reason,
                           "usage": usage(run.outcome)})
    except RoostError as exc:
        yield sse({"error": exc.message})


@openai_api.post("/v2/models/{model}/generate")
@openai_api.post("/v2/models/{model}/versions/{version}/generate")
async def generate(
    request: Request, gateway: GatewayDep, principal: PrincipalDep, model: str,
    version: str | None = None,
) -> Response:
    """Triton's generate: ``{"text_input", "parameters"}`` in, ``{"text_output"}`` out."""
    return await _generate(request, gateway, principal, model, version, stream=False)


@openai_api.post("/v2/models/{model}/generate_stream")
@openai_api.post("/v2/models/{model}/versions/{version}/generate_stream")
async def generate_stream(
    request: Request, gateway: GatewayDep, principal: PrincipalDep, model: str,
    version: str | None = None,
) -> Response:
    """Triton's generate_stream: server-sent events of ``{"text_output"}`` chunks."""
    return await _generate(request, gateway, principal, model, version, stream=True)


__all__ = ["openai_api"]
