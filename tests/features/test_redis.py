"""The same feature repository with the Redis online store, against a real ``redis-server``
started on a free loopback port (the tests skip only when redis-server is not installed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from feature_testing import REQUEST, STANDARD_ROWS, RedisServer, make_store
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from assets.demo_data import FRAUD_FEATURES
from features.online import OnlineFeatures
from features.store import FeatureSettings, redis_connection_string, repo_config
from registry import Registry, RoostSettings
from registry.errors import ServiceUnavailable

CUSTOMERS = [1, 2, 3, 1]


def instances(customers: list[int]) -> list[dict[str, Any]]:
    return [{"entities": {"customer_id": c}, "features": REQUEST} for c in customers]


def test_a_redis_url_swaps_the_online_store_and_fails_fast(tmp_path: Path) -> None:
    settings = FeatureSettings(home=tmp_path, redis_url="redis://:s3cret@10.0.0.7:6380/2")
    online = repo_config(settings).online_store
    assert online.type == "redis"
    assert online.connection_string == (
        "10.0.0.7:6380,socket_connect_timeout=0.5,socket_timeout=1.0,retry=null,db=2,"
        "password=s3cret"
    )
    assert settings.describe_online_store() == "Redis online store at 10.0.0.7:6380"
    assert redis_connection_string("h:1,socket_timeout=5") == (
        "h:1,socket_connect_timeout=0.5,socket_timeout=5,retry=null"
    )
    with pytest.raises(ValueError, match="expected redis:// or rediss://"):
        FeatureSettings(home=tmp_path, redis_url="http://h:1")


def test_redis_round_trip_matches_sqlite(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_settings = FeatureSettings(home=tmp_path / "redis", redis_url=redis_server.url)
    sqlite_settings = FeatureSettings(home=tmp_path / "sqlite", redis_url=None)
    redis_store = make_store(redis_settings, STANDARD_ROWS)
    make_store(sqlite_settings, STANDARD_ROWS)
    assert redis_store.config.online_store.type == "redis"
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        assert client.dbsize() == 3  # one hash per customer, all of its views' features in it
    finally:
        client.close()

    from_redis = OnlineFeatures(redis_settings).lookup(
        "fraud_v1", FRAUD_FEATURES, instances(CUSTOMERS)
    )
    from_sqlite = OnlineFeatures(sqlite_settings).lookup(
        "fraud_v1", FRAUD_FEATURES, instances(CUSTOMERS)
    )
    assert from_redis.rows == from_sqlite.rows
    assert from_redis.defaulted == from_sqlite.defaulted
    assert from_redis.rows[0] == [80.0, 3.0, 1.0, 0.4, 51.9, 3, 50.0, 1.6]


def test_redis_down_is_a_fast_503_naming_the_store(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings = FeatureSettings(home=tmp_path, redis_url=redis_server.url)
    make_store(settings, STANDARD_ROWS)
    online = OnlineFeatures(settings)
    assert online.lookup("fraud_v1", FRAUD_FEATURES, instances([1])).rows
    redis_server.stop()

    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        online.lookup("fraud_v1", FRAUD_FEATURES, instances([1]))
    assert time.monotonic() - started < 2.0
    assert caught.value.status_code == 503
    assert f"Redis online store at 127.0.0.1:{redis_server.port}" in caught.value.message
    assert "ConnectionError" in caught.value.message


def test_the_gateway_reads_entities_from_redis_and_answers_503_when_it_is_down(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_REDIS_URL", redis_server.url)
    settings = RoostSettings(home=tmp_path / "roost", poll_interval_s=0.2)
    make_store(FeatureSettings(home=settings.home), STANDARD_ROWS)
    reg = Registry.from_settings(settings)
    deploy_model(
        reg, "fraud", make_linear_onnx(8, seed=5), feature_names=FRAUD_FEATURES,
        tags={"feature_service": "fraud_v1"},
    )
    reg.close()
    with running_gateway(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = {"instances": instances([1, 3])}
        ok = client.post("/v1/models/fraud:predict", json=body)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["predictions"]) == 2

        redis_server.stop()
        down = client.post("/v1/models/fraud:predict", json=body)
        assert down.status_code == 503
        assert f"Redis online store at 127.0.0.1:{redis_server.port}" in down.json()["error"]
        # The gateway itself is fine: inline features still predict.
        inline = client.post(
            "/v1/models/fraud:predict", json={"instances": [[80.0, 3, 1, 0.4, 51.9, 3, 50, 1.6]]}
        )
        assert inline.status_code == 200
