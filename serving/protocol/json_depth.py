"""How deep a request's JSON may nest (``max_json_depth``), and clear errors for bad JSON."""

from __future__ import annotations

from typing import Any

import orjson

from registry.errors import InvalidRequest
from serving.protocol.tensors import json_type
from serving.protocol.types import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "check_json_depth",
    "check_request_depth",
    "deeper_than",
    "json_error",
    "parse_json_object",
    "too_deep_error",
]


def deeper_than(value: Any, levels: int) -> bool:
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


def too_deep_error(limit: int, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"the request JSON nests deeper than {limit} levels (in {where}; max_json_depth)"
    )


def check_json_depth(value: Any, limit: int, where: str, base: int = 0) -> None:
    """Raise when ``value``, found ``base`` levels deep in the request JSON, takes it past
    ``limit`` levels of objects and arrays."""
    if isinstance(value, dict | list) and deeper_than(value, limit - base):
        raise too_deep_error(limit, where)


def check_request_depth(request: dict[str, Any], limits: DecodeLimits) -> None:
    """Depth of everything but the tensors' ``data`` (checked while it is converted)."""
    limit = limits.max_json_depth
    for key, value in request.items():
        if not isinstance(value, dict | list):
            continue
        if key == "inputs" and type(value) is list:
            for index, item in enumerate(value):
                if type(item) is not dict:
                    if isinstance(item, list) and deeper_than(item, limit - 2):
                        raise too_deep_error(limit, f"inputs[{index}]")
                    continue
                for field, entry in item.items():
                    # 'data' is checked as it is converted; a 'shape' holding anything but
                    # integers is refused by name (its rendering is depth-safe, see show)
                    if (
                        isinstance(entry, dict | list)
                        and field != "data"
                        and field != "shape"
                        and deeper_than(entry, limit - 3)
                    ):
                        raise too_deep_error(limit, f"inputs[{index}].{field}")
        elif deeper_than(value, limit - 1):
            raise too_deep_error(limit, f"'{key}'")


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


def json_error(
    raw: bytes | memoryview,
    exc: orjson.JSONDecodeError,
    what: str,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> InvalidRequest:
    """A clear 400 for JSON that orjson refused: not UTF-8, too deep, or malformed."""
    data = bytes(raw)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidRequest(
            f"{what} is not valid UTF-8 (byte 0x{data[bad.start]:02x} at offset {bad.start}); "
            "JSON must be UTF-8 encoded"
        )
    limit = limits.max_json_depth
    # orjson stops at 1024 levels ("depth limit exceeded"); a document cut short inside deep
    # nesting gets other messages, so look at the text up to where it stopped (a prefix).
    if "depth" in exc.msg or _nesting_at(data[: min(max(0, exc.pos) + 16, 4096)]) > limit:
        return InvalidRequest(f"{what} nests deeper than {limit} levels (max_json_depth)")
    return InvalidRequest(f"{what} is not valid JSON: {exc}")


def parse_json_object(
    raw: bytes | memoryview, what: str, document: str, limits: DecodeLimits
) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, its nesting (but for tensor data) within the limits.

    ``what`` names the text in JSON errors, ``document`` the value when it is no object.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise json_error(raw, exc, what, limits) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{document} must be a JSON object, got {json_type(value)}")
    check_request_depth(value, limits)
    return value
