"""The gateway's entity path over a real uvicorn server (REST and gRPC), with the SQLite online
store: KServe v1 entity instances and OIP v2 entity inputs go through the one enrich step."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from feature_testing import REQUEST, STANDARD_ROWS, make_store
from roost_testing import deploy_model, make_linear_onnx, running_gateway_with_grpc

from assets.demo_data import FRAUD_FEATURES
from features.store import FeatureSettings
from registry import Registry, RoostSettings
from serving import create_app
from serving.pipeline import EntityBatch, RecordsRequest, adapt
from warehouse import run_query

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

# What the online store holds for customers 1-3 at request time (see feature_testing).
EXPECTED = {
    1: [80.0, 3.0, 1.0, 0.4, 51.9, 3, 50.0, 1.6],
    2: [80.0, 3.0, 1.0, 0.4, 400.0, 0, 50.0, 1.6],  # 24-hour window stale: 0
    3: [80.0, 3.0, 1.0, 0.4, 900.0, 0, 80.0, 1.0],  # both windows stale
}


def entity(customer_id: Any, **values: Any) -> dict[str, Any]:
    return {"entities": {"customer_id": customer_id}, "features": {**REQUEST, **values}}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> RoostSettings:
    home: Path = tmp_path_factory.mktemp("entities")
    return RoostSettings(home=home, poll_interval_s=0.2, log_flush_interval_s=0.2)


@pytest.fixture(scope="module")
def addresses(settings: RoostSettings) -> Iterator[tuple[str, str]]:
    make_store(FeatureSettings(home=settings.home, redis_url=None), STANDARD_ROWS)
    reg = Registry.from_settings(settings)
    deploy_model(
        reg, "fraud", make_linear_onnx(8, seed=5), feature_names=FRAUD_FEATURES,
        tags={"feature_service": "fraud_v1"},
    )
    deploy_model(reg, "plain", make_linear_onnx(8, seed=6), feature_names=FRAUD_FEATURES)
    reg.close()
    with running_gateway_with_grpc(settings) as found:
        yield found


@pytest.fixture(scope="module")
def base_url(addresses: tuple[str, str]) -> str:
    return addresses[0]


@pytest.fixture
def grpc_client(addresses: tuple[str, str]) -> Iterator[Any]:
    client = tritonclient_grpc.InferenceServerClient(url=addresses[1])
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


def predict(client: httpx.Client, model: str, instances: list[Any]) -> httpx.Response:
    return client.post(f"/v1/models/{model}:predict", json={"instances": instances})


def test_entities_predict_like_the_same_features_sent_inline(client: httpx.Client) -> None:
    by_entity = predict(client, "fraud", [entity(1), entity(2), entity(3)])
    assert by_entity.status_code == 200, by_entity.text
    inline = predict(client, "fraud", [EXPECTED[1], EXPECTED[2], EXPECTED[3]])
    assert inline.status_code == 200
    assert by_entity.json()["predictions"] == inline.json()["predictions"]
    assert len(by_entity.json()["predictions"]) == 3


def test_inline_features_still_work_for_a_model_with_a_feature_service(
    client: httpx.Client,
) -> None:
    record = dict(zip(FRAUD_FEATURES, EXPECTED[1], strict=True))
    response = predict(client, "fraud", [record])
    assert response.status_code == 200, response.text


def test_an_unknown_customer_is_a_404_naming_it(client: httpx.Client) -> None:
    response = predict(client, "fraud", [entity(1), entity(4)])
    assert response.status_code == 404
    error = response.json()["error"]
    assert "instances[1]" in error and "customer_id=4" in error and "customer_profile" in error


def test_bad_entity_instances_are_400s(client: httpx.Client) -> None:
    response = predict(client, "fraud", [entity("4")])
    assert response.status_code == 400
    assert "instances[0].entities.customer_id: expected an integer" in response.json()["error"]
    response = predict(client, "fraud", [entity(1), EXPECTED[1]])
    assert response.status_code == 400
    assert 'instances[1]: expected {"entities"' in response.json()["error"]


def test_entities_for_a_model_without_a_feature_service_are_a_400(client: httpx.Client) -> None:
    response = predict(client, "plain", [entity(1)])
    assert response.status_code == 400
    assert "has no feature service; send the features inline" in response.json()["error"]


def logged_inputs(settings: RoostSettings, request_id: str) -> Any:
    """The prediction log's ``inputs`` of one request, parsed."""
    deadline = time.monotonic() + 15
    while True:
        _, rows = run_query(
            settings.logs_dir, f"select inputs from predictions where request_id = '{request_id}'"
        )
        if rows:
            return json.loads(rows[0][0])
        assert time.monotonic() < deadline, "prediction not logged"
        time.sleep(0.2)


def test_the_pipeline_adapts_and_enriches_entity_instances(
    settings: RoostSettings, base_url: str
) -> None:
    records = RecordsRequest([entity(3), entity(1)], None, 0)
    with TestClient(create_app(settings.model_copy(update={"grpc_port": 0}))) as app_client:
        plane = app_client.app.state.dataplane  # type: ignore[attr-defined]
        batch = adapt(records, plane.repository.resolve("fraud", None), plane.limits)
        assert isinstance(batch, EntityBatch) and batch.service == "fraud_v1"
        request, used = app_client.portal.call(plane.enrich, batch)  # type: ignore[union-attr]
    expected = np.array([EXPECTED[3], EXPECTED[1]], dtype=np.float32)
    np.testing.assert_array_equal(request.inputs[0].data, expected)
    assert request.parameters == {}  # the features used travel beside the request, typed
    assert used["feature_service"] == "fraud_v1"
    assert used["entities"] == [{"customer_id": 3}, {"customer_id": 1}]
    assert used["features"][0] == dict(zip(FRAUD_FEATURES, EXPECTED[3], strict=True))
    assert used["defaulted"] == [["txn_count_24h", "txn_count_30d", "amount_sum_30d"], []]


def test_the_features_used_are_in_the_prediction_log(
    settings: RoostSettings, client: httpx.Client
) -> None:
    resp = predict(client, "fraud", [entity(3)])
    assert resp.status_code == 200, resp.text
    logged = logged_inputs(settings, resp.json()["id"])
    (tensor,) = logged["inputs"]  # the input the model saw, rendered like every request's
    assert tensor["name"] == "input" and tensor["shape"] == [1, 8]
    assert tensor["data"] == pytest.approx(EXPECTED[3])
    assert logged["features"]["feature_service"] == "fraud_v1"
    assert logged["features"]["entities"] == [{"customer_id": 3}]
    assert logged["features"]["features"][0] == dict(zip(FRAUD_FEATURES, EXPECTED[3], strict=True))


# -- OIP v2: entity inputs, over REST and gRPC ---------------------------------------------------


def v2_entity_body(customers: list[int], **extra: Any) -> dict[str, Any]:
    """A v2 entity request: one input per entity key and request-time value, one row each."""
    n = len(customers)
    inputs = [{"name": "customer_id", "datatype": "INT64", "shape": [n], "data": customers}]
    inputs += [
        {"name": name, "datatype": "FP64", "shape": [n], "data": [value] * n}
        for name, value in REQUEST.items()
    ]
    return {"inputs": inputs, **extra}


def test_v2_rest_entity_inputs_predict_like_the_same_features_sent_inline(
    settings: RoostSettings, client: httpx.Client
) -> None:
    by_entity = client.post(
        "/v2/models/fraud/infer", json=v2_entity_body([1, 2, 3], id="v2-entities")
    )
    assert by_entity.status_code == 200, by_entity.text
    rows = [EXPECTED[1], EXPECTED[2], EXPECTED[3]]
    inline = client.post("/v2/models/fraud/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [3, 8], "data": rows}]})
    assert inline.status_code == 200, inline.text
    assert by_entity.json()["outputs"] == inline.json()["outputs"]
    logged = logged_inputs(settings, "v2-entities")
    assert logged["inputs"][0]["shape"] == [3, 8]
    assert logged["features"]["entities"] == [{"customer_id": c} for c in (1, 2, 3)]


def test_grpc_entity_inputs_predict_like_the_same_features_sent_inline(
    grpc_client: Any, settings: RoostSettings
) -> None:
    customers = np.array([3, 1], dtype=np.int64)
    inputs = [tritonclient_grpc.InferInput("customer_id", [2], "INT64")]
    inputs[0].set_data_from_numpy(customers)
    for name, value in REQUEST.items():
        tensor = tritonclient_grpc.InferInput(name, [2], "FP64")
        tensor.set_data_from_numpy(np.full(2, value, dtype=np.float64))
        inputs.append(tensor)
    by_entity = grpc_client.infer("fraud", inputs, request_id="grpc-entities")
    inline_input = tritonclient_grpc.InferInput("input", [2, 8], "FP32")
    inline_input.set_data_from_numpy(np.array([EXPECTED[3], EXPECTED[1]], dtype=np.float32))
    inline = grpc_client.infer("fraud", [inline_input])
    for output in ("label", "probabilities"):
        np.testing.assert_array_equal(by_entity.as_numpy(output), inline.as_numpy(output))
    logged = logged_inputs(settings, "grpc-entities")
    assert logged["features"]["entities"] == [{"customer_id": 3}, {"customer_id": 1}]
    # an unknown customer: NOT_FOUND naming the row and the entity, as over REST
    customers[1] = 4
    inputs[0].set_data_from_numpy(customers)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("fraud", inputs)
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "rows[1]" in info.value.message() and "customer_id=4" in info.value.message()


def test_v2_entity_input_errors(client: httpx.Client) -> None:
    unknown = client.post("/v2/models/fraud/infer", json=v2_entity_body([1, 4]))
    assert unknown.status_code == 404
    assert "rows[1]" in unknown.json()["error"] and "customer_id=4" in unknown.json()["error"]
    body = v2_entity_body([1])
    body["inputs"] = body["inputs"][:1]  # no request-time values
    missing = client.post("/v2/models/fraud/infer", json=body)
    assert missing.status_code == 400
    assert "missing request-time value" in missing.json()["error"]
    body = v2_entity_body([1])
    body["inputs"][0]["name"] = "account"
    no_key = client.post("/v2/models/fraud/infer", json=body)
    assert no_key.status_code == 400
    assert "missing entity input 'customer_id'" in no_key.json()["error"]
    # a model without a feature service: entity inputs are just unknown inputs
    plain = client.post("/v2/models/plain/infer", json=v2_entity_body([1]))
    assert plain.status_code == 400 and "unknown input 'customer_id'" in plain.json()["error"]


def test_a_client_parameter_named_roost_features_means_nothing(
    settings: RoostSettings, client: httpx.Client
) -> None:
    forged = {"feature_service": "fraud_v1", "features": [{"amount": 1e9}]}
    resp = client.post("/v2/models/plain/infer", json={
        "id": "forged-features",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": EXPECTED[1]}],
        "parameters": {"roost.features": forged},
    })
    assert resp.status_code == 200, resp.text
    logged = logged_inputs(settings, "forged-features")
    assert "features" not in logged  # only the enrich step writes looked-up features
    assert logged["inputs"][0]["data"] == pytest.approx(EXPECTED[1])
