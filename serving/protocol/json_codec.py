"""The JSON adapter: v2 inference request bodies in, v2 response bodies out (orjson)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from registry.errors import InvalidRequest
from serving.protocol.json_depth import parse_json_object
from serving.protocol.json_values import decode_json_data
from serving.protocol.tensors import (
    check_output_name,
    check_tensor_header,
    check_unique_inputs,
    json_type,
    output_datatype,
)
from serving.protocol.types import (
    DEFAULT_LIMITS,
    DecodeLimits,
    InferRequest,
    RequestedOutput,
    RequestInput,
)

__all__ = [
    "decode_infer_request",
    "decode_json_input",
    "decode_outputs",
    "decode_parameters",
    "decode_request_id",
    "decode_tensor_header",
    "encode_infer_response",
    "request_inputs",
    "tensor_json",
    "tensor_to_json",
]


def decode_parameters(value: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` object (``where``: the message prefix naming its owner)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}'parameters' must be an object, got {json_type(value)}")
    return value


def decode_request_id(request: dict[str, Any]) -> str | None:
    request_id = request.get("id")
    if request_id is not None and type(request_id) is not str:
        raise InvalidRequest(f"'id' must be a string, got {json_type(request_id)}")
    return request_id


def request_inputs(request: dict[str, Any]) -> list[Any]:
    """The request's ``inputs``: a non-empty list (its entries are checked one by one)."""
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest(
            "'inputs' must be a non-empty list of tensors, got "
            + ("an empty list" if isinstance(raw_inputs, list) else json_type(raw_inputs))
        )
    return raw_inputs


def decode_tensor_header(
    index: int, item: dict[str, Any], limits: DecodeLimits
) -> tuple[str, str, tuple[int, ...], int]:
    """The checked (name, datatype, shape, element count) of request input object ``index``."""
    return check_tensor_header(
        index, item.get("name"), item.get("datatype"), item.get("shape"), limits
    )


def decode_json_input(index: int, item: Any, limits: DecodeLimits) -> RequestInput:
    """Request input ``index`` with its values in JSON ``data``."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"inputs[{index}] must be an object, got {json_type(item)}")
    name, datatype, shape, count = check_tensor_header(
        index, item.get("name"), item.get("datatype"), item.get("shape"), limits
    )
    if "data" not in item:
        raise InvalidRequest(
            f"input '{name}': 'data' is required (binary tensor data is not supported)"
        )
    parameters = decode_parameters(item.get("parameters"), f"input '{name}': ")
    # request object, 'inputs' array, input object: 'data' sits three levels deep
    data = decode_json_data(name, datatype, shape, count, item["data"], 3, limits)
    return RequestInput(name, datatype, shape, data, parameters)


def decode_outputs(value: Any) -> list[RequestedOutput] | None:
    """The request's ``outputs``; None (every output) when absent or empty."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidRequest(
            f"'outputs' must be a list of objects with a 'name', got {json_type(value)}"
        )
    if not value:  # an empty list asks for nothing in particular: every output
        return None
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidRequest(f"outputs[{index}] must be an object, got {json_type(item)}")
        name = check_output_name(index, item.get("name"), seen)
        outputs.append(
            RequestedOutput(name, decode_parameters(item.get("parameters"), f"output '{name}': "))
        )
    return outputs


def decode_infer_request(body: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> InferRequest:
    """Parse a v2 inference request body; raises InvalidRequest naming what is wrong."""
    request = parse_json_object(body, "request body", "request body", limits)
    request_id = decode_request_id(request)
    inputs = [
        decode_json_input(index, item, limits)
        for index, item in enumerate(request_inputs(request))
    ]
    check_unique_inputs(inputs)
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=decode_outputs(request.get("outputs")),
        parameters=decode_parameters(request.get("parameters"), ""),
    )


# --------------------------------------------------------------------------------------------
# responses


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return str(value)


def tensor_json(name: str, array: npt.NDArray[Any], numpy_data: bool) -> dict[str, Any]:
    """One output as a v2 JSON object; ``numpy_data``: leave numeric data as an array for
    orjson's ``OPT_SERIALIZE_NUMPY`` (faster) rather than a list."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    datatype = output_datatype(name, array)
    flat = array.ravel()
    data: Any
    if datatype == "BYTES":
        data = [_as_text(value) for value in flat.tolist()]
    elif datatype == "FP16" or not numpy_data:
        data = flat.tolist()  # Python floats / ints / bools
    else:
        data = flat  # serialized by orjson's numpy support
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def tensor_to_json(name: str, array: npt.NDArray[Any]) -> dict[str, Any]:
    """One output tensor as a v2 JSON object; ``data`` is a flat list of JSON values."""
    return tensor_json(name, array, numpy_data=False)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, npt.NDArray[Any]]],
    parameters: dict[str, Any] | None = None,
) -> bytes:
    """The body of a v2 inference response."""
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    if parameters is not None:
        body["parameters"] = parameters
    body["outputs"] = [tensor_json(name, array, numpy_data=True) for name, array in outputs]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
