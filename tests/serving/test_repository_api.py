"""Triton's model repository extension, and a gateway serving well over 100 models at once."""

from __future__ import annotations

import resource
import time

import httpx
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings

ADMIN = {"x-api-key": "roost-dev-key"}  # dev mode's admin key
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def wait_for(predicate: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_index_unload_and_load(settings: RoostSettings, registry: Registry) -> None:
    deploy_model(registry, "a", make_linear_onnx(seed=1))
    deploy_model(registry, "b", make_linear_onnx(seed=2))
    registry.register_version("c", make_linear_onnx(seed=3))  # registered, never deployed
    dev = settings.model_copy(update={"poll_interval_s": 0.1, "dev_mode": True})
    with running_gateway(dev) as url:
        index = httpx.post(f"{url}/v2/repository/index").json()
        assert index == [
            {"name": "a", "version": "1", "state": "READY", "reason": ""},
            {"name": "b", "version": "1", "state": "READY", "reason": ""},
            {"name": "c", "state": "UNAVAILABLE", "reason": "no production deployment"},
        ]
        ready = httpx.post(f"{url}/v2/repository/index", json={"ready": True}).json()
        assert [r["name"] for r in ready] == ["a", "b"]

        assert httpx.post(f"{url}/v2/repository/models/b/unload", headers=ADMIN).status_code == 200
        gone = httpx.post(f"{url}/v2/models/b/infer", json=BODY)
        assert gone.status_code == 404 and "unloaded" in gone.json()["error"]
        assert httpx.post(f"{url}/v2/models/a/infer", json=BODY).status_code == 200
        entry = httpx.post(f"{url}/v2/repository/index").json()[1]
        assert entry["state"] == "UNAVAILABLE" and entry["reason"] == "unloaded"
        assert registry.audit_records("b")[-1].action == "unload"

        assert httpx.post(f"{url}/v2/repository/models/b/load", headers=ADMIN).status_code == 200
        assert httpx.post(f"{url}/v2/models/b/infer", json=BODY).status_code == 200

        missing = httpx.post(f"{url}/v2/repository/models/zz/load", headers=ADMIN)
        assert missing.status_code == 404 and "unknown model 'zz'" in missing.json()["error"]
        undeployed = httpx.post(f"{url}/v2/repository/models/c/load", headers=ADMIN)
        assert undeployed.status_code == 409 and "deploy a version" in undeployed.json()["error"]


def test_gateway_serves_120_models(settings: RoostSettings, registry: Registry) -> None:
    names = [f"model-{i:03d}" for i in range(120)]
    for i, name in enumerate(names):
        deploy_model(registry, name, make_linear_onnx(seed=100 + i))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with running_gateway(settings) as url:
        load_s = time.monotonic() - started
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        with httpx.Client(base_url=url) as client:
            for name in names:
                resp = client.post(f"/v2/models/{name}/infer", json=BODY)
                assert resp.status_code == 200 and resp.json()["model_name"] == name
        index = httpx.post(f"{url}/v2/repository/index").json()
        assert sum(r["state"] == "READY" for r in index) == 120
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # generous bounds, to catch a per-model leak or a pathological load path, not to benchmark
    assert load_s < 60, load_s
    assert grown_mib < 1024, grown_mib
