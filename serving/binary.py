"""Triton's binary tensor data extension for the v2 HTTP infer route.

A request whose ``Inference-Header-Content-Length: N`` header is set carries N bytes of JSON
followed by raw tensor data: every input with ``parameters.binary_data_size`` takes that many
bytes, in input order, as little-endian values of its datatype (BOOL: one byte per element;
BYTES: per element a 4-byte little-endian length and then the bytes).

A response returns an output as binary when the request asks for it with
``parameters.binary_data`` on that output or ``parameters.binary_data_output`` on the request
(the per-output setting wins). Its JSON lists the output with ``parameters.binary_data_size``
and no ``data``, the raw bytes follow the JSON in output order, and the response carries the
JSON's length in ``Inference-Header-Content-Length``.

Pure-JSON requests never touch this module beyond :func:`decode_json_request` (a thin check of
the output parameters) and :func:`binary_outputs` (a no-op unless they ask for binary data).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from registry.errors import InvalidRequest, RoostError
from registry.signature import OIP_TO_NUMPY, numpy_to_oip
from serving import oip
from serving.dataplane import MAX_LOGGED_INPUT_CHARS

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

HEADER_LENGTH = "Inference-Header-Content-Length"

_LENGTH_PREFIX = struct.Struct("<I")



# --------------------------------------------------------------------------------------------
# requests


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


def _binary_size(name: str, parameters: dict[str, Any]) -> int:
    size = parameters["binary_data_size"]
    if type(size) is not int or size < 0:
        raise InvalidRequest(
            f"input '{name}': parameters.binary_data_size must be a non-negative integer, "
            f"got {oip._show(size)}"
        )
    return size


def _binary_header(index: int, item: dict[str, Any]) -> tuple[str, str, tuple[int, ...], int]:
    """Check the JSON of an input whose data is binary: (name, datatype, shape, size)."""
    name, datatype, shape = oip.decode_tensor_header(index, item)
    if "data" in item:
        raise InvalidRequest(
            f"input '{name}': has both 'data' and parameters.binary_data_size; "
            "send its values one way"
        )
    size = _binary_size(name, item["parameters"])
    if datatype != "BYTES":
        count = math.prod(shape)  # within max_tensor_elements (checked with the shape)
        itemsize = OIP_TO_NUMPY[datatype].itemsize
        if size != count * itemsize:
            raise InvalidRequest(
                f"input '{name}': binary_data_size {size} does not match shape "
                f"{list(shape)} of {datatype} ({count} elements x {itemsize} bytes = "
                f"{count * itemsize} bytes)"
            )
    return name, datatype, shape, size


def _bytes_array(name: str, raw: memoryview, count: int) -> npt.NDArray[Any]:
    """Parse ``count`` length-prefixed BYTES elements that must fill ``raw`` exactly.

    Nothing is allocated per element before its bytes are there: a shape that promises more
    elements than the data holds costs no more than the data.
    """
    items: list[bytes] = []
    end = len(raw)
    pos = 0
    for index in range(count):
        if pos + 4 > end:
            raise InvalidRequest(
                f"input '{name}': BYTES element {index} has a truncated length prefix "
                f"({end - pos} of 4 bytes left in binary_data_size {end})"
            )
        (length,) = _LENGTH_PREFIX.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise InvalidRequest(
                f"input '{name}': BYTES element {index} declares {length} bytes but only "
                f"{end - pos} are left in binary_data_size {end}"
            )
        items.append(bytes(raw[pos : pos + length]))
        pos += length
    if pos != end:
        raise InvalidRequest(
            f"input '{name}': binary_data_size {end} has {end - pos} bytes left over after "
            f"its {count} BYTES elements"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def _binary_array(
    name: str, datatype: str, shape: tuple[int, ...], raw: memoryview
) -> npt.NDArray[Any]:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_array(name, raw, count).reshape(shape)
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        bad = np.flatnonzero(octets > 1)
        if bad.size:
            index = int(bad[0])
            raise InvalidRequest(
                f"input '{name}': BOOL bytes must be 0 or 1, got {int(octets[index])} "
                f"at index {index}"
            )
        return octets.view(np.bool_).reshape(shape)
    dtype = OIP_TO_NUMPY[datatype]
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if not array.dtype.isnative:
        array = array.astype(dtype)
    return array.reshape(shape)


def decode_binary_request(body: bytes, header_length: int) -> oip.InferRequest:
    """Parse a request whose first ``header_length`` bytes are JSON and the rest tensor data.

    Inputs without ``parameters.binary_data_size`` are decoded from their JSON ``data`` as
    usual. Raises InvalidRequest naming the input and what is wrong.
    """
    if not 0 <= header_length <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} is {header_length} but the request body has {len(body)} bytes"
        )
    view = memoryview(body)
    try:
        request = orjson.loads(view[:header_length])
    except orjson.JSONDecodeError as exc:
        raise oip.json_error(
            view[:header_length], exc, f"the JSON header ({HEADER_LENGTH}: {header_length})"
        ) from None
    if not isinstance(request, dict):
        raise InvalidRequest(
            f"the JSON header must be a JSON object, got {oip._json_type(request)}"
        )
    oip._check_request_depth(request, oip.current_limits().max_json_depth)
    request_id = request.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidRequest(f"'id' must be a string, got {oip._json_type(request_id)}")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest(
            "'inputs' must be a non-empty list of tensors, got "
            + ("an empty list" if isinstance(raw_inputs, list) else oip._json_type(raw_inputs))
        )

    inputs: list[oip.RequestInput | None] = []
    binary: list[tuple[int, str, str, tuple[int, ...], int, dict[str, Any]]] = []
    for index, item in enumerate(raw_inputs):
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if isinstance(parameters, dict) and "binary_data_size" in parameters:
            name, datatype, shape, size = _binary_header(index, item)
            binary.append((index, name, datatype, shape, size, parameters))
            inputs.append(None)
        else:
            given = item.get("name") if isinstance(item, dict) else None
            if type(given) is str and given and "data" not in item:
                raise InvalidRequest(
                    f"input '{given}': needs 'data' or parameters.binary_data_size"
                )
            inputs.append(oip._decode_input(index, item))

    data = view[header_length:]
    total = sum(entry[4] for entry in binary)
    if total != len(data):
        if not binary:
            raise InvalidRequest(
                f"{len(data)} bytes follow the JSON header ({HEADER_LENGTH}: {header_length}) "
                "but no input has parameters.binary_data_size"
            )
        offset = 0
        for _, name, _, _, size, _ in binary:
            if offset + size > len(data):
                raise InvalidRequest(
                    f"input '{name}': binary_data_size {size} at offset {offset} runs past the "
                    f"end of the binary data ({len(data)} bytes follow the JSON header)"
                )
            offset += size
        raise InvalidRequest(
            f"{len(data) - total} extra bytes follow the binary data of the last binary input "
            f"'{binary[-1][1]}' (binary_data_size adds up to {total}, {len(data)} bytes follow "
            "the JSON header)"
        )
    offset = 0
    for index, name, datatype, shape, size, parameters in binary:
        array = _binary_array(name, datatype, shape, data[offset : offset + size])
        offset += size
        inputs[index] = oip.RequestInput(name, datatype, shape, array, parameters)

    decoded = [tensor for tensor in inputs if tensor is not None]
    seen: set[str] = set()
    for tensor in decoded:
        if tensor.name in seen:
            raise InvalidRequest(f"input '{tensor.name}' appears more than once")
        seen.add(tensor.name)
    result = oip.InferRequest(
        id=request_id,
        inputs=decoded,
        outputs=oip._decode_outputs(request.get("outputs")),
        parameters=oip._parameters(request.get("parameters"), ""),
    )
    _output_choice(result)
    return result


def decode_json_request(body: bytes) -> oip.InferRequest:
    """:func:`oip.decode_infer_request`, plus a check of the binary-output parameters."""
    request = oip.decode_infer_request(body)
    if request.parameters or request.outputs is not None:
        _output_choice(request)
    return request


def request_log_json(request: oip.InferRequest) -> bytes:
    """The request as readable v2 JSON for the prediction log: every input's values as data.

    The log keeps the first ``MAX_LOGGED_INPUT_CHARS`` bytes, so only as many elements are
    rendered as can show there: k elements take at least 2k - 1 characters (a value and a
    comma each), and that prefix of the text is the same as if every element were rendered.
    """
    budget = MAX_LOGGED_INPUT_CHARS
    inputs: list[dict[str, Any]] = []
    for tensor in request.inputs:
        flat = tensor.data.reshape(-1)
        count = min(flat.size, budget // 2 + 1)
        budget = max(0, budget - (2 * count - 1))
        rendered = oip.tensor_to_json(tensor.name, flat[:count])
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
    body: bytes, header_value: str
) -> tuple[bytes, Callable[[bytes], oip.InferRequest]]:
    """What to hand ``DataPlane.infer`` for a binary request: (payload to log, decoder).

    The request is decoded here so that the prediction log gets readable JSON rather than raw
    tensor bytes; a request that does not decode yields a decoder that raises its error, so the
    data plane still resolves the model first and logs the failure.
    """
    header_length: int | None = None
    try:
        header_length = parse_header_length(header_value, len(body))
        request = decode_binary_request(body, header_length)
    except InvalidRequest as exc:
        error = exc

        def reject(_payload: bytes) -> oip.InferRequest:
            raise error

        return (body if header_length is None else body[:header_length]), reject
    return request_log_json(request), lambda _payload: request


# --------------------------------------------------------------------------------------------
# responses


def _output_choice(request: oip.InferRequest) -> tuple[bool, dict[str, bool]]:
    """(the request's default, per-output choices) for binary outputs; checks their types."""
    default = request.parameters.get("binary_data_output", False)
    if type(default) is not bool:
        raise InvalidRequest(
            f"parameters.binary_data_output must be true or false, got {oip._show(default)}"
        )
    chosen: dict[str, bool] = {}
    for output in request.outputs or ():
        if "binary_data" in output.parameters:
            value = output.parameters["binary_data"]
            if type(value) is not bool:
                raise InvalidRequest(
                    f"output '{output.name}': parameters.binary_data must be true or false, "
                    f"got {oip._show(value)}"
                )
            chosen[output.name] = value
    return default, chosen


def binary_outputs(
    request: oip.InferRequest, outputs: Sequence[tuple[str, Any]]
) -> list[bool] | None:
    """Per output (in ``outputs`` order) whether it goes binary; None when none does."""
    if not request.parameters and request.outputs is None:
        return None
    default, chosen = _output_choice(request)
    if not default and not any(chosen.values()):
        return None
    flags = [chosen.get(name, default) for name, _ in outputs]
    return flags if any(flags) else None


def _raw_tensor(name: str, array: npt.NDArray[Any]) -> tuple[str, bytes]:
    """(datatype, little-endian bytes) of one output tensor."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        datatype = numpy_to_oip(array.dtype)
    except ValueError as exc:
        raise RoostError(f"output '{name}': {exc}") from None
    if datatype != "BYTES":
        little = array.dtype.newbyteorder("<")
        return datatype, np.ascontiguousarray(array, dtype=little).tobytes()
    parts: list[bytes] = []
    pack = _LENGTH_PREFIX.pack
    for value in array.ravel().tolist():
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(pack(len(raw)))
        parts.append(raw)
    return datatype, b"".join(parts)


def encode_binary_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, npt.NDArray[Any]]],
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
            tensors.append(oip._tensor(name, array, numpy_data=True))
            continue
        datatype, raw = _raw_tensor(name, array)
        tensors.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(np.shape(array)),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        chunks.append(raw)
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([header, *chunks]), len(header)
