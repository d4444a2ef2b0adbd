"""Open Inference Protocol v2 (KServe v2 / Triton) JSON codec: pure numpy + orjson.

Requests are decoded into numpy arrays, checked against a version's :class:`Signature` and the
model's outputs are encoded back into a v2 response body. Every problem with a request raises
:class:`~registry.errors.InvalidRequest` with a message naming the field or input and what was
expected.

Decoding is on the request hot path: numeric tensors go through ``np.asarray`` first and the
element-by-element walk (which produces the precise error message) only runs when that fails or
when the data holds JSON values the datatype does not accept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from registry.errors import InvalidRequest, RoostError
from registry.signature import OIP_TO_NUMPY, Signature, numpy_to_oip

__all__ = [
    "LIMITS",
    "DecodeLimits",
    "InferRequest",
    "RequestInput",
    "RequestedOutput",
    "check_json_depth",
    "check_shape",
    "current_limits",
    "decode_infer_request",
    "encode_infer_response",
    "json_data_to_array",
    "json_error",
    "select_outputs",
    "tensor_to_json",
    "using_limits",
    "validate_against_signature",
]

_DATATYPES = ", ".join(OIP_TO_NUMPY)

# The Python types (as orjson produces them) each datatype family accepts. ``bool`` is a
# subclass of ``int`` but a distinct ``type()``, so exact-type sets keep booleans out of numbers.
_BOOL_TYPES: frozenset[type] = frozenset({bool})
_INT_TYPES: frozenset[type] = frozenset({int})
_FP_TYPES: frozenset[type] = frozenset({int, float})

_INT_RANGES: dict[str, tuple[int, int]] = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in OIP_TO_NUMPY.items()
    if dtype.kind in ("i", "u")
}
# Float types a finite JSON number can overflow (orjson never yields inf or nan).
_NARROW_FP = frozenset({"FP16", "FP32"})
_FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
MAX_RANK = 32
"""Most dimensions an input's shape may have (numpy itself stops at 64)."""


# --------------------------------------------------------------------------------------------
# limits


@dataclass(frozen=True)
class DecodeLimits:
    """What a request may ask of the decoder (``RoostSettings``' limits of the same names)."""

    max_tensor_elements: int = 16 * 1024 * 1024
    """Most elements per input tensor, and the largest single dimension."""
    max_json_depth: int = 64
    """How deeply the request's JSON may nest, counted from the document's root."""

    @classmethod
    def from_settings(cls, settings: Any) -> DecodeLimits:
        return cls(
            max_tensor_elements=int(settings.max_tensor_elements),
            max_json_depth=int(settings.max_json_depth),
        )


# The transports (serving/fastpath.py for every REST request, serving/grpc_server.py per RPC)
# set the gateway's limits for the request they handle; the decoders read them from here, so
# the codec's signatures stay free of settings.
DEFAULT_LIMITS = DecodeLimits()
LIMITS: ContextVar[DecodeLimits] = ContextVar("roost_decode_limits", default=DEFAULT_LIMITS)
"""The limits in force (set per request by the transports; :func:`using_limits`)."""


def current_limits() -> DecodeLimits:
    """The limits in force for the request being decoded."""
    return LIMITS.get()


@contextmanager
def using_limits(limits: DecodeLimits) -> Iterator[DecodeLimits]:
    """Decode with ``limits`` inside the block (in this task and the tasks it starts)."""
    token = LIMITS.set(limits)
    try:
        yield limits
    finally:
        LIMITS.reset(token)


def check_shape(name: str, shape: tuple[int, ...], limits: DecodeLimits | None = None) -> int:
    """Check a request's shape against the limits before anything is allocated; its count."""
    limits = limits or LIMITS.get()
    cap = limits.max_tensor_elements
    if len(shape) > MAX_RANK:
        raise InvalidRequest(
            f"input '{name}': 'shape' has {len(shape)} dimensions; at most {MAX_RANK} are allowed"
        )
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(
                f"input '{name}': 'shape' must be a list of non-negative integers, "
                f"got {_shape_text(shape)}"
            )
        if dim > cap:
            raise InvalidRequest(
                f"input '{name}': dimension {dim} of shape {_show(list(shape))} exceeds the "
                f"limit of {cap} elements per tensor (max_tensor_elements)"
            )
    count = math.prod(shape)
    if count > cap:
        raise InvalidRequest(
            f"input '{name}': shape {_show(list(shape))} has {count} elements, more than the "
            f"limit of {cap} per tensor (max_tensor_elements)"
        )
    return count


def _deeper_than(value: Any, levels: int) -> bool:
    """Whether the container ``value`` nests more than ``levels`` containers deep.

    Iterative: a document as deep as the JSON parser allows must not exhaust the stack here.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > levels:
            return True
        for child in item.values() if type(item) is dict else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _nested_too_deep(limit: int, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"the request JSON nests deeper than {limit} levels (in {where}; max_json_depth)"
    )


def check_json_depth(value: Any, limit: int, where: str, base: int = 0) -> None:
    """Raise when ``value``, found ``base`` levels deep in the request JSON, takes it past
    ``limit`` levels of objects and arrays."""
    if isinstance(value, dict | list) and _deeper_than(value, limit - base):
        raise _nested_too_deep(limit, where)


def _check_request_depth(request: dict[str, Any], limit: int) -> None:
    """Depth of everything but the tensors' ``data`` (checked while it is converted)."""
    for key, value in request.items():
        if not isinstance(value, dict | list):
            continue
        if key == "inputs" and type(value) is list:
            for index, item in enumerate(value):
                if type(item) is not dict:
                    if isinstance(item, list) and _deeper_than(item, limit - 2):
                        raise _nested_too_deep(limit, f"inputs[{index}]")
                    continue
                for field, entry in item.items():
                    # 'data' is checked as it is converted; a 'shape' holding anything but
                    # integers is refused by name (its rendering is depth-safe, see _show)
                    if (
                        isinstance(entry, dict | list)
                        and field != "data"
                        and field != "shape"
                        and _deeper_than(entry, limit - 3)
                    ):
                        raise _nested_too_deep(limit, f"inputs[{index}].{field}")
        elif _deeper_than(value, limit - 1):
            raise _nested_too_deep(limit, f"'{key}'")


def _nesting_at(raw: bytes) -> int:
    """The deepest bracket nesting in ``raw``, strings left out (error path, short prefix)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def json_error(raw: bytes | memoryview, exc: orjson.JSONDecodeError, what: str) -> InvalidRequest:
    """A clear 400 for JSON that orjson refused: not UTF-8, too deep, or malformed."""
    data = bytes(raw)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidRequest(
            f"{what} is not valid UTF-8 (byte 0x{data[bad.start]:02x} at offset {bad.start}); "
            "JSON must be UTF-8 encoded"
        )
    limit = LIMITS.get().max_json_depth
    # orjson stops at 1024 levels ("depth limit exceeded"); a document cut short inside deep
    # nesting gets other messages, so look at the text up to where it stopped (a prefix).
    if "depth" in exc.msg or _nesting_at(data[: min(max(0, exc.pos) + 16, 4096)]) > limit:
        return InvalidRequest(f"{what} nests deeper than {limit} levels (max_json_depth)")
    return InvalidRequest(f"{what} is not valid JSON: {exc}")


@dataclass
class RequestInput:
    """One input tensor of a request; ``data`` already has the request's ``shape``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any]
    parameters: dict[str, Any]


@dataclass
class RequestedOutput:
    """One entry of a request's ``outputs``."""

    name: str
    parameters: dict[str, Any]


@dataclass
class InferRequest:
    """A decoded v2 inference request; ``outputs`` is None when the client asked for all."""

    id: str | None
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any]


# --------------------------------------------------------------------------------------------
# helpers for messages


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # too deep, too large an int, or not JSON at all
        text = f"a {_json_type(value)}" if isinstance(value, list | dict) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shape_text(shape: tuple[int, ...]) -> str:
    return str(list(shape))


# --------------------------------------------------------------------------------------------
# tensor data


def _too_deep(name: str, base: int, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"input '{name}': 'data' nests more than {limit - base} arrays deep (the request JSON "
        f"may nest at most {limit} levels; max_json_depth)"
    )


def _flatten(name: str, data: Any, base: int = 0) -> list[Any]:
    """Flatten nested ``data`` row-major, insisting that it is rectangular.

    ``base`` is how deep in the request JSON ``data`` sits (its own array not counted).
    """
    if not isinstance(data, list):
        raise InvalidRequest(
            f"input '{name}': 'data' must be a JSON array (flat or nested), got {_json_type(data)}"
        )
    limit = LIMITS.get().max_json_depth
    level: list[Any] = data
    depth = 1
    while level:
        if base + depth > limit:
            raise _too_deep(name, base, limit)
        lists = sum(1 for item in level if isinstance(item, list))
        if lists == 0:
            return level
        if lists != len(level):
            raise InvalidRequest(
                f"input '{name}': nested 'data' mixes arrays and values at depth {depth}; "
                "it must be rectangular"
            )
        lengths = {len(item) for item in level}
        if len(lengths) > 1:
            raise InvalidRequest(
                f"input '{name}': nested 'data' is ragged at depth {depth + 1} (array lengths "
                f"{sorted(lengths)}); it must be rectangular"
            )
        level = [value for item in level for value in item]
        depth += 1
    return level


def _check_count(name: str, shape: tuple[int, ...], count: int, got: int) -> None:
    if got != count:
        raise InvalidRequest(
            f"input '{name}': shape {_shape_text(shape)} needs {count} values, got {got}"
        )


def _check_values(name: str, datatype: str, values: list[Any]) -> None:
    """Raise for the first value ``datatype`` does not accept."""
    if datatype == "BOOL":
        for index, value in enumerate(values):
            if type(value) is not bool:
                raise InvalidRequest(
                    f"input '{name}': BOOL data must be true or false, "
                    f"got {_show(value)} at index {index}"
                )
    elif datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        for index, value in enumerate(values):
            if type(value) is not int:
                raise InvalidRequest(
                    f"input '{name}': {datatype} data must be integers, "
                    f"got {_show(value)} at index {index}"
                )
            if not low <= value <= high:
                raise InvalidRequest(
                    f"input '{name}': value {value} out of range for {datatype} "
                    f"({low} to {high}) at index {index}"
                )
    elif datatype == "BYTES":
        for index, value in enumerate(values):
            if type(value) is not str:
                raise InvalidRequest(
                    f"input '{name}': BYTES data must be strings, "
                    f"got {_show(value)} at index {index}"
                )
    else:  # FP16 / FP32 / FP64
        for index, value in enumerate(values):
            if type(value) not in _FP_TYPES:
                raise InvalidRequest(
                    f"input '{name}': {datatype} data must be numbers, "
                    f"got {_show(value)} at index {index}"
                )


def _fast_array(datatype: str, data: list[Any]) -> npt.NDArray[Any] | None:
    """``np.asarray`` with the right dtype, or None when the careful path must decide."""
    dtype = OIP_TO_NUMPY[datatype]
    try:
        if datatype in _NARROW_FP:
            with np.errstate(over="raise"):
                array = np.asarray(data, dtype=dtype)
        else:
            array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        return None
    # np.asarray is lenient (bools and numeric strings become numbers, null becomes nan): make
    # sure every leaf is a JSON value of the accepted kind.
    leaves: Any = data
    for _ in range(array.ndim - 1):
        leaves = chain.from_iterable(leaves)
    if datatype == "BOOL":
        allowed = _BOOL_TYPES
    elif dtype.kind == "f":
        allowed = _FP_TYPES
    else:
        allowed = _INT_TYPES
    if not set(map(type, leaves)) <= allowed:
        return None
    return array


def json_data_to_array(
    name: str, datatype: str, shape: tuple[int, ...], data: Any, base: int = 0
) -> npt.NDArray[Any]:
    """Convert the JSON ``data`` of input ``name`` into an array of ``shape``.

    ``data`` may be flat or nested (rectangular, row-major); its element count must equal the
    product of ``shape``, which must be within the limits (:func:`check_shape`). BYTES data
    become a numpy object array of ``bytes``. ``base``: how deep ``data`` sits in the request
    JSON, for ``max_json_depth``.
    """
    if datatype not in OIP_TO_NUMPY:
        raise InvalidRequest(
            f"input '{name}': 'datatype' must be one of {_DATATYPES}, got {_show(datatype)}"
        )
    count = check_shape(name, shape)
    if datatype != "BYTES" and isinstance(data, list):
        array = _fast_array(datatype, data)
        if array is not None:
            limit = LIMITS.get().max_json_depth
            if base + array.ndim > limit:
                raise _too_deep(name, base, limit)
            _check_count(name, shape, count, array.size)
            return array.reshape(shape)
    values = _flatten(name, data, base)
    _check_count(name, shape, count, len(values))
    _check_values(name, datatype, values)
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = [value.encode("utf-8") for value in values]
        return array.reshape(shape)
    dtype = OIP_TO_NUMPY[datatype]
    with np.errstate(over="ignore"):
        array = np.array(values, dtype=dtype)
    if datatype in _NARROW_FP:
        overflow = np.flatnonzero(np.isinf(array))
        if overflow.size:
            index = int(overflow[0])
            raise InvalidRequest(
                f"input '{name}': value {_show(values[index])} out of range for {datatype} "
                f"at index {index}"
            )
    return array.reshape(shape)


# --------------------------------------------------------------------------------------------
# requests


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}'parameters' must be an object, got {_json_type(value)}")
    return value


def _decode_shape(name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape):
        result = tuple(shape)
        check_shape(name, result)
        return result
    raise InvalidRequest(
        f"input '{name}': 'shape' must be a list of non-negative integers, got {_show(shape)}"
    )


def decode_tensor_header(index: int, item: dict[str, Any]) -> tuple[str, str, tuple[int, ...]]:
    """The checked ``name``, ``datatype`` and ``shape`` of request input ``index``.

    Shared by the JSON decoder and the binary tensor extension (serving/binary.py).
    """
    name = item.get("name")
    if type(name) is not str or not name:
        raise InvalidRequest(
            f"inputs[{index}]: 'name' must be a non-empty string, got {_show(name)}"
        )
    datatype = item.get("datatype")
    if type(datatype) is not str or datatype not in OIP_TO_NUMPY:
        raise InvalidRequest(
            f"input '{name}': 'datatype' must be one of {_DATATYPES}, got {_show(datatype)}"
        )
    return name, datatype, _decode_shape(name, item.get("shape"))


def _decode_input(index: int, item: Any) -> RequestInput:
    if not isinstance(item, dict):
        raise InvalidRequest(f"inputs[{index}] must be an object, got {_json_type(item)}")
    name, datatype, shape = decode_tensor_header(index, item)
    if "data" not in item:
        raise InvalidRequest(
            f"input '{name}': 'data' is required (binary tensor data is not supported)"
        )
    parameters = _parameters(item.get("parameters"), f"input '{name}': ")
    # request object, 'inputs' array, input object: 'data' sits three levels deep
    data = json_data_to_array(name, datatype, shape, item["data"], base=3)
    return RequestInput(name, datatype, shape, data, parameters)


def _decode_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest(
            f"'outputs' must be a list of objects with a 'name', got {_json_type(value)}"
        )
    if not value:  # an empty list asks for nothing in particular: every output
        return None
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"outputs[{index}] must be an object, got {_json_type(item)}")
        name = item.get("name")
        if type(name) is not str or not name:
            raise InvalidRequest(
                f"outputs[{index}]: 'name' must be a non-empty string, got {_show(name)}"
            )
        if name in seen:
            raise InvalidRequest(f"output '{name}' is requested more than once")
        seen.add(name)
        outputs.append(
            RequestedOutput(name, _parameters(item.get("parameters"), f"output '{name}': "))
        )
    return outputs


def decode_infer_request(body: bytes) -> InferRequest:
    """Parse a v2 inference request body; raises InvalidRequest naming what is wrong."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise json_error(body, exc, "request body") from None
    if not isinstance(request, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {_json_type(request)}")
    _check_request_depth(request, LIMITS.get().max_json_depth)
    request_id = request.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidRequest(f"'id' must be a string, got {_json_type(request_id)}")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest(
            "'inputs' must be a non-empty list of tensors, got "
            + ("an empty list" if isinstance(raw_inputs, list) else _json_type(raw_inputs))
        )
    inputs = [_decode_input(index, item) for index, item in enumerate(raw_inputs)]
    if len(inputs) > 1:
        seen: set[str] = set()
        for tensor in inputs:
            if tensor.name in seen:
                raise InvalidRequest(f"input '{tensor.name}' appears more than once")
            seen.add(tensor.name)
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_decode_outputs(request.get("outputs")),
        parameters=_parameters(request.get("parameters"), ""),
    )


def _check_finite(name: str, array: npt.NDArray[Any]) -> None:
    """nan_policy ``reject``: refuse NaN and +/-Inf in a floating-point input."""
    finite = np.isfinite(array)
    if finite.all():
        return
    index = int(np.flatnonzero(~finite.reshape(-1))[0])
    value = array.reshape(-1)[index]
    raise InvalidRequest(
        f"input '{name}': value {value} at index {index} is not finite; this model refuses "
        "NaN and Inf inputs (nan_policy: reject)"
    )


def validate_against_signature(
    request: InferRequest, signature: Signature, nan_policy: str = "allow"
) -> dict[str, npt.NDArray[Any]]:
    """Check the request's inputs against the signature; {name: array} in signature order.

    ``nan_policy`` is the version's knob of that name: ``reject`` refuses floating-point inputs
    holding NaN or +/-Inf.
    """
    reject_nan = nan_policy == "reject"
    given = {tensor.name: tensor for tensor in request.inputs}
    for name in given:
        if signature.input(name) is None:
            names = ", ".join(spec.name for spec in signature.inputs)
            raise InvalidRequest(f"unknown input '{name}'; model inputs are: {names}")
    feeds: dict[str, npt.NDArray[Any]] = {}
    for spec in signature.inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidRequest(
                f"missing input '{spec.name}' ({spec.datatype}, shape {_shape_text(spec.shape)})"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidRequest(
                f"input '{spec.name}': expected datatype {spec.datatype}, got {tensor.datatype}"
            )
        if len(tensor.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
        ):
            raise InvalidRequest(
                f"input '{spec.name}': expected shape {_shape_text(spec.shape)}, "
                f"got {_shape_text(tensor.shape)}"
            )
        if reject_nan and tensor.datatype in _FLOAT_DATATYPES:
            _check_finite(spec.name, tensor.data)
        feeds[spec.name] = tensor.data.reshape(tensor.shape)
    return feeds


def select_outputs(
    request: InferRequest, signature: Signature, outputs: dict[str, npt.NDArray[Any]]
) -> list[tuple[str, npt.NDArray[Any]]]:
    """The outputs to return: those requested (in request order), or all in signature order."""
    if request.outputs is None:
        return [
            (spec.name, outputs[spec.name]) for spec in signature.outputs if spec.name in outputs
        ]
    selected: list[tuple[str, npt.NDArray[Any]]] = []
    for wanted in request.outputs:
        if signature.output(wanted.name) is None:
            names = ", ".join(spec.name for spec in signature.outputs)
            raise InvalidRequest(f"unknown output '{wanted.name}'; model outputs are: {names}")
        if wanted.name not in outputs:
            raise RoostError(f"the model produced no output '{wanted.name}'")
        selected.append((wanted.name, outputs[wanted.name]))
    return selected


# --------------------------------------------------------------------------------------------
# responses


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return str(value)


def _tensor(name: str, array: npt.NDArray[Any], numpy_data: bool) -> dict[str, Any]:
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        datatype = numpy_to_oip(array.dtype)
    except ValueError as exc:
        raise RoostError(f"output '{name}': {exc}") from None
    flat = array.ravel()
    data: Any
    if datatype == "BYTES":
        data = [_as_text(value) for value in flat.tolist()]
    elif datatype == "FP16" or not numpy_data:
        data = flat.tolist()  # Python floats / ints / bools
    else:
        data = flat  # serialized by orjson's numpy support
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def tensor_to_json(name: str, array: npt.NDArray[Any]) -> dict[str, Any]:
    """One output tensor as a v2 JSON object; ``data`` is a flat list of JSON values."""
    return _tensor(name, array, numpy_data=False)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, npt.NDArray[Any]]],
    parameters: dict[str, Any] | None = None,
) -> bytes:
    """The body of a v2 inference response."""
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    if parameters is not None:
        body["parameters"] = parameters
    body["outputs"] = [_tensor(name, array, numpy_data=True) for name, array in outputs]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
