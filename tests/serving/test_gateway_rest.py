"""The OIP v2 and KServe v1 REST surface over a real uvicorn server on a loopback port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from roost_testing import (
    deploy_model,
    make_echo_onnx,
    make_linear_onnx,
    running_gateway,
)

from registry import Registry, RoostSettings
from warehouse import run_query

FEATURES = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def module_settings(home: Path) -> RoostSettings:
    return RoostSettings(home=home, poll_interval_s=0.2, log_flush_interval_s=0.2)


@pytest.fixture(scope="module")
def base_url(module_settings: RoostSettings) -> Iterator[str]:
    reg = Registry.from_settings(module_settings)
    deploy_model(reg, "linear", make_linear_onnx(seed=1), feature_names=FEATURES)
    # independent dynamic first dims: not batchable, like a Triton model with max_batch_size 0
    deploy_model(reg, "echo", make_echo_onnx(), config={"max_batch_size": 0})
    reg.close()
    with running_gateway(module_settings) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def reference(x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(make_linear_onnx(seed=1), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    return {"label": label, "probabilities": proba}


def infer_body(data: object, shape: list[int], datatype: str = "FP32") -> dict[str, object]:
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}


def test_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "roost"
    meta = client.get("/v2/models/linear").json()
    assert meta["name"] == "linear" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"]["feature_names"] == FEATURES
    assert client.get("/v2/models/linear/versions/1").status_code == 200
    assert client.get("/v2/models/linear/ready").json()["ready"] is True
    assert client.get("/v2/models/linear/versions/1/ready").status_code == 200


def test_infer_matches_onnxruntime_flat_and_nested(client: httpx.Client) -> None:
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    expected = reference(x)
    for data in (x.ravel().tolist(), x.tolist()):
        resp = client.post("/v2/models/linear/infer", json=infer_body(data, [3, 4]))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model_name"] == "linear" and body["model_version"] == "1"
        outs = {o["name"]: o for o in body["outputs"]}
        assert outs["label"]["datatype"] == "INT64" and outs["label"]["shape"] == [3]
        assert outs["label"]["data"] == expected["label"].tolist()
        np.testing.assert_allclose(
            np.array(outs["probabilities"]["data"]).reshape(3, 2),
            expected["probabilities"],
            rtol=1e-6,
        )


def test_requested_outputs_and_pinned_version(client: httpx.Client) -> None:
    body = infer_body([0.0] * 4, [1, 4]) | {"outputs": [{"name": "probabilities"}], "id": "r-1"}
    resp = client.post("/v2/models/linear/versions/1/infer", json=body).json()
    assert resp["id"] == "r-1"
    assert [o["name"] for o in resp["outputs"]] == ["probabilities"]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("BOOL", [[True, False], [False, True]]),
        ("INT8", [[-128, 127], [0, 1]]),
        ("INT16", [[-32768, 32767], [0, 1]]),
        ("INT32", [[-(2**31), 2**31 - 1], [0, 1]]),
        ("INT64", [[-(2**62), 2**62], [0, 1]]),
        ("UINT8", [[0, 255], [1, 2]]),
        ("UINT16", [[0, 65535], [1, 2]]),
        ("UINT32", [[0, 2**32 - 1], [1, 2]]),
        ("UINT64", [[0, 2**63], [1, 2]]),
        ("FP16", [[0.5, -2.0], [1024.0, 0.25]]),
        ("FP32", [[1.5, -2.25], [3.0, 1e-3]]),
        ("FP64", [[1e-300, -2.5], [3.141592653589793, 1e300]]),
        ("BYTES", [["héllo", ""], ["a b", "z"]]),
    ],
)
def test_every_datatype_round_trips(
    client: httpx.Client, datatype: str, values: list[list[object]]
) -> None:
    body = {
        "inputs": [
            {"name": f"in_{datatype}", "datatype": datatype, "shape": [2, 2], "data": values}
        ],
        "outputs": [{"name": f"out_{datatype}"}],
    }
    # the echo model has one input per datatype; the others get the same shape of zeros
    for other in ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                  "UINT64", "FP16", "FP32", "FP64", "BYTES"):
        if other != datatype:
            zero: object = False if other == "BOOL" else ("" if other == "BYTES" else 0)
            body["inputs"].append(  # type: ignore[attr-defined]
                {"name": f"in_{other}", "datatype": other, "shape": [1, 2], "data": [zero] * 2}
            )
    resp = client.post("/v2/models/echo/infer", json=body)
    assert resp.status_code == 200, resp.text
    (out,) = resp.json()["outputs"]
    assert out["datatype"] == datatype and out["shape"] == [2, 2]
    flat = [v for row in values for v in row]
    if datatype in ("FP16", "FP32", "FP64"):
        np.testing.assert_allclose(out["data"], flat, rtol=1e-3 if datatype == "FP16" else 1e-7)
    else:
        assert out["data"] == flat


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v2/models/linear/infer", infer_body([1.0] * 3, [1, 4]), 400,
         "input 'input': shape [1, 4] needs 4 values, got 3"),
        ("/v2/models/linear/infer", infer_body([1.0] * 5, [1, 5]), 400,
         "input 'input': expected shape [-1, 4], got [1, 5]"),
        ("/v2/models/linear/infer", infer_body([1] * 4, [1, 4], "INT64"), 400,
         "input 'input': expected datatype FP32, got INT64"),
        ("/v2/models/linear/infer", infer_body(["x"] * 4, [1, 4]), 400, "input 'input'"),
        ("/v2/models/linear/infer",
         {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, 400,
         "unknown input 'other'"),
        ("/v2/models/echo/infer",
         {"inputs": [{"name": "in_FP32", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
         400, "missing input 'in_BOOL'"),
        ("/v2/models/linear/infer", infer_body([1.0] * 4, [1, 4], "FLOAT"), 400, "datatype"),
        ("/v2/models/linear/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/nope/infer", infer_body([1.0] * 4, [1, 4]), 404, "unknown model 'nope'"),
        ("/v2/models/linear/versions/7/infer", infer_body([1.0] * 4, [1, 4]), 404,
         "version 7 is not served"),
        ("/v2/models/linear/versions/x/infer", infer_body([1.0] * 4, [1, 4]), 404,
         "no version 'x'"),
        ("/v2/models/linear/infer",
         infer_body([1.0] * 4, [1, 4]) | {"outputs": [{"name": "zz"}]}, 400,
         "unknown output 'zz'"),
    ],
)
def test_malformed_requests_get_exact_status_and_message(
    client: httpx.Client, path: str, body: dict[str, object], status: int, fragment: str
) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]


def test_bad_json_and_unknown_routes(client: httpx.Client) -> None:
    resp = client.post("/v2/models/linear/infer", content=b"{not json")
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v3/nothing").json() == {"error": "Not Found"}


def test_kserve_v1_predict_maps_feature_names(client: httpx.Client) -> None:
    x = np.array([[0.1, -0.2, 0.3, 0.4], [1.0, 2.0, -3.0, 0.5]], dtype=np.float32)
    expected = reference(x)
    instances = [dict(zip(FEATURES, map(float, row), strict=True)) for row in x]
    # key order must not matter: records are mapped through the feature order
    instances[1] = dict(reversed(list(instances[1].items())))
    resp = client.post("/v1/models/linear:predict", json={"instances": instances})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["label"] for p in preds] == expected["label"].tolist()
    np.testing.assert_allclose(
        [p["probabilities"] for p in preds], expected["probabilities"], rtol=1e-6
    )
    rows = client.post("/v1/models/linear:predict", json={"instances": x.tolist()}).json()
    assert [p["label"] for p in rows["predictions"]] == expected["label"].tolist()
    assert client.get("/v1/models/linear").json() == {"name": "linear", "ready": True}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"instances": [{"a": 1, "b": 2, "c": 3}]}, "instances[0]: missing feature 'd'"),
        ({"instances": [{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}]}, "unknown feature 'e'"),
        ({"instances": [[1, 2, 3]]}, "instances[0]: expected 4 values, got 3"),
        ({"instances": []}, "instances"),
        ({"rows": []}, '"instances"'),
    ],
)
def test_kserve_v1_errors(client: httpx.Client, body: dict[str, object], fragment: str) -> None:
    resp = client.post("/v1/models/linear:predict", json=body)
    assert resp.status_code == 400 and fragment in resp.json()["error"]


def test_predictions_logged_and_queryable(
    client: httpx.Client, module_settings: RoostSettings
) -> None:
    marker = f"user-{time.time_ns()}"
    for _ in range(5):
        resp = client.post(
            "/v2/models/linear/infer",
            json=infer_body([0.5] * 4, [1, 4]),
            headers={"roost-user": marker},
        )
        assert resp.status_code == 200
    bad = client.post(
        "/v2/models/linear/infer", json=infer_body([0.5] * 3, [1, 4]),
        headers={"roost-user": marker},
    )
    assert bad.status_code == 400
    query = (
        "select status, count(*), min(version), any_value(model), any_value(protocol) "
        f"from predictions where user_id = '{marker}' group by status order by status"
    )
    deadline = time.monotonic() + 15
    while True:
        _, rows = run_query(module_settings.logs_dir, query)
        if rows == [(200, 5, 1, "linear", "v2-rest"), (400, 1, 1, "linear", "v2-rest")]:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    _, detail = run_query(
        module_settings.logs_dir,
        f"select inputs, outputs, latency_ms, request_id from predictions "
        f"where user_id = '{marker}' and status = 200 limit 1",
    )
    inputs, outputs, latency, request_id = detail[0]
    assert json.loads(inputs)["inputs"][0]["data"] == [0.5] * 4
    assert {o["name"] for o in json.loads(outputs)} == {"label", "probabilities"}
    assert latency > 0 and len(request_id) == 32
