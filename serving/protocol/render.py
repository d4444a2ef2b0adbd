"""The one rendering of a request's inputs for the prediction log: compact, structured JSON.

``{"inputs":[{"name":..,"datatype":..,"shape":[..],"data":[..]}],"features":{..}}``

* ``data`` is flat (row-major), like v2 JSON ``data``; NaN and +/-Inf show as the strings
  ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (JSON has no such numbers).
* BYTES show as UTF-8 text when every element is valid UTF-8; otherwise every element is
  base64 and the tensor says so with ``"encoding":"base64"``.
* A tensor of more than :data:`MAX_RENDERED_ELEMENTS` elements is summarized instead of
  listed: ``"summary":{"elements":n,"sha256":..}`` (the SHA-256 of its raw little-endian
  bytes, BYTES length-prefixed as on the wire), plus ``min``/``max``/``mean`` for numbers and
  ``true`` (how many) for BOOL. When the whole text would still pass
  :data:`MAX_RENDERED_CHARS`, the largest listed tensors are summarized too, so the result
  stays whole JSON: it never has to be cut, least of all mid-value.

A payload that did not decode is recorded by :func:`render_rejected` as
``{"inputs":[{"name":..,"datatype":..,"shape":[..]}],"rejected":{"bytes":n}}``: the tensor
headers that could be read (never data; see :func:`json_preview`) and the payload's size;
the record's ``error`` column says what was wrong.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from serving.protocol.raw import encode_bytes_elements
from serving.protocol.types import InferRequest, RequestInput
from warehouse.minimise import EXCLUDED

__all__ = [
    "MAX_RENDERED_CHARS",
    "MAX_RENDERED_ELEMENTS",
    "json_preview",
    "render_inputs",
    "render_rejected",
    "summarize_tensor",
]

MAX_RENDERED_ELEMENTS = 4096
"""Tensors with more elements are summarized (name, datatype, shape, sha256, statistics)."""
MAX_RENDERED_CHARS = 65536
"""Above this many characters the largest listed tensors are summarized as well."""

MAX_PREVIEW_TENSORS = 16
"""A rejected payload's record lists at most this many tensor headers."""
MAX_PREVIEW_BYTES = 1024 * 1024
"""A rejected JSON body longer than this is not parsed again for its tensor headers."""

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _number(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else _NON_FINITE[value]


def _finite_data(flat: npt.NDArray[Any]) -> list[float | str]:
    """Float data with NaN and +/-Inf as strings (per element: only when there are some)."""
    return [_number(value) for value in flat.tolist()]


def _bytes_data(flat: npt.NDArray[Any]) -> tuple[list[str], bool]:
    """(elements as text, whether they are base64)."""
    raw = [
        value if isinstance(value, bytes) else str(value).encode("utf-8")
        for value in flat.tolist()
    ]
    try:
        return [value.decode("utf-8") for value in raw], False
    except UnicodeDecodeError:
        return [base64.b64encode(value).decode("ascii") for value in raw], True


def _raw_bytes(tensor: RequestInput) -> bytes:
    if tensor.datatype == "BYTES":
        return encode_bytes_elements(tensor.data)
    array = np.asarray(tensor.data)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def summarize_tensor(tensor: RequestInput) -> dict[str, Any]:
    """What the log keeps of a tensor too large to list."""
    flat = np.asarray(tensor.data).reshape(-1)
    summary: dict[str, Any] = {
        "elements": int(flat.size),
        "sha256": hashlib.sha256(_raw_bytes(tensor)).hexdigest(),
    }
    if flat.size and flat.dtype.kind in "iuf":
        wide = flat.astype(np.float64) if flat.dtype.kind == "f" else flat
        summary["min"] = _number(float(wide.min())) if wide.dtype.kind == "f" else int(wide.min())
        summary["max"] = _number(float(wide.max())) if wide.dtype.kind == "f" else int(wide.max())
        summary["mean"] = _number(float(np.mean(wide, dtype=np.float64)))
    elif flat.dtype.kind == "b":
        summary["true"] = int(np.count_nonzero(flat))
    return {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "summary": summary,
    }


def _listed(tensor: RequestInput) -> dict[str, Any]:
    flat = tensor.data.reshape(-1)
    entry: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
    }
    kind = flat.dtype.kind
    if kind == "O" or tensor.datatype == "BYTES":
        entry["data"], encoded = _bytes_data(flat)
        if encoded:
            entry["encoding"] = "base64"
    elif flat.dtype == np.float16:  # exact as float32, which orjson serializes
        entry["data"] = flat.astype(np.float32)
    elif not flat.dtype.isnative:
        entry["data"] = flat.astype(flat.dtype.newbyteorder("="))
    else:
        entry["data"] = flat  # serialized by orjson's numpy support, no per-element work
    return entry


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTIONS, default=str)


def _spell_non_finite(entries: list[dict[str, Any]]) -> bool:
    """Replace listed float data holding NaN or +/-Inf (which orjson writes as null)."""
    changed = False
    for entry in entries:
        data = entry.get("data")
        if isinstance(data, np.ndarray) and data.dtype.kind == "f" and not np.isfinite(data).all():
            entry["data"] = _finite_data(data)
            changed = True
    return changed


def _within_budget(
    request: InferRequest, entries: list[dict[str, Any]], body: dict[str, Any]
) -> bytes:
    """Summarize the largest listed tensors until the text fits :data:`MAX_RENDERED_CHARS`."""
    sizes = [len(_dumps(entry)) for entry in entries]
    total = len(_dumps(body))
    for index in sorted(range(len(entries)), key=sizes.__getitem__, reverse=True):
        if total <= MAX_RENDERED_CHARS:
            break
        if "summary" in entries[index] or isinstance(entries[index].get("data"), str):
            continue
        entries[index] = summarize_tensor(request.inputs[index])
        total += len(_dumps(entries[index])) - sizes[index]
    return _dumps(body)


def _excluded(tensor: RequestInput) -> dict[str, Any]:
    """A tensor the model's ``log_exclude`` names: its header, never its data."""
    return {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "data": EXCLUDED,
    }


def render_inputs(
    request: InferRequest,
    features: Mapping[str, Any] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> str:
    """``request``'s inputs (and the ``features`` used, when given) as compact JSON text.

    Inputs and features named in ``exclude`` (the version's ``log_exclude``, see
    :mod:`warehouse.minimise`) show ``"[excluded]"`` instead of their data or value.
    """
    entries = [
        _excluded(tensor) if tensor.name in exclude
        else summarize_tensor(tensor) if tensor.data.size > MAX_RENDERED_ELEMENTS
        else _listed(tensor)
        for tensor in request.inputs
    ]  # fmt: skip
    body: dict[str, Any] = {"inputs": entries}
    if features is not None:
        body["features"] = {
            name: EXCLUDED if name in exclude else value for name, value in features.items()
        } if exclude else (features if isinstance(features, dict) else dict(features))
    text = _dumps(body)
    # orjson writes non-finite floats as null: look again only when a null shows up
    if b"null" in text and _spell_non_finite(entries):
        text = _dumps(body)
    if len(text) > MAX_RENDERED_CHARS:
        text = _within_budget(request, entries, body)
    return text.decode()


def render_rejected(size: int, tensors: Sequence[Mapping[str, Any]] = ()) -> str:
    """The log's record of a payload that did not decode: tensor headers and its size."""
    headers = [
        {"name": t["name"], "datatype": t["datatype"], "shape": list(t["shape"])}
        for t in tensors[:MAX_PREVIEW_TENSORS]
    ]
    return _dumps({"inputs": headers, "rejected": {"bytes": size}}).decode()


def _header(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not (isinstance(name, str) and len(name) <= 256):
        return None
    if not (isinstance(datatype, str) and len(datatype) <= 16):
        return None
    if not (
        isinstance(shape, list)
        and len(shape) <= 16
        and all(type(d) is int for d in shape)
    ):
        return None
    return {"name": name, "datatype": datatype, "shape": shape}


def json_preview(body: bytes | memoryview) -> tuple[str | None, list[dict[str, Any]]]:
    """The ``id`` and the well-formed tensor headers of a v2 JSON request (or a binary
    request's JSON part), for the record of a request that did not decode; (None, []) when the
    JSON does not parse."""
    if len(body) > MAX_PREVIEW_BYTES:
        return None, []
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, []
    if not isinstance(parsed, dict):
        return None, []
    request_id = parsed.get("id")
    request_id = request_id if isinstance(request_id, str) and len(request_id) <= 256 else None
    inputs = parsed.get("inputs")
    if not isinstance(inputs, list):
        return request_id, []
    headers = [_header(item) for item in inputs[:MAX_PREVIEW_TENSORS]]
    return request_id, [h for h in headers if h is not None]
