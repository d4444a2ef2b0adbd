"""The binary tensor data adapter (Triton's extension of the v2 HTTP infer route).

A request whose ``Inference-Header-Content-Length: N`` header is set carries N bytes of JSON
followed by raw tensor data: every input with ``parameters.binary_data_size`` takes that many
bytes, in input order, in the raw format of :mod:`serving.protocol.raw`.

A response returns an output as binary when the request asks for it with
``parameters.binary_data`` on that output or ``parameters.binary_data_output`` on the request
(the per-output setting wins). Its JSON lists the output with ``parameters.binary_data_size``
and no ``data``, the raw bytes follow the JSON in output order, and the response carries the
JSON's length in ``Inference-Header-Content-Length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from registry.errors import InvalidRequest
from serving.protocol.json_codec import (
    decode_infer_request,
    decode_json_input,
    decode_outputs,
    decode_parameters,
    decode_request_id,
    decode_tensor_header,
    request_inputs,
    tensor_json,
)
from serving.protocol.json_depth import parse_json_object
from serving.protocol.raw import check_raw_size, encode_raw, raw_to_array
from serving.protocol.tensors import check_unique_inputs, show
from serving.protocol.types import DEFAULT_LIMITS, DecodeLimits, InferRequest, RequestInput

__all__ = [
    "HEADER_LENGTH",
    "binary_outputs",
    "decode_binary_request",
    "decode_json_request",
    "encode_binary_response",
    "output_choice",
    "parse_header_length",
]

HEADER_LENGTH = "Inference-Header-Content-Length"


def parse_header_length(value: str, body_length: int) -> int:
    """The JSON length an ``Inference-Header-Content-Length`` header gives; checked against
    the body."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequest(
            f"{HEADER_LENGTH} must be a non-negative integer number of bytes, got {value!r}"
        )
    length = int(text)
    if length > body_length:
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {length} but the request body has only {body_length} bytes"
        )
    return length


class _BinaryInput:
    """A request input whose values follow the JSON header."""

    __slots__ = ("count", "datatype", "index", "name", "parameters", "shape", "size")

    def __init__(self, index: int, item: dict[str, Any], limits: DecodeLimits) -> None:
        name, datatype, shape, count = decode_tensor_header(index, item, limits)
        if "data" in item:
            raise InvalidRequest(
                f"input '{name}': has both 'data' and parameters.binary_data_size; "
                "send its values one way"
            )
        parameters: dict[str, Any] = item["parameters"]
        size = parameters["binary_data_size"]
        if type(size) is not int or size < 0:
            raise InvalidRequest(
                f"input '{name}': parameters.binary_data_size must be a non-negative integer, "
                f"got {show(size)}"
            )
        check_raw_size(name, datatype, shape, count, size, f"binary_data_size {size}")
        self.index, self.name, self.datatype, self.shape = index, name, datatype, shape
        self.count, self.size, self.parameters = count, size, parameters


def _check_sizes(binary: list[_BinaryInput], data: memoryview, header_length: int) -> None:
    """The binary inputs' sizes must add up to the bytes after the JSON header."""
    total = sum(entry.size for entry in binary)
    if total == len(data):
        return
    if not binary:
        raise InvalidRequest(
            f"{len(data)} bytes follow the JSON header ({HEADER_LENGTH}: {header_length}) "
            "but no input has parameters.binary_data_size"
        )
    offset = 0
    for entry in binary:
        if offset + entry.size > len(data):
            raise InvalidRequest(
                f"input '{entry.name}': binary_data_size {entry.size} at offset {offset} runs "
                f"past the end of the binary data ({len(data)} bytes follow the JSON header)"
            )
        offset += entry.size
    raise InvalidRequest(
        f"{len(data) - total} extra bytes follow the binary data of the last binary input "
        f"'{binary[-1].name}' (binary_data_size adds up to {total}, {len(data)} bytes follow "
        "the JSON header)"
    )


def decode_binary_request(
    body: bytes, header_length: int, limits: DecodeLimits = DEFAULT_LIMITS
) -> InferRequest:
    """Parse a request whose first ``header_length`` bytes are JSON and the rest tensor data.

    Inputs without ``parameters.binary_data_size`` are decoded from their JSON ``data`` as
    usual. Raises InvalidRequest naming the input and what is wrong.
    """
    if not 0 <= header_length <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {header_length} but the request body has {len(body)} bytes"
        )
    view = memoryview(body)
    request = parse_json_object(
        view[:header_length],
        f"the JSON header ({HEADER_LENGTH}: {header_length})",
        "the JSON header",
        limits,
    )
    request_id = decode_request_id(request)
    inputs: list[RequestInput | None] = []
    binary: list[_BinaryInput] = []
    for index, item in enumerate(request_inputs(request)):
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if isinstance(parameters, dict) and "binary_data_size" in parameters:
            binary.append(_BinaryInput(index, item, limits))
            inputs.append(None)
        else:
            given = item.get("name") if isinstance(item, dict) else None
            if type(given) is str and given and "data" not in item:
                raise InvalidRequest(
                    f"input '{given}': needs 'data' or parameters.binary_data_size"
                )
            inputs.append(decode_json_input(index, item, limits))

    data = view[header_length:]
    _check_sizes(binary, data, header_length)
    offset = 0
    for entry in binary:
        raw = data[offset : offset + entry.size]
        offset += entry.size
        array = raw_to_array(
            entry.name, entry.datatype, entry.shape, entry.count, raw,
            f"binary_data_size {entry.size}",
        )
        inputs[entry.index] = RequestInput(
            entry.name, entry.datatype, entry.shape, array, entry.parameters
        )
    decoded = [tensor for tensor in inputs if tensor is not None]
    check_unique_inputs(decoded)
    result = InferRequest(
        id=request_id,
        inputs=decoded,
        outputs=decode_outputs(request.get("outputs")),
        parameters=decode_parameters(request.get("parameters"), ""),
    )
    output_choice(result)
    return result


def decode_json_request(body: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> InferRequest:
    """:func:`decode_infer_request`, plus a check of the binary-output parameters."""
    request = decode_infer_request(body, limits)
    if request.parameters or request.outputs is not None:
        output_choice(request)
    return request


# --------------------------------------------------------------------------------------------
# responses


def output_choice(request: InferRequest) -> tuple[bool, dict[str, bool]]:
    """(the request's default, per-output choices) for binary outputs; checks their types."""
    default = request.parameters.get("binary_data_output", False)
    if type(default) is not bool:
        raise InvalidRequest(
            f"parameters.binary_data_output must be true or false, got {show(default)}"
        )
    chosen: dict[str, bool] = {}
    for output in request.outputs or ():
        if "binary_data" in output.parameters:
            value = output.parameters["binary_data"]
            if type(value) is not bool:
                raise InvalidRequest(
                    f"output '{output.name}': parameters.binary_data must be true or false, "
                    f"got {show(value)}"
                )
            chosen[output.name] = value
    return default, chosen


def binary_outputs(
    request: InferRequest, outputs: Sequence[tuple[str, Any]]
) -> list[bool] | None:
    """Per output (in ``outputs`` order) whether it goes binary; None when none does."""
    if not request.parameters and request.outputs is None:
        return None
    default, chosen = output_choice(request)
    if not default and not any(chosen.values()):
        return None
    flags = [chosen.get(name, default) for name, _ in outputs]
    return flags if any(flags) else None


def encode_binary_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, Any]],
    binary: Sequence[bool],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int]:
    """A v2 response with the outputs flagged in ``binary`` as raw data after the JSON.

    Returns (body, length of its JSON header).
    """
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    if parameters is not None:
        body["parameters"] = parameters
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for (name, array), as_binary in zip(outputs, binary, strict=True):
        if not as_binary:
            tensors.append(tensor_json(name, array, numpy_data=True))
            continue
        datatype, shape, raw = encode_raw(name, array)
        tensors.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([header, *chunks]), len(header)
