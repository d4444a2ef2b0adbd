"""JSON tensor ``data`` to numpy arrays: the JSON encoding's own part of decoding a tensor.

On the request hot path numeric tensors go through ``np.asarray`` first; the element-by-element
walk (which produces the precise error message) only runs when that fails or when the data
holds JSON values the datatype does not accept.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.errors import InvalidRequest
from serving.protocol.tensors import (
    INT_RANGES,
    NARROW_FP,
    OIP_TO_NUMPY,
    check_count,
    check_datatype,
    check_shape,
    json_type,
    show,
)
from serving.protocol.types import DEFAULT_LIMITS, DecodeLimits

__all__ = ["decode_json_data", "json_data_to_array"]

# The Python types (as orjson produces them) each datatype family accepts. ``bool`` is a
# subclass of ``int`` but a distinct ``type()``, so exact-type sets keep booleans out of numbers.
_BOOL_TYPES: frozenset[type] = frozenset({bool})
_INT_TYPES: frozenset[type] = frozenset({int})
_FP_TYPES: frozenset[type] = frozenset({int, float})


def _too_deep(name: str, base: int, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"input '{name}': 'data' nests more than {limit - base} arrays deep (the request JSON "
        f"may nest at most {limit} levels; max_json_depth)"
    )


def _flatten(name: str, data: Any, base: int, limit: int) -> list[Any]:
    """Flatten nested ``data`` row-major, insisting that it is rectangular.

    ``base`` is how deep in the request JSON ``data`` sits (its own array not counted).
    """
    if not isinstance(data, list):
        raise InvalidRequest(
            f"input '{name}': 'data' must be a JSON array (flat or nested), got {json_type(data)}"
        )
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


def _check_values(name: str, datatype: str, values: list[Any]) -> None:
    """Raise for the first value ``datatype`` does not accept."""
    if datatype == "BOOL":
        for index, value in enumerate(values):
            if type(value) is not bool:
                raise InvalidRequest(
                    f"input '{name}': BOOL data must be true or false, "
                    f"got {show(value)} at index {index}"
                )
    elif datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        for index, value in enumerate(values):
            if type(value) is not int:
                raise InvalidRequest(
                    f"input '{name}': {datatype} data must be integers, "
                    f"got {show(value)} at index {index}"
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
                    f"got {show(value)} at index {index}"
                )
    else:  # FP16 / FP32 / FP64
        for index, value in enumerate(values):
            if type(value) not in _FP_TYPES:
                raise InvalidRequest(
                    f"input '{name}': {datatype} data must be numbers, "
                    f"got {show(value)} at index {index}"
                )


def _fast_array(datatype: str, data: list[Any]) -> npt.NDArray[Any] | None:
    """``np.asarray`` with the right dtype, or None when the careful path must decide."""
    dtype = OIP_TO_NUMPY[datatype]
    try:
        if datatype in NARROW_FP:
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


def decode_json_data(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    data: Any,
    base: int,
    limits: DecodeLimits,
) -> npt.NDArray[Any]:
    """The JSON ``data`` of a checked header (``count``: the shape's element count) as an
    array of ``shape``; ``base``: how deep ``data`` sits in the request JSON."""
    limit = limits.max_json_depth
    if datatype != "BYTES" and isinstance(data, list):
        array = _fast_array(datatype, data)
        if array is not None:
            if base + array.ndim > limit:
                raise _too_deep(name, base, limit)
            check_count(name, shape, count, array.size)
            return array.reshape(shape)
    values = _flatten(name, data, base, limit)
    check_count(name, shape, count, len(values))
    _check_values(name, datatype, values)
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = [value.encode("utf-8") for value in values]
        return array.reshape(shape)
    dtype = OIP_TO_NUMPY[datatype]
    with np.errstate(over="ignore"):
        array = np.array(values, dtype=dtype)
    if datatype in NARROW_FP:
        overflow = np.flatnonzero(np.isinf(array))
        if overflow.size:
            index = int(overflow[0])
            raise InvalidRequest(
                f"input '{name}': value {show(values[index])} out of range for {datatype} "
                f"at index {index}"
            )
    return array.reshape(shape)


def json_data_to_array(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    data: Any,
    base: int = 0,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> npt.NDArray[Any]:
    """Convert the JSON ``data`` of input ``name`` into an array of ``shape``.

    ``data`` may be flat or nested (rectangular, row-major); its element count must equal the
    product of ``shape``, which must be within the limits. BYTES data become a numpy object
    array of ``bytes``. ``base``: how deep ``data`` sits in the request JSON, for
    ``max_json_depth``.
    """
    check_datatype(name, datatype)
    count = check_shape(name, shape, limits)
    return decode_json_data(name, datatype, shape, count, data, base, limits)
