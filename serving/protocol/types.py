"""The protocol core's data types: decode limits and the decoded request.

Every decoder takes its :class:`DecodeLimits` as a parameter: the transports (the HTTP edge, the
gRPC servicer, the KServe v1 route) pass the gateway's limits explicitly; callers without a
gateway (tests, tools) get :data:`DEFAULT_LIMITS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

__all__ = [
    "DEFAULT_LIMITS",
    "DecodeLimits",
    "InferRequest",
    "RequestInput",
    "RequestedOutput",
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
"""The limits when a caller passes none (the settings' defaults); the transports pass the
gateway's own (``DecodeLimits.from_settings``)."""


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
