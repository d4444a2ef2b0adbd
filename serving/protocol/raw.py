"""Raw tensor bytes, written once: little-endian values, BOOL octets and BYTES elements.

The binary tensor extension (``parameters.binary_data_size``) and gRPC's
``raw_input_contents`` / ``raw_output_contents`` share this wire format: fixed-size datatypes
as little-endian values, BOOL as one byte (0 or 1) per element, BYTES as per element a 4-byte
little-endian length followed by that many bytes.

Messages name where the bytes came from (``source``: the binary extension's
``binary_data_size N``, gRPC's ``raw_input_contents of N bytes``); the rest of the text is the
same for every encoding.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from registry.errors import InvalidRequest
from serving.protocol.tensors import OIP_TO_NUMPY, output_datatype

__all__ = [
    "LENGTH_PREFIX",
    "check_raw_size",
    "decode_bool",
    "decode_bytes_elements",
    "encode_bytes_elements",
    "encode_raw",
    "raw_to_array",
]

LENGTH_PREFIX = struct.Struct("<I")
"""The 4-byte little-endian length before each BYTES element."""


def check_raw_size(
    name: str, datatype: str, shape: tuple[int, ...], count: int, size: int, source: str
) -> None:
    """``size`` raw bytes must be exactly ``count`` values of a fixed-size ``datatype``."""
    if datatype == "BYTES":
        return
    itemsize = OIP_TO_NUMPY[datatype].itemsize
    if size != count * itemsize:
        raise InvalidRequest(
            f"input '{name}': {source} does not match shape {list(shape)} of {datatype} "
            f"({count} elements x {itemsize} bytes = {count * itemsize} bytes)"
        )


def decode_bytes_elements(
    name: str, raw: memoryview | bytes, count: int, source: str
) -> npt.NDArray[Any]:
    """Parse ``count`` length-prefixed BYTES elements that must fill ``raw`` exactly.

    Nothing is allocated per element before its bytes are there: a shape that promises more
    elements than the data holds costs no more than the data.
    """
    view = memoryview(raw)
    items: list[bytes] = []
    end = len(view)
    pos = 0
    for index in range(count):
        if pos + 4 > end:
            raise InvalidRequest(
                f"input '{name}': BYTES element {index} has a truncated length prefix "
                f"({end - pos} of 4 bytes left in {source})"
            )
        (length,) = LENGTH_PREFIX.unpack_from(view, pos)
        pos += 4
        if pos + length > end:
            raise InvalidRequest(
                f"input '{name}': BYTES element {index} declares {length} bytes but only "
                f"{end - pos} are left in {source}"
            )
        items.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != end:
        raise InvalidRequest(
            f"input '{name}': {source} has {end - pos} bytes left over after "
            f"its {count} BYTES elements"
        )
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def decode_bool(name: str, raw: memoryview | bytes) -> npt.NDArray[np.bool_]:
    """One byte per element, each 0 or 1."""
    octets = np.frombuffer(raw, dtype=np.uint8)
    bad = np.flatnonzero(octets > 1)
    if bad.size:
        index = int(bad[0])
        raise InvalidRequest(
            f"input '{name}': BOOL bytes must be 0 or 1, got {int(octets[index])} "
            f"at index {index}"
        )
    return octets.view(np.bool_)


def raw_to_array(
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    raw: memoryview | bytes,
    source: str,
) -> npt.NDArray[Any]:
    """The tensor held by ``raw`` (shape already checked against the limits; ``count`` is its
    element count)."""
    check_raw_size(name, datatype, shape, count, len(raw), source)
    if datatype == "BYTES":
        return decode_bytes_elements(name, raw, count, source).reshape(shape)
    if datatype == "BOOL":
        return decode_bool(name, raw).reshape(shape)
    dtype = OIP_TO_NUMPY[datatype]
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    if not array.dtype.isnative:
        array = array.astype(dtype)
    return array.reshape(shape)


# --------------------------------------------------------------------------------------------
# encoding


def encode_bytes_elements(array: npt.NDArray[Any]) -> bytes:
    """BYTES elements (``bytes``, or anything else as its UTF-8 text), length-prefixed."""
    parts: list[bytes] = []
    pack = LENGTH_PREFIX.pack
    for value in array.ravel().tolist():
        item = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def encode_raw(name: str, value: npt.NDArray[Any]) -> tuple[str, list[int], bytes]:
    """(datatype, shape, raw little-endian bytes) of output ``name``."""
    array = np.asarray(value)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    datatype = output_datatype(name, array)
    shape = list(array.shape)
    if datatype == "BYTES":
        return datatype, shape, encode_bytes_elements(array)
    little = array.dtype.newbyteorder("<")
    return datatype, shape, np.ascontiguousarray(array, dtype=little).tobytes()
