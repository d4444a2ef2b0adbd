"""The protocol core's data types: decode limits and the decoded request.

Every decoder takes its :class:`DecodeLimits` as a parameter. The public entry points also
accept ``limits=None``, meaning "the limits in force" (:data:`LIMITS`, set per request by the
transports); that fallback is transitional, and only the entry points read it
(:func:`resolve_limits`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

__all__ = [
    "DEFAULT_LIMITS",
    "LIMITS",
    "DecodeLimits",
    "InferRequest",
    "RequestInput",
    "RequestedOutput",
    "current_limits",
    "resolve_limits",
    "using_limits",
]


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


DEFAULT_LIMITS = DecodeLimits()
LIMITS: ContextVar[DecodeLimits] = ContextVar("roost_decode_limits", default=DEFAULT_LIMITS)
"""The limits in force (set per request by the transports; :func:`using_limits`).

Transitional: the entry points fall back to it when called without ``limits``.
"""


def current_limits() -> DecodeLimits:
    """The limits in force for the request being decoded."""
    return LIMITS.get()


def resolve_limits(limits: DecodeLimits | None) -> DecodeLimits:
    """``limits``, or the limits in force when None (for the public entry points only)."""
    return LIMITS.get() if limits is None else limits


@contextmanager
def using_limits(limits: DecodeLimits) -> Iterator[DecodeLimits]:
    """Decode with ``limits`` inside the block (in this task and the tasks it starts)."""
    token = LIMITS.set(limits)
    try:
        yield limits
    finally:
        LIMITS.reset(token)


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
