"""A standard scikit-learn export (ZipMap on) registers: ZipMap -> probability tensor."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from roost_testing import deploy_model, running_gateway
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from registry import InvalidRequest, Registry, RoostSettings
from registry.artifacts import sha256_bytes
from registry.onnx_rewrite import REWRITE_NAME, UnsafeRewrite, rewrite_zipmap_outputs


def _run(data: bytes, x: np.ndarray[Any, Any]) -> dict[str, Any]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


def _zipmap_probabilities(rows: list[dict[Any, float]], labels: list[Any]) -> np.ndarray[Any, Any]:
    return np.array([[row[label] for label in labels] for row in rows], dtype=np.float32)


@pytest.fixture(scope="module")
def iris_logreg() -> tuple[bytes, np.ndarray[Any, Any], list[int]]:
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    return to_onnx(clf, x[:1]).SerializeToString(), x, [int(c) for c in clf.classes_]


@pytest.fixture(scope="module")
def cancer_forest() -> tuple[bytes, np.ndarray[Any, Any], list[int]]:
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    clf = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y)
    return to_onnx(clf, x[:1]).SerializeToString(), x, [int(c) for c in clf.classes_]


@pytest.fixture(scope="module")
def iris_named_classes() -> tuple[bytes, np.ndarray[Any, Any], list[str]]:
    data = load_iris()
    x = data.data.astype(np.float32)
    y = np.array(data.target_names)[data.target]
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    return to_onnx(clf, x[:1]).SerializeToString(), x, [str(c) for c in clf.classes_]


@pytest.mark.parametrize("fixture", ["iris_logreg", "cancer_forest", "iris_named_classes"])
def test_zipmap_export_registers_as_probability_tensor(
    fixture: str, registry: Registry, request: pytest.FixtureRequest
) -> None:
    original, x, classes = request.getfixturevalue(fixture)
    label_type = "BYTES" if isinstance(classes[0], str) else "INT64"
    assert "ZipMap" in {n.op_type for n in onnx.load_model_from_string(original).graph.node}

    result = registry.register("clf", original, lineage={"source_path": "model.onnx"})
    assert result.created
    info = result.version
    stored = registry.artifacts.get(info.sha256)
    assert info.sha256 == sha256_bytes(stored) != sha256_bytes(original)
    assert info.lineage == {
        "source_path": "model.onnx",
        "rewritten_from_sha256": sha256_bytes(original),
        "rewrite": REWRITE_NAME,
        "class_labels": {"output_probability": classes},
    }
    assert [o.to_dict() for o in info.signature.outputs] == [
        {"name": "output_label", "datatype": label_type, "shape": [-1]},
        {"name": "output_probability", "datatype": "FP32", "shape": [-1, len(classes)]},
    ]
    assert "ZipMap" not in {n.op_type for n in onnx.load_model_from_string(stored).graph.node}

    before, after = _run(original, x), _run(stored, x)
    np.testing.assert_array_equal(after["output_label"], before["output_label"])
    expected = _zipmap_probabilities(before["output_probability"], classes)
    assert after["output_probability"].shape == (len(x), len(classes))
    np.testing.assert_array_equal(after["output_probability"], expected)

    # the same export again is the same stored file: the existing version, not a new one
    again = registry.register("clf", original)
    assert not again.created and again.version.version == info.version


def test_a_gateway_serves_the_rewritten_model(
    settings: RoostSettings, registry: Registry, iris_logreg: tuple[bytes, Any, list[int]]
) -> None:
    original, x, classes = iris_logreg
    deploy_model(registry, "iris", original)
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 4],
                        "data": x[[0, 100]].ravel().tolist()}]}
    with running_gateway(settings) as url:
        response = httpx.post(f"{url}/v2/models/iris/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    probabilities = outputs["output_probability"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [2, len(classes)]
    expected = _zipmap_probabilities(_run(original, x[[0, 100]])["output_probability"], classes)
    np.testing.assert_allclose(
        np.array(probabilities["data"]).reshape(2, -1), expected, rtol=1e-6
    )
    assert outputs["output_label"]["data"] == [0, 2]


SEQ_OF_MAPS = helper.make_sequence_type_proto(
    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, []))
)


def _onnx(graph: Any, *domains: str) -> bytes:
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


def test_sequence_of_maps_not_made_by_zipmap_is_refused_with_the_fix() -> None:
    made_by_custom_op = _onnx(
        helper.make_graph(
            [helper.make_node("MakeMaps", ["x"], ["out"], domain="example")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
            [helper.make_value_info("out", SEQ_OF_MAPS)],
        ),
        "example",
    )
    with pytest.raises(UnsafeRewrite) as caught:
        rewrite_zipmap_outputs(made_by_custom_op)
    message = str(caught.value)
    assert message.startswith(
        "output 'out' has unsupported ONNX type seq(map(int64,tensor(float))) "
        "(expected a tensor) and is produced by node MakeMaps, not by a ZipMap"
    )
    assert 'skl2onnx.to_onnx(model, X[:1], options={"zipmap": False})' in message


def test_non_tensor_input_is_refused_naming_it(registry: Registry) -> None:
    passthrough = _onnx(
        helper.make_graph(
            [], "g", [helper.make_value_info("maps", SEQ_OF_MAPS)],
            [helper.make_value_info("maps", SEQ_OF_MAPS)],
        )
    )
    with pytest.raises(InvalidRequest) as refused:
        registry.register_version("odd", passthrough)
    message = refused.value.message
    assert message.startswith(
        "artifact: input 'maps' has unsupported ONNX type seq(map(int64,tensor(float))) "
        "(expected a tensor of bool, uint8,"
    )
    assert 'options={"zipmap": False}' in message


def test_sequence_of_tensors_output_is_refused(registry: Registry) -> None:
    seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, [None]))
    model = _onnx(
        helper.make_graph(
            [helper.make_node("SequenceConstruct", ["x"], ["out"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_value_info("out", seq)],
        )
    )
    with pytest.raises(InvalidRequest) as refused:
        registry.register_version("seq", model)
    message = refused.value.message
    assert message.startswith("artifact: output 'out' has unsupported ONNX type seq(tensor(float))")
    assert "ConcatFromSequence" in message


def test_plain_tensor_models_are_stored_unchanged(registry: Registry) -> None:
    from roost_testing import make_linear_onnx

    data = make_linear_onnx(seed=5)
    info = registry.register_version("plain", data)
    assert info.sha256 == sha256_bytes(data)
    assert "rewrite" not in info.lineage
