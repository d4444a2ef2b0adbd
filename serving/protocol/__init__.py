"""The protocol core: one implementation of tensor decoding and encoding for every transport.

Module map:

* :mod:`~serving.protocol.types`: :class:`DecodeLimits`, :class:`InferRequest`,
  :class:`RequestInput`, :class:`RequestedOutput`.
* :mod:`~serving.protocol.tensors`: the datatype table, the tensor header check (name,
  datatype, shape, element-count limits), the element-count and duplicate-input checks.
* :mod:`~serving.protocol.raw`: raw little-endian values, BOOL octets, length-prefixed BYTES.
* :mod:`~serving.protocol.json_depth`, :mod:`~serving.protocol.json_values`: JSON nesting
  limits and JSON ``data`` to arrays.
* Adapters, one per encoding: :mod:`~serving.protocol.json_codec` (v2 JSON),
  :mod:`~serving.protocol.binary_codec` (binary tensor extension),
  :mod:`~serving.protocol.grpc_codec` (gRPC), :mod:`~serving.protocol.kserve` (KServe v1
  instances).
* :mod:`~serving.protocol.validation`: a request against a version's signature.
* :mod:`~serving.protocol.render`: the prediction log's rendering of a request's inputs.

Every decoder takes ``limits: DecodeLimits``, passed explicitly by the transports; callers
without a gateway get :data:`DEFAULT_LIMITS`.
"""

from __future__ import annotations

from serving.protocol.binary_codec import (
    HEADER_LENGTH,
    binary_outputs,
    decode_binary_request,
    decode_json_request,
    encode_binary_response,
    parse_header_length,
)
from serving.protocol.grpc_codec import decode_model_infer_request, encode_model_infer_response
from serving.protocol.json_codec import (
    decode_infer_request,
    encode_infer_response,
    tensor_to_json,
)
from serving.protocol.json_depth import check_json_depth, json_error
from serving.protocol.json_values import json_data_to_array
from serving.protocol.kserve import instances_to_rows, rows_to_request
from serving.protocol.render import render_inputs
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
    "HEADER_LENGTH",
    "DecodeLimits",
    "InferRequest",
    "RequestInput",
    "RequestedOutput",
    "binary_outputs",
    "check_json_depth",
    "decode_binary_request",
    "decode_infer_request",
    "decode_json_request",
    "decode_model_infer_request",
    "encode_binary_response",
    "encode_infer_response",
    "encode_model_infer_response",
    "instances_to_rows",
    "json_data_to_array",
    "json_error",
    "parse_header_length",
    "render_inputs",
    "rows_to_request",
    "select_outputs",
    "tensor_to_json",
    "validate_against_signature",
]
