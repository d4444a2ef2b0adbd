"""Tensor datatypes and the checks every encoding shares, written once.

The table of OIP datatypes and numpy dtypes, how values are shown in messages, the tensor
header check (name, datatype, shape, element-count limits), the element-count check, and the
checks on a request's input names and requested outputs. Every message names the field or the
input and what was expected; the JSON, binary and gRPC adapters all raise these same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from registry.errors import InvalidRequest, RoostError
from registry.signature import OIP_TO_NUMPY, numpy_to_oip
from serving.protocol.types import DecodeLimits, RequestInput

__all__ = [
    "DATATYPES_TEXT",
    "FLOAT_DATATYPES",
    "INT_RANGES",
    "MAX_RANK",
    "NARROW_FP",
    "OIP_TO_NUMPY",
    "check_count",
    "check_datatype",
    "check_name",
    "check_output_name",
    "check_shape",
    "check_tensor_header",
    "check_unique_inputs",
    "json_type",
    "output_datatype",
    "shape_text",
    "show",
]

DATATYPES_TEXT = ", ".join(OIP_TO_NUMPY)
"""The datatypes, as listed in messages."""
INT_RANGES: dict[str, tuple[int, int]] = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in OIP_TO_NUMPY.items()
    if dtype.kind in ("i", "u")
}
"""(lowest, highest) value of each integer datatype."""
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
NARROW_FP = frozenset({"FP16", "FP32"})
"""Float datatypes a finite JSON (or FP64) number can overflow."""
MAX_RANK = 32
"""Most dimensions an input's shape may have (numpy itself stops at 64)."""
_SEQUENCES = (list, tuple)


# --------------------------------------------------------------------------------------------
# showing values in messages


def json_type(value: Any) -> str:
    """The JSON type name of a decoded JSON value."""
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


def show(value: Any) -> str:
    """``value`` as compact JSON, at most 60 characters (depth-safe)."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # too deep, too large an int, or not JSON at all
        text = f"a {json_type(value)}" if isinstance(value, list | dict) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def shape_text(shape: Sequence[int]) -> str:
    """A shape as in messages about values: ``[2, 3]``."""
    return str(list(shape))


# --------------------------------------------------------------------------------------------
# the tensor header


def check_name(index: int, name: Any, what: str = "inputs") -> str:
    """Entry ``index`` of ``inputs`` (or ``outputs``) must have a non-empty string name."""
    if type(name) is not str or not name:
        raise InvalidRequest(
            f"{what}[{index}]: 'name' must be a non-empty string, got {show(name)}"
        )
    return name


def check_datatype(name: str, datatype: Any) -> str:
    """One of the OIP datatypes."""
    if type(datatype) is not str or datatype not in OIP_TO_NUMPY:
        raise InvalidRequest(
            f"input '{name}': 'datatype' must be one of {DATATYPES_TEXT}, got {show(datatype)}"
        )
    return datatype


def check_shape(name: str, shape: tuple[int, ...], limits: DecodeLimits) -> int:
    """Check a shape of non-negative ints against the limits before anything is allocated;
    its element count."""
    cap = limits.max_tensor_elements
    if len(shape) > MAX_RANK:
        raise InvalidRequest(
            f"input '{name}': 'shape' has {len(shape)} dimensions; at most {MAX_RANK} are allowed"
        )
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(
                f"input '{name}': 'shape' must be a list of non-negative integers, "
                f"got {show(list(shape))}"
            )
        if dim > cap:
            raise InvalidRequest(
                f"input '{name}': dimension {dim} of shape {show(list(shape))} exceeds the "
                f"limit of {cap} elements per tensor (max_tensor_elements)"
            )
    count = math.prod(shape)
    if count > cap:
        raise InvalidRequest(
            f"input '{name}': shape {show(list(shape))} has {count} elements, more than the "
            f"limit of {cap} per tensor (max_tensor_elements)"
        )
    return count


def check_tensor_header(
    index: int, name: Any, datatype: Any, shape: Any, limits: DecodeLimits
) -> tuple[str, str, tuple[int, ...], int]:
    """The checked (name, datatype, shape, element count) of request input ``index``.

    ``shape`` may be any decoded value (a JSON value, a protobuf repeated field as a list).
    """
    name = check_name(index, name)
    datatype = check_datatype(name, datatype)
    if type(shape) in _SEQUENCES and all(type(d) is int and d >= 0 for d in shape):
        dims = tuple(shape)
        return name, datatype, dims, check_shape(name, dims, limits)
    raise InvalidRequest(
        f"input '{name}': 'shape' must be a list of non-negative integers, got {show(shape)}"
    )


def check_count(name: str, shape: tuple[int, ...], count: int, got: int) -> None:
    """The data holds as many values as the shape needs."""
    if got != count:
        raise InvalidRequest(
            f"input '{name}': shape {shape_text(shape)} needs {count} values, got {got}"
        )


# --------------------------------------------------------------------------------------------
# the request as a whole


def check_unique_inputs(inputs: Sequence[RequestInput]) -> None:
    """No input name may appear twice."""
    if len(inputs) > 1:
        seen: set[str] = set()
        for tensor in inputs:
            if tensor.name in seen:
                raise InvalidRequest(f"input '{tensor.name}' appears more than once")
            seen.add(tensor.name)


def check_output_name(index: int, name: Any, seen: set[str]) -> str:
    """The name of requested output ``index``: non-empty and not requested before (``seen``,
    which gets it)."""
    checked = check_name(index, name, "outputs")
    if checked in seen:
        raise InvalidRequest(f"output '{checked}' is requested more than once")
    seen.add(checked)
    return checked


def output_datatype(name: str, array: npt.NDArray[Any]) -> str:
    """The OIP datatype of output ``name`` (a RoostError, 500, when there is none)."""
    try:
        datatype: str = numpy_to_oip(array.dtype)
    except ValueError as exc:
        raise RoostError(f"output '{name}': {exc}") from None
    return datatype
