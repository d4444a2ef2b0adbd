"""The gateway's entity path over a real uvicorn server, with the SQLite online store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from feature_testing import REQUEST, STANDARD_ROWS, make_store
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from assets.demo_data import FRAUD_FEATURES
from features.online import LOG_PARAMETER
from features.store import FeatureSettings
from registry import Registry, RoostSettings
from serving import create_app

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
def base_url(settings: RoostSettings) -> Iterator[str]:
    make_store(FeatureSettings(home=settings.home, redis_url=None), STANDARD_ROWS)
    reg = Registry.from_settings(settings)
    deploy_model(
        reg, "fraud", make_linear_onnx(8, seed=5), feature_names=FRAUD_FEATURES,
        tags={"feature_service": "fraud_v1"},
    )
    deploy_model(reg, "plain", make_linear_onnx(8, seed=6), feature_names=FRAUD_FEATURES)
    reg.close()
    with running_gateway(settings) as url:
        yield url


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


def test_the_decoded_request_carries_the_features_used_for_the_log(
    settings: RoostSettings, base_url: str
) -> None:
    body = httpx.Request("POST", "/", json={"instances": [entity(3), entity(1)]}).read()
    with TestClient(create_app(settings.model_copy(update={"grpc_port": 0}))) as app_client:
        plane = app_client.app.state.dataplane  # type: ignore[attr-defined]
        request = plane.instances_to_request("fraud", None, body)
    expected = np.array([EXPECTED[3], EXPECTED[1]], dtype=np.float32)
    np.testing.assert_array_equal(request.inputs[0].data, expected)
    used = request.parameters[LOG_PARAMETER]
    assert used["feature_service"] == "fraud_v1"
    assert used["features"][0] == dict(zip(FRAUD_FEATURES, EXPECTED[3], strict=True))
    assert used["defaulted"] == [["txn_count_24h", "txn_count_30d", "amount_sum_30d"], []]


def test_the_features_used_are_in_the_prediction_log(
    settings: RoostSettings, client: httpx.Client
) -> None:
    import json
    import time

    from warehouse import run_query

    resp = predict(client, "fraud", [entity(3)])
    assert resp.status_code == 200, resp.text
    request_id = resp.json()["id"]
    deadline = time.monotonic() + 15
    while True:
        _, rows = run_query(
            settings.logs_dir, f"select inputs from predictions where request_id = '{request_id}'"
        )
        if rows:
            break
        assert time.monotonic() < deadline, "prediction not logged"
        time.sleep(0.2)
    logged = json.loads(rows[0][0])
    assert json.loads(logged["request"])["instances"][0]["entities"] == {"customer_id": 3}
    assert logged["features"]["feature_service"] == "fraud_v1"
    assert logged["features"]["features"][0] == dict(zip(FRAUD_FEATURES, EXPECTED[3], strict=True))
