"""Triton's binary tensor data extension for the v2 HTTP infer route.

The codec is the protocol core's binary adapter (:mod:`serving.protocol.binary_codec`), whose
names this module re-exports for the modules and tests that import them from here. The REST
transport (:func:`serving.rest.handle_v2_infer`) decodes binary requests with it; the prediction
log renders them like every other request (:func:`serving.protocol.render.render_inputs`).
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

__all__ = [
    "HEADER_LENGTH",
    "binary_outputs",
    "decode_binary_request",
    "decode_json_request",
    "encode_binary_response",
    "parse_header_length",
]
