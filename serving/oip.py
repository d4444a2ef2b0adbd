"""Open Inference Protocol v2 JSON codec: a compatibility module over :mod:`serving.protocol`.

The codec lives in the protocol core (``serving/protocol/``); this module keeps the names
other modules and tests import from ``serving.oip``. New code should import from
:mod:`serving.protocol` and pass a :class:`DecodeLimits` explicitly.
"""

from __future__ import annotations

from typing import Any

from serving.protocol import tensors
from serving.protocol.json_codec import (
    decode_infer_request,
    encode_infer_response,
    tensor_to_json,
)
from serving.protocol.json_depth import check_json_depth, json_error
from serving.protocol.json_values import json_data_to_array
from serving.protocol.tensors import MAX_RANK
from serving.protocol.types import (
    DEFAULT_LIMITS,
    DecodeLimits,
    InferRequest,
    RequestedOutput,
    RequestInput,
)
from serving.protocol.validation import select_outputs, validate_against_signature

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_RANK",
    "DecodeLimits",
    "InferRequest",
    "RequestInput",
    "RequestedOutput",
    "check_json_depth",
    "check_shape",
    "decode_infer_request",
    "decode_tensor_header",
    "encode_infer_response",
    "json_data_to_array",
    "json_error",
    "select_outputs",
    "tensor_to_json",
    "validate_against_signature",
]


def check_shape(
    name: str, shape: tuple[int, ...], limits: DecodeLimits = DEFAULT_LIMITS
) -> int:
    """Check a request's shape against the limits before anything is allocated; its count."""
    return tensors.check_shape(name, shape, limits)


def decode_tensor_header(
    index: int, item: dict[str, Any], limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[str, str, tuple[int, ...]]:
    """The checked ``name``, ``datatype`` and ``shape`` of request input object ``index``."""
    name, datatype, shape, _count = tensors.check_tensor_header(
        index, item.get("name"), item.get("datatype"), item.get("shape"), limits
    )
    return name, datatype, shape
