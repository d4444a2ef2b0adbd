"""The gateway follows the registry live: hot swaps without failed requests, integrity checks
on load, readiness, and NVIDIA's tritonclient against it."""

from __future__ import annotations

import os
import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings, State

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def corrupt(registry: Registry, model: str, version: int) -> None:
    path = registry.artifacts.path_for(registry.get_version(model, version).sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def fast_settings(settings: RoostSettings) -> RoostSettings:
    return settings.model_copy(update={"poll_interval_s": 0.1, "log_flush_interval_s": 0.2})


def test_hot_swap_under_load_fails_no_request(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    v2 = registry.register_version("m", make_linear_onnx(seed=2)).version
    registry.transition("m", v2, State.VALIDATING, reason="t")
    registry.transition("m", v2, State.VALIDATED, reason="t")
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    with running_gateway(fast_settings(settings)) as url:

        def hammer() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                while not stop.is_set():
                    resp = client.post("/v2/models/m/infer", json=BODY)
                    seen.append((resp.status_code, resp.json().get("model_version", "")))

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        swapped_at = time.monotonic()
        registry.deploy("m", v2)
        while not any(v == "2" for _, v in seen[-8:]):
            assert time.monotonic() - swapped_at < 10, "gateway did not pick up the deployment"
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join()
    statuses = {s for s, _ in seen}
    assert statuses == {200}, [s for s in seen if s[0] != 200][:5]
    assert {v for _, v in seen} == {"1", "2"}
    assert seen[-1][1] == "2"


def test_corrupt_artifact_is_refused_and_others_keep_serving(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "good", make_linear_onnx(seed=1))
    deploy_model(registry, "bad", make_linear_onnx(seed=2))
    corrupt(registry, "bad", 1)
    with running_gateway(fast_settings(settings)) as url:
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503
        assert any("bad v1" in r and "corrupt" in r for r in ready.json()["reasons"])
        assert httpx.post(f"{url}/v2/models/good/infer", json=BODY).status_code == 200
        resp = httpx.post(f"{url}/v2/models/bad/infer", json=BODY)
        assert resp.status_code == 503 and "corrupt" in resp.json()["error"]
        assert httpx.get(f"{url}/v2/models/bad/ready").status_code == 503


def test_failed_reload_keeps_previous_version_serving(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    with running_gateway(fast_settings(settings)) as url:
        generation = registry.generation()
        info = registry.register_version("m", make_linear_onnx(seed=2))
        corrupt(registry, "m", info.version)
        registry.transition("m", info.version, State.VALIDATING, reason="t")
        registry.transition("m", info.version, State.VALIDATED, reason="t")
        registry.deploy("m", info.version)
        assert registry.generation() > generation
        deadline = time.monotonic() + 10
        while "reasons" not in httpx.get(f"{url}/v2/health/ready").json():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 200 and "m v2" in ready.json()["reasons"][0]
        resp = httpx.post(f"{url}/v2/models/m/infer", json=BODY)
        assert resp.status_code == 200 and resp.json()["model_version"] == "1"


def test_readiness_false_until_loaded(settings: RoostSettings, registry: Registry) -> None:
    import asyncio

    from serving.repository import ModelRepository

    deploy_model(registry, "m", make_linear_onnx(seed=1))
    repo = ModelRepository(registry, settings)
    assert repo.readiness() == (False, ["deployed versions are still loading"])
    asyncio.run(repo.sync(force=True))
    assert repo.readiness() == (True, [])
    assert repo.resolve("m", None).info.version == 1


def test_tritonclient_http_json_matches_onnxruntime(
    settings: RoostSettings, registry: Registry
) -> None:
    tritonclient_http = pytest.importorskip("tritonclient.http")
    deploy_model(registry, "m", make_linear_onnx(seed=3), feature_names=list("abcd"))
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    session = ort.InferenceSession(make_linear_onnx(seed=3), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    with running_gateway(settings) as url:
        client = tritonclient_http.InferenceServerClient(url=url.removeprefix("http://"))
        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("m")
            meta = client.get_model_metadata("m")
            assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 4]}
            inp = tritonclient_http.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            outputs = [
                tritonclient_http.InferRequestedOutput("label", binary_data=False),
                tritonclient_http.InferRequestedOutput("probabilities", binary_data=False),
            ]
            result = client.infer("m", [inp], outputs=outputs, request_id="triton-1")
            np.testing.assert_array_equal(result.as_numpy("label"), label)
            np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-6)
            assert result.get_response()["id"] == "triton-1"
            pinned = client.infer("m", [inp], model_version="1", outputs=outputs[:1])
            np.testing.assert_array_equal(pinned.as_numpy("label"), label)
        finally:
            client.close()


def test_failed_version_is_retried_and_recovers(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    path = registry.artifacts.path_for(registry.get_version("m", 1).sha256)
    good = path.read_bytes()
    corrupt(registry, "m", 1)
    with running_gateway(fast_settings(settings)) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        path.write_bytes(good)  # the operator restores the artifact; no registry change
        deadline = time.monotonic() + 15
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "failed version was never retried"
            time.sleep(0.2)
        assert httpx.post(f"{url}/v2/models/m/infer", json=BODY).status_code == 200
