"""The Open Inference Protocol v2 JSON codec: decoding, signature checks and response encoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from registry.errors import InvalidRequest, RoostError
from registry.signature import OIP_TO_NUMPY, Signature, TensorSpec
from serving.protocol import (
    InferRequest,
    RequestedOutput,
    RequestInput,
    decode_infer_request,
    encode_infer_response,
    json_data_to_array,
    select_outputs,
    tensor_to_json,
    validate_against_signature,
)

INT_TYPES = ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
FP_TYPES = ["FP16", "FP32", "FP64"]

SIGNATURE = Signature(
    inputs=(TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "INT64", (-1,))),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
)


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(name: str, datatype: str, shape: list[Any], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def invalid(call: Callable[..., Any], *args: Any) -> str:
    """Run ``call``, insist it raises exactly InvalidRequest (HTTP 400) and return the message."""
    with pytest.raises(InvalidRequest) as info:
        call(*args)
    assert type(info.value) is InvalidRequest
    assert info.value.status_code == 400
    return info.value.message


def decode_error(payload: bytes) -> str:
    return invalid(decode_infer_request, payload)


def decode_one(datatype: str, shape: list[int], data: Any) -> np.ndarray[Any, Any]:
    request = decode_infer_request(body(tensor("x", datatype, shape, data)))
    return request.inputs[0].data


def roundtrip(name: str, array: np.ndarray[Any, Any]) -> dict[str, Any]:
    encoded = encode_infer_response("m", "1", None, [(name, array)])
    output: dict[str, Any] = orjson.loads(encoded)["outputs"][0]
    return output


# --------------------------------------------------------------------------------------------
# datatypes


def test_bool_round_trip() -> None:
    array = decode_one("BOOL", [2, 2], [[True, False], [False, True]])
    assert array.dtype == np.bool_
    assert array.shape == (2, 2)
    assert array.tolist() == [[True, False], [False, True]]
    out = roundtrip("y", array)
    assert out == {
        "name": "y",
        "datatype": "BOOL",
        "shape": [2, 2],
        "data": [True, False, False, True],
    }
    assert [type(value) for value in out["data"]] == [bool] * 4


@pytest.mark.parametrize("value", [0, 1, "true", None, 1.0])
def test_bool_accepts_only_true_false(value: Any) -> None:
    message = decode_error(body(tensor("flag", "BOOL", [2], [True, value])))
    assert "input 'flag'" in message
    assert "BOOL data must be true or false" in message
    assert "index 1" in message


@pytest.mark.parametrize("datatype", INT_TYPES)
def test_int_round_trip_at_the_limits(datatype: str) -> None:
    info = np.iinfo(OIP_TO_NUMPY[datatype])
    values = [int(info.min), 0, 7, int(info.max)]
    array = decode_one(datatype, [4], values)
    assert array.dtype == OIP_TO_NUMPY[datatype]
    assert array.tolist() == values
    out = roundtrip("y", array)
    assert out == {"name": "y", "datatype": datatype, "shape": [4], "data": values}


@pytest.mark.parametrize("datatype", INT_TYPES)
@pytest.mark.parametrize("side", ["below", "above"])
def test_int_out_of_range(datatype: str, side: str) -> None:
    info = np.iinfo(OIP_TO_NUMPY[datatype])
    value = int(info.min) - 1 if side == "below" else int(info.max) + 1
    # Written by hand: orjson.dumps refuses integers beyond 64 bits.
    item = f'{{"name": "x", "datatype": "{datatype}", "shape": [2], "data": [0, {value}]}}'
    payload = f'{{"inputs": [{item}]}}'.encode()
    message = decode_error(payload)
    if -(2**63) <= value < 2**64:
        assert message.startswith(f"input 'x': value {value} out of range for {datatype}")
    else:  # beyond 64 bits the JSON parser yields a float, which is not an integer
        assert message.startswith(f"input 'x': {datatype} data must be integers")


def test_uint8_range_message() -> None:
    message = decode_error(body(tensor("x", "UINT8", [3], [1, 2, 300])))
    assert message.startswith("input 'x': value 300 out of range for UINT8")
    assert "0 to 255" in message


@pytest.mark.parametrize("datatype", INT_TYPES)
@pytest.mark.parametrize("value", [1.5, 2.0, True, "3", None])
def test_int_accepts_only_integers(datatype: str, value: Any) -> None:
    message = decode_error(body(tensor("ids", datatype, [1, 2], [[1, value]])))
    assert f"input 'ids': {datatype} data must be integers" in message
    assert "index 1" in message


@pytest.mark.parametrize("datatype", FP_TYPES)
def test_float_round_trip(datatype: str) -> None:
    values = [0.5, -1.25, 3, 0.1]
    array = decode_one(datatype, [2, 2], [[0.5, -1.25], [3, 0.1]])
    dtype = OIP_TO_NUMPY[datatype]
    assert array.dtype == dtype
    np.testing.assert_array_equal(array, np.array(values, dtype=dtype).reshape(2, 2))
    out = roundtrip("y", array)
    assert out["datatype"] == datatype
    assert out["shape"] == [2, 2]
    np.testing.assert_array_equal(np.array(out["data"], dtype=dtype), array.ravel())


@pytest.mark.parametrize("datatype", FP_TYPES)
@pytest.mark.parametrize("value", [True, False, "1.5", None, {"v": 1}])
def test_float_rejects_non_numbers(datatype: str, value: Any) -> None:
    message = decode_error(body(tensor("x", datatype, [3], [1.0, 2.0, value])))
    assert f"input 'x': {datatype} data must be numbers" in message
    assert "index 2" in message


@pytest.mark.parametrize(("datatype", "value"), [("FP16", 70000.0), ("FP32", -1e39)])
def test_float_overflow(datatype: str, value: float) -> None:
    message = decode_error(body(tensor("x", datatype, [2], [1.0, value])))
    assert message.startswith(f"input 'x': value {orjson.dumps(value).decode()} out of range")
    assert message.endswith(f"out of range for {datatype} at index 1")


def test_fp64_holds_large_values() -> None:
    assert decode_one("FP64", [1], [1e300]).tolist() == [1e300]


def test_bytes_round_trip() -> None:
    array = decode_one("BYTES", [2, 2], [["a", "héllo"], ["", "z"]])
    assert array.dtype == np.object_
    assert array.shape == (2, 2)
    assert array.tolist() == [[b"a", "héllo".encode()], [b"", b"z"]]
    out = roundtrip("y", array)
    assert out == {
        "name": "y",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["a", "héllo", "", "z"],
    }


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"]])
def test_bytes_accept_only_strings(value: Any) -> None:
    message = decode_error(body(tensor("text", "BYTES", [2], ["a", value])))
    assert "input 'text'" in message
    assert "BYTES data must be strings" in message or "mixes arrays and values" in message


def test_bytes_output_invalid_utf8_is_replaced() -> None:
    array = np.array([b"ok", b"\xff\xfe"], dtype=np.object_)
    out = roundtrip("y", array)
    assert out["datatype"] == "BYTES"
    assert out["data"] == ["ok", "\ufffd\ufffd"]


def test_string_arrays_encode_as_bytes() -> None:
    assert roundtrip("y", np.array(["a", "bc"]))["data"] == ["a", "bc"]
    assert roundtrip("y", np.array([b"a", b"bc"]))["data"] == ["a", "bc"]


# --------------------------------------------------------------------------------------------
# data layout


def test_flat_data_is_reshaped() -> None:
    array = decode_one("INT32", [2, 3], [1, 2, 3, 4, 5, 6])
    assert array.shape == (2, 3)
    assert array.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_nested_data_in_any_row_major_nesting() -> None:
    nested = decode_one("FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])
    regrouped = decode_one("FP32", [2, 3], [[1, 2], [3, 4], [5, 6]])
    deep = decode_one("FP32", [2, 3], [[[1, 2, 3]], [[4, 5, 6]]])
    for array in (nested, regrouped, deep):
        assert array.shape == (2, 3)
        assert array.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_empty_and_scalar_tensors() -> None:
    assert decode_one("FP32", [0, 3], []).shape == (0, 3)
    scalar = decode_one("INT64", [], [5])
    assert scalar.shape == ()
    assert int(scalar) == 5
    out = roundtrip("s", scalar)
    assert out["shape"] == []
    assert out["data"] == [5]


def test_count_mismatch() -> None:
    data = [[0.0] * 30, [0.0] * 29]
    message = decode_error(body(tensor("x", "FP32", [2, 30], [v for row in data for v in row])))
    assert message == "input 'x': shape [2, 30] needs 60 values, got 59"


def test_count_mismatch_nested() -> None:
    message = decode_error(body(tensor("x", "BYTES", [3], [["a"], ["b"]])))
    assert message == "input 'x': shape [3] needs 3 values, got 2"


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BOOL", "BYTES"])
def test_ragged_data(datatype: str) -> None:
    value: Any = {"FP32": 1.0, "INT64": 1, "BOOL": True, "BYTES": "a"}[datatype]
    message = decode_error(body(tensor("x", datatype, [3], [[value, value], [value]])))
    assert "input 'x'" in message
    assert "ragged" in message
    assert "rectangular" in message


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BYTES"])
def test_mixed_nesting(datatype: str) -> None:
    value: Any = {"FP32": 1.0, "INT64": 1, "BYTES": "a"}[datatype]
    message = decode_error(body(tensor("x", datatype, [3], [value, [value, value]])))
    assert "input 'x'" in message
    assert "mixes arrays and values" in message


@pytest.mark.parametrize("data", [5, "1,2", {"a": 1}, None])
def test_data_must_be_an_array(data: Any) -> None:
    message = decode_error(body(tensor("x", "FP32", [1], data)))
    assert message.startswith("input 'x': 'data' must be a JSON array")


def test_fast_path_and_walk_agree() -> None:
    mixed = decode_one("FP32", [3], [1, 2.5, -3])
    assert mixed.dtype == np.float32
    assert mixed.tolist() == [1.0, 2.5, -3.0]


def test_json_data_to_array_directly() -> None:
    array = json_data_to_array("x", "UINT16", (2,), [1, 65535])
    assert array.dtype == np.uint16
    assert array.tolist() == [1, 65535]
    message = invalid(json_data_to_array, "x", "FLOAT", (1,), [1.0])
    assert "input 'x': 'datatype' must be one of" in message


# --------------------------------------------------------------------------------------------
# request structure


def test_decode_full_request() -> None:
    request = decode_infer_request(
        orjson.dumps(
            {
                "id": "req-1",
                "parameters": {"priority": 1},
                "inputs": [
                    {**tensor("a", "FP32", [1, 3], [1, 2, 3]), "parameters": {"p": True}},
                    tensor("b", "INT64", [1], [7]),
                ],
                "outputs": [
                    {"name": "probabilities", "parameters": {"top_k": 1}},
                    {"name": "label"},
                ],
            }
        )
    )
    assert request.id == "req-1"
    assert request.parameters == {"priority": 1}
    assert [(t.name, t.datatype, t.shape) for t in request.inputs] == [
        ("a", "FP32", (1, 3)),
        ("b", "INT64", (1,)),
    ]
    assert request.inputs[0].parameters == {"p": True}
    assert request.inputs[1].parameters == {}
    assert request.outputs == [
        RequestedOutput("probabilities", {"top_k": 1}),
        RequestedOutput("label", {}),
    ]


def test_minimal_request_defaults() -> None:
    request = decode_infer_request(body(tensor("a", "FP32", [1], [1.0])))
    assert request.id is None
    assert request.outputs is None
    assert request.parameters == {}


def test_empty_outputs_list_means_all_outputs() -> None:
    request = decode_infer_request(body(tensor("a", "FP32", [1], [1.0]), outputs=[]))
    assert request.outputs is None


@pytest.mark.parametrize("payload", [b"", b"{", b"not json", b'{"inputs": [}'])
def test_body_not_json(payload: bytes) -> None:
    assert decode_error(payload).startswith("request body is not valid JSON: ")


@pytest.mark.parametrize(
    ("payload", "kind"), [(b"[]", "array"), (b"3", "number"), (b"null", "null")]
)
def test_body_not_object(payload: bytes, kind: str) -> None:
    assert decode_error(payload) == f"request body must be a JSON object, got {kind}"


@pytest.mark.parametrize(
    ("inputs", "got"),
    [(None, "null"), ([], "an empty list"), ({"name": "a"}, "object"), ("a", "string")],
)
def test_inputs_must_be_a_non_empty_list(inputs: Any, got: str) -> None:
    payload = orjson.dumps({} if inputs is None else {"inputs": inputs})
    message = decode_error(payload)
    assert message == f"'inputs' must be a non-empty list of tensors, got {got}"


def test_input_must_be_an_object() -> None:
    message = decode_error(orjson.dumps({"inputs": [tensor("a", "FP32", [1], [1.0]), 5]}))
    assert message == "inputs[1] must be an object, got number"


@pytest.mark.parametrize("name", [None, "", 3, ["a"]])
def test_input_name(name: Any) -> None:
    item = tensor("a", "FP32", [1], [1.0])
    if name is None:
        del item["name"]
    else:
        item["name"] = name
    assert decode_error(body(item)).startswith("inputs[0]: 'name' must be a non-empty string")


@pytest.mark.parametrize("datatype", [None, "FLOAT32", "fp32", 3])
def test_input_datatype(datatype: Any) -> None:
    item = tensor("x", "FP32", [1], [1.0])
    if datatype is None:
        del item["datatype"]
    else:
        item["datatype"] = datatype
    message = decode_error(body(item))
    assert message.startswith("input 'x': 'datatype' must be one of ")
    for name in OIP_TO_NUMPY:
        assert name in message


@pytest.mark.parametrize("shape", [None, [-1, 3], [1.0], [True], "1,3", 3, [[1]]])
def test_input_shape(shape: Any) -> None:
    item = tensor("x", "FP32", [1], [1.0])
    if shape is None:
        del item["shape"]
    else:
        item["shape"] = shape
    message = decode_error(body(item))
    assert message.startswith("input 'x': 'shape' must be a list of non-negative integers")


def test_input_data_required() -> None:
    item = tensor("x", "FP32", [1], [1.0])
    del item["data"]
    assert decode_error(body(item)).startswith("input 'x': 'data' is required")


def test_duplicate_input_names() -> None:
    message = decode_error(body(tensor("x", "FP32", [1], [1.0]), tensor("x", "FP32", [1], [2.0])))
    assert message == "input 'x' appears more than once"


def test_id_must_be_a_string() -> None:
    message = decode_error(body(tensor("x", "FP32", [1], [1.0]), id=5))
    assert message == "'id' must be a string, got number"


def test_parameters_must_be_objects() -> None:
    message = decode_error(body(tensor("x", "FP32", [1], [1.0]), parameters=[1]))
    assert message == "'parameters' must be an object, got array"
    item = {**tensor("x", "FP32", [1], [1.0]), "parameters": "p"}
    assert decode_error(body(item)) == "input 'x': 'parameters' must be an object, got string"
    message = decode_error(
        body(tensor("x", "FP32", [1], [1.0]), outputs=[{"name": "y", "parameters": 1}])
    )
    assert message == "output 'y': 'parameters' must be an object, got number"


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"name": "y"}, "'outputs' must be a list of objects with a 'name', got object"),
        (["y"], "outputs[0] must be an object, got string"),
        ([{"parameters": {}}], "outputs[0]: 'name' must be a non-empty string, got null"),
        ([{"name": "y"}, {"name": "y"}], "output 'y' is requested more than once"),
    ],
)
def test_outputs_structure(outputs: Any, expected: str) -> None:
    assert decode_error(body(tensor("x", "FP32", [1], [1.0]), outputs=outputs)) == expected


# --------------------------------------------------------------------------------------------
# signature checks


def request_for(*inputs: dict[str, Any], **extra: Any) -> InferRequest:
    return decode_infer_request(body(*inputs, **extra))


def test_validate_returns_arrays_in_signature_order() -> None:
    request = request_for(
        tensor("b", "INT64", [2], [1, 2]), tensor("a", "FP32", [2, 3], [1, 2, 3, 4, 5, 6])
    )
    feeds = validate_against_signature(request, SIGNATURE)
    assert list(feeds) == ["a", "b"]
    assert feeds["a"].dtype == np.float32
    assert feeds["a"].shape == (2, 3)
    assert feeds["b"].dtype == np.int64
    assert feeds["b"].tolist() == [1, 2]


def test_validate_reshapes_flat_data() -> None:
    request = InferRequest(
        id=None,
        inputs=[
            RequestInput("a", "FP32", (1, 3), np.arange(3, dtype=np.float32), {}),
            RequestInput("b", "INT64", (1,), np.array([4], dtype=np.int64), {}),
        ],
        outputs=None,
        parameters={},
    )
    assert validate_against_signature(request, SIGNATURE)["a"].shape == (1, 3)


def test_validate_unknown_input() -> None:
    request = request_for(
        tensor("a", "FP32", [1, 3], [1, 2, 3]),
        tensor("b", "INT64", [1], [1]),
        tensor("foo", "FP32", [1], [1.0]),
    )
    message = invalid(validate_against_signature, request, SIGNATURE)
    assert message == "unknown input 'foo'; model inputs are: a, b"


def test_validate_missing_input() -> None:
    request = request_for(tensor("b", "INT64", [1], [1]))
    message = invalid(validate_against_signature, request, SIGNATURE)
    assert message == "missing input 'a' (FP32, shape [-1, 3])"


def test_validate_datatype_mismatch() -> None:
    request = request_for(tensor("a", "FP64", [1, 3], [1, 2, 3]), tensor("b", "INT64", [1], [1]))
    message = invalid(validate_against_signature, request, SIGNATURE)
    assert message == "input 'a': expected datatype FP32, got FP64"


@pytest.mark.parametrize(
    ("shape", "shown"), [([3], "[3]"), ([1, 1, 3], "[1, 1, 3]"), ([1, 2], "[1, 2]")]
)
def test_validate_shape_mismatch(shape: list[int], shown: str) -> None:
    count = int(np.prod(shape))
    request = request_for(tensor("a", "FP32", shape, [0.0] * count), tensor("b", "INT64", [1], [1]))
    message = invalid(validate_against_signature, request, SIGNATURE)
    assert message == f"input 'a': expected shape [-1, 3], got {shown}"


def test_validate_fixed_and_dynamic_dims() -> None:
    signature = Signature(inputs=(TensorSpec("x", "FP32", (-1, 30)),), outputs=())
    ok = request_for(tensor("x", "FP32", [5, 30], [0.0] * 150))
    assert validate_against_signature(ok, signature)["x"].shape == (5, 30)
    bad = request_for(tensor("x", "FP32", [1, 29], [0.0] * 29))
    message = invalid(validate_against_signature, bad, signature)
    assert message == "input 'x': expected shape [-1, 30], got [1, 29]"


# --------------------------------------------------------------------------------------------
# output selection


MODEL_OUTPUTS = {
    "probabilities": np.array([[0.25, 0.75]], dtype=np.float32),
    "label": np.array([1], dtype=np.int64),
}


def test_select_all_outputs_in_signature_order() -> None:
    request = request_for(tensor("a", "FP32", [1, 3], [1, 2, 3]))
    selected = select_outputs(request, SIGNATURE, MODEL_OUTPUTS)
    assert [name for name, _ in selected] == ["label", "probabilities"]
    assert selected[1][1] is MODEL_OUTPUTS["probabilities"]


def test_select_skips_outputs_the_model_did_not_produce() -> None:
    request = request_for(tensor("a", "FP32", [1, 3], [1, 2, 3]))
    selected = select_outputs(request, SIGNATURE, {"label": MODEL_OUTPUTS["label"]})
    assert [name for name, _ in selected] == ["label"]


def test_select_requested_outputs_in_request_order() -> None:
    request = request_for(
        tensor("a", "FP32", [1, 3], [1, 2, 3]),
        outputs=[{"name": "probabilities"}, {"name": "label"}],
    )
    selected = select_outputs(request, SIGNATURE, MODEL_OUTPUTS)
    assert [name for name, _ in selected] == ["probabilities", "label"]
    only = request_for(tensor("a", "FP32", [1, 3], [1, 2, 3]), outputs=[{"name": "label"}])
    assert [name for name, _ in select_outputs(only, SIGNATURE, MODEL_OUTPUTS)] == ["label"]


def test_select_unknown_output() -> None:
    request = request_for(tensor("a", "FP32", [1, 3], [1, 2, 3]), outputs=[{"name": "z"}])
    message = invalid(select_outputs, request, SIGNATURE, MODEL_OUTPUTS)
    assert message == "unknown output 'z'; model outputs are: label, probabilities"


def test_select_output_the_model_did_not_produce_is_a_server_error() -> None:
    request = request_for(tensor("a", "FP32", [1, 3], [1, 2, 3]), outputs=[{"name": "label"}])
    with pytest.raises(RoostError) as info:
        select_outputs(request, SIGNATURE, {})
    assert type(info.value) is RoostError
    assert info.value.status_code == 500


# --------------------------------------------------------------------------------------------
# responses


def test_encode_response_round_trip() -> None:
    request = request_for(tensor("a", "FP32", [1, 3], [1, 2, 3]), id="r-9")
    selected = select_outputs(request, SIGNATURE, MODEL_OUTPUTS)
    encoded = encode_infer_response("churn", "3", request.id, selected, {"latency_ms": 1.5})
    assert isinstance(encoded, bytes)
    response = orjson.loads(encoded)
    assert list(response) == ["model_name", "model_version", "id", "parameters", "outputs"]
    assert response["model_name"] == "churn"
    assert response["model_version"] == "3"
    assert response["id"] == "r-9"
    assert response["parameters"] == {"latency_ms": 1.5}
    assert response["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]},
    ]


def test_encode_response_without_id_or_parameters() -> None:
    response = orjson.loads(encode_infer_response("m", "1", None, []))
    assert response == {"model_name": "m", "model_version": "1", "outputs": []}


def test_encode_non_contiguous_and_fp16() -> None:
    matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
    out = roundtrip("t", matrix.T)
    assert out["shape"] == [4, 3]
    assert out["data"] == matrix.T.ravel().tolist()
    half = np.array([0.1, 65504.0], dtype=np.float16)
    out = roundtrip("h", half)
    assert out["datatype"] == "FP16"
    assert np.array(out["data"], dtype=np.float16).tolist() == half.tolist()


def test_encode_big_endian_and_uint64() -> None:
    swapped = np.array([1.5, 2.5], dtype=">f8")
    assert roundtrip("s", swapped)["data"] == [1.5, 2.5]
    big = np.array([2**64 - 1], dtype=np.uint64)
    assert roundtrip("u", big) == {
        "name": "u",
        "datatype": "UINT64",
        "shape": [1],
        "data": [2**64 - 1],
    }


def test_encode_unsupported_dtype_is_a_server_error() -> None:
    with pytest.raises(RoostError) as info:
        encode_infer_response("m", "1", None, [("c", np.array([1j]))])
    assert type(info.value) is RoostError
    assert "output 'c'" in info.value.message


def test_tensor_to_json_gives_plain_lists() -> None:
    out = tensor_to_json("p", np.array([[0.5, 1.0]], dtype=np.float32))
    assert out == {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1.0]}
    assert type(out["data"]) is list
    text = tensor_to_json("t", np.array([b"x", "y"], dtype=np.object_))
    assert text == {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]}
    flags = tensor_to_json("f", np.array([True, False]))
    assert flags == {"name": "f", "datatype": "BOOL", "shape": [2], "data": [True, False]}


def test_decode_validate_encode_pipeline() -> None:
    payload = body(
        tensor("a", "FP32", [2, 3], [[0.5, 1, 2], [3, 4, 5]]),
        tensor("b", "INT64", [2], [10, 20]),
        id="abc",
        outputs=[{"name": "label"}],
    )
    request = decode_infer_request(payload)
    feeds = validate_against_signature(request, SIGNATURE)
    label = (feeds["a"].sum(axis=1) > 5).astype(np.int64) + feeds["b"]
    selected = select_outputs(request, SIGNATURE, {"label": label, "probabilities": feeds["a"]})
    response = orjson.loads(encode_infer_response("m", "2", request.id, selected))
    assert response["id"] == "abc"
    assert response["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [2], "data": [10, 21]}
    ]


# -- the protocol core: explicit limits, KServe v1 rows ------------------------------------------


def test_limits_are_explicit() -> None:
    import serving.protocol
    from serving.protocol import DEFAULT_LIMITS, DecodeLimits

    payload = body(tensor("a", "FP32", [2, 3], [0.0] * 6))
    tight = DecodeLimits(max_tensor_elements=4)
    with pytest.raises(InvalidRequest, match="more than the limit of 4 per tensor"):
        decode_infer_request(payload, tight)
    # no limits given: the defaults, never limits set elsewhere (there is no ContextVar)
    assert decode_infer_request(payload).inputs[0].shape == (2, 3)
    assert DEFAULT_LIMITS == DecodeLimits()
    assert not hasattr(serving.protocol, "using_limits")


def test_kserve_v1_records_and_rows_become_one_tensor() -> None:
    from serving.protocol import DecodeLimits, instances_to_rows, rows_to_request

    names = ["a", "b"]
    rows = instances_to_rows([{"b": 2.0, "a": 1.0}, [3.0, 4.0]], names, "m")
    assert rows == [[1.0, 2.0], [3.0, 4.0]]
    spec = TensorSpec("x", "FP32", (-1, 2))
    request = rows_to_request(spec, rows, "r", {"k": 1}, DecodeLimits())
    assert request.id == "r" and request.parameters == {"k": 1} and request.outputs is None
    (x,) = request.inputs
    assert (x.name, x.datatype, x.shape) == ("x", "FP32", (2, 2))
    np.testing.assert_array_equal(x.data, np.array([[1, 2], [3, 4]], dtype=np.float32))
    with pytest.raises(InvalidRequest, match=r"instances\[0\]: missing feature 'b'"):
        instances_to_rows([{"a": 1.0}], names, "m")
    with pytest.raises(InvalidRequest, match=r"instances\[1\]: expected 2 values, got 1"):
        rows_to_request(spec, [[1.0, 2.0], [3.0]], None, {}, DecodeLimits())
    with pytest.raises(InvalidRequest, match="more than the limit of 3 per tensor"):
        rows_to_request(spec, rows, None, {}, DecodeLimits(max_tensor_elements=3))
