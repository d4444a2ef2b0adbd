"""Triton's binary tensor data extension for the v2 HTTP infer route.

The codec is the protocol core's binary adapter (:mod:`serving.protocol.binary_codec`), whose
names this module re-exports. What stays here is the REST glue: rendering a decoded binary
request as JSON for the prediction log, and handing ``DataPlane.infer`` its payload and
decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from registry.errors import InvalidRequest
from serving.dataplane import MAX_LOGGED_INPUT_CHARS
from serving.protocol.binary_codec import (
    HEADER_LENGTH,
    binary_outputs,
    decode_binary_request,
    decode_json_request,
    encode_binary_response,
    parse_header_length,
)
from serving.protocol.json_codec import tensor_to_json
from serving.protocol.types import DecodeLimits, InferRequest, resolve_limits

__all__ = [
    "HEADER_LENGTH",
    "binary_outputs",
    "decode_binary_request",
    "decode_json_request",
    "encode_binary_response",
    "parse_header_length",
    "prepare_binary_request",
    "request_log_json",
]


def request_log_json(request: InferRequest) -> bytes:
    """The request as readable v2 JSON for the prediction log: every input's values as data.

    The log keeps the first ``MAX_LOGGED_INPUT_CHARS`` bytes, so only as many elements are
    rendered as can show there: k elements take at least 2k - 1 characters (a value and a
    comma each), and that prefix of the text is the same as if every element were rendered.
    (:func:`serving.protocol.render.render_inputs` is the structured rendering that replaces
    this once the data plane logs it.)
    """
    budget = MAX_LOGGED_INPUT_CHARS
    inputs: list[dict[str, Any]] = []
    for tensor in request.inputs:
        flat = tensor.data.reshape(-1)
        count = min(flat.size, budget // 2 + 1)
        budget = max(0, budget - (2 * count - 1))
        rendered = tensor_to_json(tensor.name, flat[:count])
        rendered["datatype"] = tensor.datatype
        rendered["shape"] = list(tensor.shape)
        parameters = {k: v for k, v in tensor.parameters.items() if k != "binary_data_size"}
        if parameters:
            rendered["parameters"] = parameters
        inputs.append(rendered)
    body: dict[str, Any] = {}
    if request.id is not None:
        body["id"] = request.id
    body["inputs"] = inputs
    if request.outputs is not None:
        body["outputs"] = [
            {"name": out.name, "parameters": out.parameters} if out.parameters else
            {"name": out.name}
            for out in request.outputs
        ]
    if request.parameters:
        body["parameters"] = request.parameters
    return orjson.dumps(body)


def prepare_binary_request(
    body: bytes, header_value: str, limits: DecodeLimits | None = None
) -> tuple[bytes, Callable[[bytes], InferRequest]]:
    """What to hand ``DataPlane.infer`` for a binary request: (payload to log, decoder).

    The request is decoded here so that the prediction log gets readable JSON rather than raw
    tensor bytes; a request that does not decode yields a decoder that raises its error, so the
    data plane still resolves the model first and logs the failure. ``limits=None``: the
    limits in force (transitional).
    """
    limits = resolve_limits(limits)
    header_length: int | None = None
    try:
        header_length = parse_header_length(header_value, len(body))
        request = decode_binary_request(body, header_length, limits)
    except InvalidRequest as exc:
        error = exc

        def reject(_payload: bytes) -> InferRequest:
            raise error

        return (body if header_length is None else body[:header_length]), reject
    return request_log_json(request), lambda _payload: request
