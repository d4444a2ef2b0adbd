"""``:explain`` (KServe v1) and ``/explain`` (OIP v2) on a real gateway (uvicorn in a thread).

The model is linear (``score = x @ w + b``), so its exact Shapley values against an independent
background are known: ``w_i * (x_i - mean(background_i))``; the permutation method must find
them, and in particular rank the same feature first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings
from registry.errors import DeadlineExceeded
from registry.explain import (
    BACKGROUND_METRIC,
    attach_background,
    decode_background,
    explain,
    is_tree_ensemble,
)
from registry.quantize import session
from warehouse.sql import run_query

FEATURES = ["age", "income", "debt", "tenure", "score", "visits"]
WEIGHTS = np.array([0.5, -2.0, 1.0, 0.25, 3.0, -0.75], dtype=np.float32)


def linear_regressor_onnx() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["z"]),
         helper.make_node("Add", ["z", "B"], ["score"])],
        "linear-regressor",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(WEIGHTS.reshape(-1, 1), "W"),
                     numpy_helper.from_array(np.array([0.1], np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def gateway(settings: RoostSettings, registry: Registry) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(7)
    deploy_model(registry, "lin", linear_regressor_onnx(), feature_names=FEATURES)
    attach_background(registry, "lin", 1, rng.normal(size=(80, len(FEATURES))))
    deploy_model(registry, "bare", make_linear_onnx(len(FEATURES)))  # no background
    info = registry.get_version("lin", 1)
    background = decode_background(registry.artifacts.get(info.metrics[BACKGROUND_METRIC]))
    served = settings.model_copy(update={"explain_max_rows": 5, "log_flush_interval_s": 0.2})
    with running_gateway(served) as url:
        yield {"url": str(url), "background": background, "rng": rng, "settings": served}


def test_explain_v1_v2_agree_and_match_the_linear_truth(gateway: dict[str, Any]) -> None:
    url, background = gateway["url"], gateway["background"]
    rows = gateway["rng"].normal(size=(3, len(FEATURES))).round(3).astype(np.float32)
    records = [dict(zip(FEATURES, map(float, row), strict=True)) for row in rows]
    v1 = httpx.post(f"{url}/v1/models/lin:explain", json={"instances": records},
                    headers={"x-request-id": "why-1"}, timeout=120)
    assert v1.status_code == 200, v1.text
    body = v1.json()
    assert body["id"] == "why-1" and body["model_version"] == "1"
    assert body["feature_names"] == FEATURES and body["output"] == "score"
    assert body["method"] == "shap.PermutationExplainer" and body["model_kind"] == "onnx"
    got = np.array([e["attributions"] for e in body["explanations"]])
    assert got.shape == (3, len(FEATURES))  # one value per feature per row
    truth = WEIGHTS * (rows - background.mean(axis=0))
    np.testing.assert_allclose(got, truth, atol=1e-4)
    assert list(np.abs(got).argmax(axis=1)) == list(np.abs(truth).argmax(axis=1))
    base = [e["base_value"] for e in body["explanations"]]
    np.testing.assert_allclose(got.sum(axis=1) + base, rows @ WEIGHTS + 0.1, atol=1e-4)

    oip = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                       "data": rows.reshape(-1).tolist()}]}
    v2 = httpx.post(f"{url}/v2/models/lin/versions/1/explain", json=oip, timeout=60)
    assert v2.status_code == 200, v2.text
    assert v2.json()["explanations"] == body["explanations"]


def test_explain_limits_and_refusals(gateway: dict[str, Any]) -> None:
    url = gateway["url"]
    rows = [[0.0] * len(FEATURES)] * 6
    too_many = httpx.post(f"{url}/v1/models/lin:explain", json={"instances": rows}, timeout=60)
    assert too_many.status_code == 413
    assert "ROOST_EXPLAIN_MAX_ROWS=5" in too_many.json()["error"]
    oip = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 6], "data": [0.0] * 6}],
           "parameters": {"max_evals": 10**6}}
    evals = httpx.post(f"{url}/v2/models/lin/explain", json=oip, timeout=60)
    assert evals.status_code == 400 and "ROOST_EXPLAIN_MAX_EVALS" in evals.json()["error"]
    bare = httpx.post(f"{url}/v2/models/bare/explain", json={**oip, "parameters": {}}, timeout=60)
    assert bare.status_code == 409
    assert "roost explain-background bare 1" in bare.json()["error"]
    width = httpx.post(f"{url}/v1/models/lin:explain", json={"instances": [[1.0, 2.0]]},
                       timeout=60)
    assert width.status_code == 400


def test_explanations_are_logged_with_the_request_id(
    settings: RoostSettings, registry: Registry
) -> None:
    rng = np.random.default_rng(3)
    deploy_model(registry, "lin", linear_regressor_onnx(), feature_names=FEATURES)
    attach_background(registry, "lin", 1, rng.normal(size=(20, len(FEATURES))))
    served = settings.model_copy(update={"log_flush_interval_s": 0.2})
    with running_gateway(served) as url:
        done = httpx.post(f"{url}/v1/models/lin:explain", timeout=120,
                          json={"instances": [[1, 2, 3, 4, 5, 6]], "id": "explain-logged"})
        assert done.status_code == 200, done.text
    _, rows = run_query(
        served.logs_dir,
        "select request_id, route, protocol, status, outputs from predictions "
        "where route = 'explain'",
    )
    assert [r[:4] for r in rows] == [("explain-logged", "explain", "v1-explain", 200)]
    assert '"attributions"' in rows[0][4]


def test_explain_is_bounded_in_time() -> None:
    sess = session(linear_regressor_onnx())
    X = np.ones((2, len(FEATURES)), np.float32)
    with pytest.raises(DeadlineExceeded, match="ROOST_EXPLAIN_TIMEOUT_S"):
        explain(sess, X, np.zeros_like(X), max_evals=100, timeout_s=1e-9)


def test_tree_ensembles_use_the_permutation_method() -> None:
    """A scikit-learn forest exported to ONNX (TreeEnsembleClassifier): same method, reported
    as ``tree_ensemble``; attributions add up to the explained probability."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = X[:, :8].astype(np.float32)
    forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    data = to_onnx(forest, X[:1], options={"zipmap": False}).SerializeToString()
    assert is_tree_ensemble(data) and not is_tree_ensemble(linear_regressor_onnx())
    sess = session(data)
    result = explain(sess, X[:3], X[100:150], max_evals=200, timeout_s=60)
    assert result.output == "probabilities" and result.targets == [1, 1, 1]
    proba = sess.run(["probabilities"], {sess.get_inputs()[0].name: X[:3]})[0][:, 1]
    np.testing.assert_allclose(result.values.sum(axis=1) + result.base_values, proba, atol=1e-5)
