"""Fuzzing, bounded in time: the protocol decoders with Hypothesis, the REST API with
Schemathesis against the gateway's own OpenAPI document.

The property everywhere: hostile input gets a 4xx (the decoders raise only
:class:`~registry.errors.InvalidRequest`), never a 500 or an unexpected exception; whatever a
decoder accepts can be validated, logged and encoded back.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from roost_testing import deploy_model, make_echo_onnx, make_linear_onnx, running_gateway

from registry import InvalidRequest, Registry, RoostSettings
from registry.signature import OIP_TO_NUMPY, Signature, TensorSpec
from serving import protocol as oip
from serving.protocol import binary_codec as binary
from serving.protocol.render import json_preview, render_inputs

DATATYPES = list(OIP_TO_NUMPY)
FEATURES = ["a", "b", "c", "d"]
HEADER = "Inference-Header-Content-Length"

# Bounded: each property runs in a second or two on a shared 2-core machine.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no example database: a failure prints its reproduction instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL = oip.DecodeLimits(max_tensor_elements=4096, max_json_depth=16)

# --------------------------------------------------------------------------------------------
# strategies: JSON-ish values, and requests that are almost right


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws (Hypothesis favours the ends of a range: not 0)."""
    return draw(st.integers(0, one_in - 1)) == one_in // 2


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=24,
)


def _nest(value: Any, depth: int) -> dict[str, Any]:
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return {"k": value}


@st.composite
def _deep_values(draw: st.DrawFn) -> Any:
    value = draw(json_values)
    if draw(st.booleans()):
        return _nest(value, draw(st.sampled_from([4, 40, 100, 260, 400])))
    return value


# parameters may hide a structure deeper than the JSON serializer of the log goes (254)
deep_values = _deep_values()
names = st.one_of(st.sampled_from(["input", "x", "in_FP32", "in_BYTES", ""]), st.text(max_size=6))
dims = st.one_of(
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=-3, max_value=2**66),
    st.sampled_from([2**31, 2**32, 2**40, 2**62, 2**63 - 1]),
)
shapes = st.one_of(st.lists(dims, max_size=5), json_values)
leaves = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, width=64),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
)


@st.composite
def tensor_data(draw: st.DrawFn) -> Any:
    """Flat or nested data, usually rectangular, sometimes ragged or mixed."""
    kind = draw(st.sampled_from(["flat", "nested", "deep", "any"]))
    if kind == "flat":
        return draw(st.lists(leaves, max_size=12))
    if kind == "nested":
        rows, cols = draw(st.integers(0, 4)), draw(st.integers(0, 4))
        leaf = draw(leaves)
        data: Any = [[leaf] * cols for _ in range(rows)]
        if rows and draw(st.booleans()):
            data[-1] = draw(st.lists(leaves, max_size=5))  # ragged
        return data
    if kind == "deep":
        data = draw(leaves)
        for _ in range(draw(st.integers(1, 80))):
            data = [data]
        return data
    return draw(json_values)


def _values(datatype: str) -> st.SearchStrategy[Any]:
    """JSON values the datatype accepts (nearly always)."""
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(max_size=6)
    dtype = OIP_TO_NUMPY[datatype]
    if dtype.kind == "f":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-9, 9))
    info = np.iinfo(dtype)
    return st.integers(int(info.min) - 1, int(info.max) + 1)  # just past the range, sometimes


@st.composite
def coherent_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor whose shape, datatype and data agree, sometimes with one thing changed."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    count = math.prod(shape)
    values = draw(st.lists(_values(datatype), min_size=count, max_size=count))
    data: Any = values
    if len(shape) > 1 and draw(st.booleans()):  # nested, row-major
        data = np.array(values, dtype=object).reshape(shape).tolist()
    name = draw(st.sampled_from(["input", f"in_{datatype}", "x"]))
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    change = draw(st.integers(0, 19))
    if change == 10:
        tensor["shape"] = draw(st.lists(dims, max_size=4))
    elif change == 11:
        tensor["datatype"] = draw(st.sampled_from(DATATYPES))
    elif change == 12:
        tensor.pop(draw(st.sampled_from(sorted(tensor))))
    elif change in (13, 14):
        tensor["parameters"] = draw(deep_values)
    return tensor


@st.composite
def tensors(draw: st.DrawFn) -> Any:
    if not rarely(draw, 4):
        return draw(coherent_tensors())
    tensor: dict[str, Any] = {}
    if not rarely(draw, 10):
        tensor["name"] = draw(names)
    if not rarely(draw, 10):
        tensor["datatype"] = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5)))
    if not rarely(draw, 10):
        tensor["shape"] = draw(shapes)
    if not rarely(draw, 10):
        tensor["data"] = draw(tensor_data())
    if rarely(draw, 4):
        tensor["parameters"] = draw(deep_values)
    return draw(json_values) if rarely(draw, 20) else tensor


@st.composite
def requests_json(draw: st.DrawFn) -> Any:
    request: dict[str, Any] = {}
    if not rarely(draw, 10):
        least = 0 if rarely(draw, 10) else 1
        request["inputs"] = draw(st.lists(tensors(), min_size=least, max_size=3))
    if rarely(draw, 4):
        request["id"] = draw(json_values) if rarely(draw, 4) else draw(st.text(max_size=8))
    if rarely(draw, 4):
        output = st.fixed_dictionaries(
            {"name": names},
            optional={"parameters": st.fixed_dictionaries({}, optional={
                "binary_data": st.one_of(st.booleans(), json_values)})},
        )
        request["outputs"] = draw(st.one_of(st.lists(output, max_size=3), json_values))
    if rarely(draw, 4):
        request["parameters"] = draw(
            st.one_of(deep_values, st.fixed_dictionaries({}, optional={
                "binary_data_output": st.one_of(st.booleans(), json_values),
                "timeout": json_values,
            }))
        )
    return draw(json_values) if rarely(draw, 20) else request


def encode(value: Any) -> bytes:
    """JSON text for ``value``: Python's encoder (NaN, Infinity, big integers included)."""
    return json.dumps(value).encode()


# --------------------------------------------------------------------------------------------
# what the data plane does with a decoded request


SIGNATURES = [
    Signature(
        inputs=(TensorSpec("input", "FP32", (-1, 4)),),
        outputs=(TensorSpec("label", "INT64", (-1,)),),
    ),
    Signature(
        inputs=tuple(TensorSpec(f"in_{dt}", dt, (-1, 2)) for dt in DATATYPES),
        outputs=tuple(TensorSpec(f"out_{dt}", dt, (-1, 2)) for dt in DATATYPES),
    ),
]


def use(request: oip.InferRequest) -> None:
    """Everything downstream of decoding may refuse the request, but only with a 400."""
    for signature in SIGNATURES:
        for policy in ("allow", "reject"):
            try:
                oip.validate_against_signature(request, signature, nan_policy=policy)
            except InvalidRequest:
                pass
    text = render_inputs(request, {"id": request.id})  # the prediction log's rendering
    assert len(orjson.loads(text)["inputs"]) == len(request.inputs)  # whole JSON, never cut
    try:
        binary.binary_outputs(request, [(t.name, t.data) for t in request.inputs])
    except InvalidRequest:
        pass
    echoed = [(t.name, t.data) for t in request.inputs]
    oip.encode_infer_response("m", "1", request.id, echoed)
    binary.encode_binary_response("m", "1", request.id, echoed, [True] * len(echoed))


def decode_json(body: bytes) -> None:
    try:
        request = binary.decode_json_request(body, SMALL)
    except InvalidRequest:
        return
    use(request)


def decode_binary(body: bytes, header_length: int) -> None:
    try:
        request = binary.decode_binary_request(body, header_length, SMALL)
    except InvalidRequest:
        return
    use(request)


# --------------------------------------------------------------------------------------------
# Hypothesis: the decoders


@FUZZ
@given(body=st.binary(max_size=256))
def test_json_decoder_on_arbitrary_bytes(body: bytes) -> None:
    decode_json(body)


@FUZZ
@given(request=requests_json())
def test_json_decoder_on_almost_valid_requests(request: Any) -> None:
    decode_json(encode(request))


@FUZZ
@given(request=requests_json(), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_json_decoder_on_damaged_requests(request: Any, cut: int, flip: int) -> None:
    body = bytearray(encode(request))
    if body:
        body[flip % len(body)] ^= 0x80  # not UTF-8 any more, or another character
    decode_json(bytes(body[: max(1, len(body) - cut % 8)]))


@FUZZ
@given(
    tensor=coherent_tensors(),
    parameters=deep_values,
    tensor_parameters=deep_values,
    request_id=st.text(max_size=6),
)
def test_json_decoder_on_valid_tensors_with_arbitrary_parameters(
    tensor: dict[str, Any], parameters: Any, tensor_parameters: Any, request_id: str
) -> None:
    """Parameters travel into the prediction log and the router: any JSON, any depth."""
    tensor = {**tensor, "parameters": tensor_parameters}
    request = {"id": request_id, "inputs": [tensor], "parameters": parameters}
    decode_json(encode(request))
    header = encode(request)
    decode_binary(header, len(header))


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, int]:
    """A JSON header whose inputs mostly carry binary_data_size, then raw tensor bytes."""
    inputs: list[Any] = []
    chunks: list[bytes] = []
    for _ in range(draw(st.integers(1, 3))):
        if not rarely(draw, 10):
            datatype = draw(st.sampled_from(DATATYPES))
            shape: Any = draw(st.lists(st.integers(0, 4), max_size=3))
        else:
            datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=4)))
            shape = draw(shapes)
        name = draw(st.one_of(st.just(f"in_{datatype}"), names))
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if not rarely(draw, 5):
            count = math.prod(shape) if isinstance(shape, list) and all(
                type(d) is int and 0 <= d < 64 for d in shape
            ) else 1
            if datatype == "BYTES":
                raw = b"".join(
                    struct.pack("<I", len(v)) + v
                    for v in draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
                )
            elif datatype in OIP_TO_NUMPY:
                raw = draw(st.binary(min_size=count * OIP_TO_NUMPY[datatype].itemsize,
                                     max_size=count * OIP_TO_NUMPY[datatype].itemsize))
            else:
                raw = draw(st.binary(max_size=16))
            if rarely(draw, 10):
                raw = draw(st.binary(max_size=24))  # a size that does not fit
            size: Any = draw(json_values) if rarely(draw, 10) else len(raw)
            tensor["parameters"] = {"binary_data_size": size}
            chunks.append(raw)
        else:
            tensor["data"] = draw(tensor_data())
        inputs.append(tensor)
    header: dict[str, Any] = {"inputs": inputs}
    if rarely(draw, 4):
        header["parameters"] = {"binary_data_output": draw(deep_values)}
    text = encode(header)
    body = text + b"".join(chunks) + (draw(st.binary(max_size=3)) if rarely(draw, 5) else b"")
    length = draw(st.integers(-2, len(body) + 2)) if rarely(draw, 5) else len(text)
    return body, length


@FUZZ
@given(request=binary_requests())
def test_binary_decoder_on_hostile_requests(request: tuple[bytes, int]) -> None:
    body, length = request
    decode_binary(body, length)
    try:  # the HTTP header's text, as the transport hands it over
        binary.parse_header_length(str(length), len(body))
    except InvalidRequest:
        pass


@FUZZ
@given(body=st.binary(max_size=128), header=st.text(max_size=6))
def test_binary_decoder_on_arbitrary_bytes(body: bytes, header: str) -> None:
    try:  # as the REST transport does: the header's length, then the body
        decode_binary(body, binary.parse_header_length(header, len(body)))
    except InvalidRequest:
        pass
    request_id, headers = json_preview(body)  # what a rejected body's log record keeps
    assert request_id is None or isinstance(request_id, str)
    assert all(set(h) == {"name", "datatype", "shape"} for h in headers)


@FUZZ
@given(
    datatype=st.sampled_from(DATATYPES),
    shape=st.lists(dims, max_size=4),
    data=tensor_data(),
)
def test_json_data_to_array(datatype: str, shape: list[int], data: Any) -> None:
    try:
        array = oip.json_data_to_array("x", datatype, tuple(shape), data, limits=SMALL)
    except InvalidRequest:
        return
    assert array.shape == tuple(shape)
    assert array.dtype == (np.dtype(object) if datatype == "BYTES" else OIP_TO_NUMPY[datatype])


@FUZZ
@given(body=st.binary(max_size=200))
def test_grpc_decoder_on_arbitrary_messages(body: bytes) -> None:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    from google.protobuf.message import DecodeError

    from serving.protocol import decode_model_infer_request

    message = service_pb2.ModelInferRequest()
    try:
        message.ParseFromString(body)
    except DecodeError:
        return
    try:
        request = decode_model_infer_request(message, SMALL)  # limits passed, not in context
    except InvalidRequest:
        return
    use(request)


# --------------------------------------------------------------------------------------------
# Schemathesis: the REST API from its OpenAPI document


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A throwaway gateway (its own ROOST_HOME), so fuzzed state changes touch nothing else."""
    home: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = RoostSettings(
        home=home, poll_interval_s=0.2, log_flush_interval_s=0.2, max_request_bytes=1 << 20
    )
    reg = Registry.from_settings(settings_)
    deploy_model(reg, "linear", make_linear_onnx(seed=1), feature_names=FEATURES)
    deploy_model(reg, "echo", make_echo_onnx(), config={"max_batch_size": 0})
    headers: dict[str, str] = {}
    try:  # an admin key, so that the fuzzer gets past authentication into the handlers
        from registry.keys import create_key

        secret, _ = create_key(reg, "fuzz", ["admin", "predict", "read"])
        headers["x-api-key"] = secret
    except ImportError:  # pragma: no cover - no API keys in this build
        pass
    reg.close()
    with running_gateway(settings_) as url:
        yield str(url), headers


def _fuzz_operations(schema: Any, base: str, headers: dict[str, str], examples: int) -> list[str]:
    """Every operation, positive and negative cases; the failures, described."""
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,  # the same cases every run: a failure here is a real one
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                case.call_and_validate(
                    base_url=base, headers=headers, checks=[not_a_server_error], timeout=10
                )

            try:
                run()
            except Unsatisfiable:
                # Nothing in this operation can break its schema on the wire (a path's
                # string parameter, or no parameters at all): no negative cases to send.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # noqa: BLE001 - collected, reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])
    return failures


def test_schemathesis_rest_api_has_no_server_errors(gateway: tuple[str, dict[str, str]]) -> None:
    """Every operation of /openapi.json, 20 positive and 20 negative cases each: no 5xx."""
    import schemathesis

    base, headers = gateway
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    failures = _fuzz_operations(schema, base, headers, examples=20)
    assert not failures, "\n\n".join(failures)


# The gateway's infer routes read their bodies themselves (JSON or binary), so the document
# FastAPI builds has no request schema for them; these describe the v2, v1 and feedback bodies,
# for the fuzzer to build requests that reach the decoders of real models.
# Any parameters but Triton's queue ``timeout``: a tiny one is rightly answered 504.
_PARAMETERS = {"type": "object", "propertyNames": {"not": {"const": "timeout"}}}
_LOOSE_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": ["in_FP32", "in_BYTES", "in_BOOL", "x"]},
        "datatype": {"type": "string", "enum": DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        "data": {
            "type": "array",
            "maxItems": 8,
            "items": {
                "anyOf": [
                    {"type": "number"},
                    {"type": "boolean"},
                    {"type": "string", "maxLength": 4},
                    {"type": "array", "maxItems": 4, "items": {"type": "number"}},
                ]
            },
        },
        "parameters": _PARAMETERS,
    },
    "required": ["name", "datatype", "shape", "data"],
}
# what model "linear" takes: FP32 [N, 4] (as flat data; N = 1 or 2)
_NUMBER = {"type": "number", "minimum": -1e6, "maximum": 1e6}
_LINEAR_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"const": "input"},
        "datatype": {"const": "FP32"},
        "shape": {"const": [1, 4]},
        "data": {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4},
        "parameters": _PARAMETERS,
    },
    "required": ["name", "datatype", "shape", "data"],
}
_INFER = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 8},
        "inputs": {
            "anyOf": [
                {"type": "array", "items": _LINEAR_TENSOR, "minItems": 1, "maxItems": 1},
                {
                    "type": "array",
                    "items": {"anyOf": [_LINEAR_TENSOR, _LOOSE_TENSOR]},
                    "minItems": 1,
                    "maxItems": 2,
                },
            ]
        },
        "outputs": {
            "type": "array",
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": ["label", "probabilities", "out_FP32"]},
                    "parameters": _PARAMETERS,
                },
                "required": ["name"],
            },
        },
        "parameters": _PARAMETERS,
    },
    "required": ["inputs"],
}
_PREDICT = {
    "type": "object",
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {
                "anyOf": [
                    {"type": "array", "items": _NUMBER, "minItems": 4, "maxItems": 4},
                    {
                        "type": "object",
                        "properties": dict.fromkeys(FEATURES, _NUMBER),
                        "required": FEATURES,
                    },
                    {"type": "array", "items": {"type": "number"}, "maxItems": 5},
                    {"type": "object", "additionalProperties": {"type": "number"}},
                ]
            },
        },
        "id": {"type": "string"},
    },
    "required": ["instances"],
}
_FEEDBACK = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string", "maxLength": 40},
        "label": {"type": ["number", "boolean", "null"]},
        "reward": {"type": ["number", "boolean", "null"]},
    },
}


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _with_bodies(document: dict[str, Any]) -> dict[str, Any]:
    """The gateway's document, its read and inference operations only, with their request
    bodies described and path parameters that name the deployed models (so that requests get
    past routing into the decoders and the models)."""
    document = json.loads(json.dumps(document))
    paths: dict[str, Any] = {}
    for path, operations in document["paths"].items():
        if path.startswith("/admin/") or path.endswith(("/load", "/unload")):
            continue  # state-changing: fuzzed with the plain document above
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model":
                    parameter["schema"] = {"type": "string", "enum": ["linear", "echo"]}
                elif parameter["name"] == "version":
                    parameter["schema"] = {"type": "string", "enum": ["1", "2", "x"]}
            if method != "post":
                continue
            if path.endswith("/infer"):
                operation["requestBody"] = _body_schema(_INFER)
            elif path.endswith(":predict"):
                operation["requestBody"] = _body_schema(_PREDICT)
            elif path == "/v1/feedback":
                operation["requestBody"] = _body_schema(_FEEDBACK)
        paths[path] = operations
    document["paths"] = paths
    return document


def test_schemathesis_requests_that_reach_the_models_have_no_server_errors(
    gateway: tuple[str, dict[str, str]],
) -> None:
    """The read and inference operations with described bodies, against the deployed models:
    40 positive and 40 negative cases each, no 5xx."""
    import httpx
    import schemathesis

    base, headers = gateway
    document = httpx.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(_with_bodies(document))
    failures = _fuzz_operations(schema, base, headers, examples=40)
    assert not failures, "\n\n".join(failures)
    # the gateway still answers a plain request
    ok = httpx.post(
        f"{base}/v2/models/linear/infer", headers=headers, timeout=10,
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                          "data": [0.0, 1.0, 2.0, 3.0]}]},
    )
    assert ok.status_code == 200, ok.text
