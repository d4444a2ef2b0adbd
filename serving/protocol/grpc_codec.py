"""The gRPC adapter: ``ModelInferRequest`` in, ``ModelInferResponse`` out.

Tensor data arrives either typed (``InferInputTensor.contents``) or raw
(``ModelInferRequest.raw_input_contents``, the format of :mod:`serving.protocol.raw`; FP16
only this way). Responses always carry ``raw_output_contents``, which is what
``tritonclient.grpc``'s ``InferResult.as_numpy`` reads. The messages are the ones NVIDIA ships
inside ``tritonclient`` (generated from Triton's ``grpc_service.proto``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2 as pb

from registry.errors import InvalidRequest
from serving.protocol.raw import encode_raw, raw_to_array
from serving.protocol.tensors import (
    INT_RANGES,
    OIP_TO_NUMPY,
    check_count,
    check_output_name,
    check_tensor_header,
    check_unique_inputs,
)
from serving.protocol.types import (
    DEFAULT_LIMITS,
    DecodeLimits,
    InferRequest,
    RequestedOutput,
    RequestInput,
)

__all__ = ["decode_model_infer_request", "encode_model_infer_response", "grpc_parameters"]

# Which ``InferTensorContents`` field carries each datatype (FP16 has none: raw only).
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENTS_FIELDS = tuple(dict.fromkeys(_CONTENTS_FIELD.values()))
# Datatypes narrower than their contents field: values must be range-checked.
_NARROW_INT = ("INT8", "INT16", "UINT8", "UINT16")


def grpc_parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    result: dict[str, Any] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        result[key] = None if kind is None else getattr(parameter, kind)
    return result


def _typed_array(
    name: str, datatype: str, shape: tuple[int, ...], count: int, contents: Any
) -> npt.NDArray[Any]:
    """The tensor from ``contents``: the datatype's field, with the right number of values."""
    field = _CONTENTS_FIELD.get(datatype)
    others = [f for f in _CONTENTS_FIELDS if f != field and len(getattr(contents, f))]
    if others:
        where = f"'{field}'" if field else "raw_input_contents"
        raise InvalidRequest(
            f"input '{name}': {datatype} data must be sent in {where}, got '{others[0]}'"
        )
    if field is None:  # FP16
        if count:
            raise InvalidRequest(
                f"input '{name}': {datatype} data must be sent in raw_input_contents"
            )
        return np.empty(shape, dtype=OIP_TO_NUMPY[datatype])
    values = getattr(contents, field)
    check_count(name, shape, count, len(values))
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = OIP_TO_NUMPY[datatype]
    if datatype in _NARROW_INT:
        wide = np.array(values, dtype=np.int64)
        low, high = INT_RANGES[datatype]
        bad = np.flatnonzero((wide < low) | (wide > high))
        if bad.size:
            index = int(bad[0])
            raise InvalidRequest(
                f"input '{name}': value {int(wide[index])} out of range for {datatype} "
                f"({low} to {high}) at index {index}"
            )
        return wide.astype(dtype).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def _decode_input(
    index: int, tensor: Any, raw: bytes | None, limits: DecodeLimits
) -> RequestInput:
    name, datatype, shape, count = check_tensor_header(
        index, tensor.name, tensor.datatype, list(tensor.shape), limits
    )
    if raw is None:
        data = _typed_array(name, datatype, shape, count, tensor.contents)
    else:
        source = f"raw_input_contents of {len(raw)} bytes"
        data = raw_to_array(name, datatype, shape, count, raw, source)
    return RequestInput(name, datatype, shape, data, grpc_parameters(tensor.parameters))


def decode_model_infer_request(
    message: Any, limits: DecodeLimits = DEFAULT_LIMITS
) -> InferRequest:
    """A ``ModelInferRequest`` as an OIP request; raises InvalidRequest naming the problem."""
    if not message.inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors, got an empty list")
    raw_contents = message.raw_input_contents
    if raw_contents:
        if len(raw_contents) != len(message.inputs):
            raise InvalidRequest(
                f"raw_input_contents has {len(raw_contents)} entries for "
                f"{len(message.inputs)} inputs; send one per input, in input order"
            )
        for tensor in message.inputs:
            if tensor.HasField("contents"):
                raise InvalidRequest(
                    f"input '{tensor.name}': 'contents' must be empty when "
                    "raw_input_contents is used"
                )
        inputs = [
            _decode_input(index, tensor, raw, limits)
            for index, (tensor, raw) in enumerate(
                zip(message.inputs, raw_contents, strict=True)
            )
        ]
    else:
        inputs = [
            _decode_input(index, tensor, None, limits)
            for index, tensor in enumerate(message.inputs)
        ]
    check_unique_inputs(inputs)
    outputs: list[RequestedOutput] | None = None
    if message.outputs:
        outputs = []
        seen: set[str] = set()
        for index, requested in enumerate(message.outputs):
            name = check_output_name(index, requested.name, seen)
            outputs.append(RequestedOutput(name, grpc_parameters(requested.parameters)))
    return InferRequest(
        id=message.id or None,
        inputs=inputs,
        outputs=outputs,
        parameters=grpc_parameters(message.parameters),
    )


def encode_model_infer_response(
    model: str,
    version: int | str,
    request_id: str,
    outputs: list[tuple[str, npt.NDArray[Any]]],
    parameters: dict[str, str] | None = None,
) -> Any:
    """A ``ModelInferResponse`` with every output in ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=model, model_version=str(version), id=request_id
    )
    for key, value in (parameters or {}).items():
        response.parameters[key].string_param = value
    for name, array in outputs:
        datatype, shape, raw = encode_raw(name, array)
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(raw)
    return response
