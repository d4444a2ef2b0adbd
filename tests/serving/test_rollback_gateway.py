"""Rollback and rollouts against a real gateway: a rollback takes effect within seconds with no
failed request under load, the admin endpoints audit the key that called them, and a deployed
model left without a serving version is visible (readiness reason, model readiness, metric)."""

from __future__ import annotations

import threading
import time

import httpx
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import Registry, RoostSettings, State
from registry.keys import create_key

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def fast(settings: RoostSettings, **update: object) -> RoostSettings:
    return settings.model_copy(
        update={"poll_interval_s": 0.1, "log_flush_interval_s": 0.2, **update}
    )


def add_validated(registry: Registry, seed: int) -> int:
    info = registry.register_version("m", make_linear_onnx(seed=seed))
    registry.transition("m", info.version, State.VALIDATING, reason="t")
    registry.transition("m", info.version, State.VALIDATED, reason="t")
    return info.version


def serving_metric(url: str, model: str) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'roost_model_serving{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(check: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_rollback_under_load_fails_no_request(settings: RoostSettings, registry: Registry) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    registry.deploy("m", add_validated(registry, 2))
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    with running_gateway(fast(settings)) as url:

        def load() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                while not stop.is_set():
                    resp = client.post("/v2/models/m/infer", json=BODY)
                    seen.append((resp.status_code, resp.json().get("model_version", "")))

        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_for(lambda: len(seen) > 20)
            rolled_at = time.monotonic()
            assert registry.rollback("m", reason="test", actor="ops").version == 1
            wait_for(lambda: seen[-1][1] == "1", timeout_s=5)
            took = time.monotonic() - rolled_at
            count = len(seen)
            wait_for(lambda: len(seen) > count + 20)
        finally:
            stop.set()
            worker.join()
    assert {s for s, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    versions = [v for _, v in seen]
    assert versions[0] == "2" and versions[-1] == "1" and took < 5
    assert "2" not in versions[versions.index("1") + 5 :]  # once switched, it stays switched


def test_admin_rollout_and_rollback_endpoints_audit_the_key(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    registry.deploy("m", add_validated(registry, 2))
    v3 = add_validated(registry, 3)
    admin_key, _ = create_key(registry, "ops", ["admin"])
    read_key, _ = create_key(registry, "dash", ["read"])
    admin = {"x-api-key": admin_key}
    base = "/admin/models/m"
    with running_gateway(fast(settings, auth_required=True)) as url, httpx.Client(
        base_url=url, timeout=10
    ) as client:
        assert client.post(f"{base}/rollback").status_code == 401
        assert client.post(f"{base}/rollback", headers={"x-api-key": read_key}).status_code == 403
        resp = client.post(f"{base}/rollback", headers=admin, json={"reason": "p99 up"})
        assert resp.status_code == 200, resp.text
        assert (resp.json()["version"], resp.json()["state"]) == (1, "PRODUCTION")
        record = [r for r in registry.audit_records("m") if r.action == "rollback"][-1]
        assert record.actor == "key:ops" and record.details["reason"] == "p99 up"
        infer = client.post("/v2/models/m/infer", json=BODY, headers=admin)
        assert infer.json()["model_version"] == "1"  # this gateway applied it at once
        back = client.post(f"{base}/rollback", headers=admin, json={"to_version": 2})
        assert back.json()["version"] == 2
        refused = client.post(f"{base}/rollback", headers=admin, json={"to_version": v3})
        assert refused.status_code == 409 and "VALIDATED" in refused.json()["error"]

        assert client.get(f"{base}/rollout", headers=admin).status_code == 404
        bad = client.post(f"{base}/rollout", headers=admin,
                          json={"version": v3, "schedule": [50, 10, 100]})
        assert bad.status_code == 400 and "schedule[1]" in bad.json()["error"]
        started = client.post(f"{base}/rollout", headers=admin,
                              json={"version": v3, "schedule": [10, 100]})
        assert started.status_code == 200, started.text
        assert (started.json()["phase"], started.json()["schedule"]) == ("STAGING", [10.0, 100.0])
        paused = client.post(f"{base}/rollout/pause", headers=admin, json={"reason": "wait"})
        assert paused.json()["paused"] is True and paused.json()["reason"] == "wait"
        assert client.post(f"{base}/rollout/resume", headers=admin).json()["paused"] is False
        cancelled = client.post(f"{base}/rollout/cancel", headers=admin)
        assert cancelled.json()["phase"] == "CANCELLED"
        status = client.get(f"{base}/rollout", headers=admin).json()
        assert status["phase"] == "CANCELLED" and status["actor"] == "key:ops"
        again = client.post(f"{base}/rollout/pause", headers=admin)
        assert again.status_code == 409 and "CANCELLED" in again.json()["error"]
    actions = {r.action: r.actor for r in registry.audit_records("m")}
    for action in ("rollout_start", "rollout_pause", "rollout_resume", "rollout_cancelled"):
        assert actions[action] == "key:ops", action


def test_model_without_serving_version_is_visible(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "churn", make_linear_onnx(seed=1))
    deploy_model(registry, "other", make_linear_onnx(seed=2))
    with running_gateway(fast(settings)) as url:
        assert httpx.get(f"{url}/v2/models/churn/ready").status_code == 200
        assert serving_metric(url, "churn") == 1.0
        registry.transition("churn", 1, State.DEPRECATED, reason="retire", force=True)
        wait_for(lambda: serving_metric(url, "churn") == 0.0)
        ready = httpx.get(f"{url}/v2/health/ready")
        # the gateway stays in rotation for what it serves, and says what it does not
        assert ready.status_code == 200
        assert any(r.startswith("churn: deployed but no version serves it")
                   and "roost rollback churn" in r for r in ready.json()["reasons"])
        assert httpx.get(f"{url}/v2/models/churn/ready").status_code == 503
        refused = httpx.post(f"{url}/v2/models/churn/infer", json=BODY)
        assert refused.status_code == 503 and "roost rollback churn" in refused.json()["error"]
        assert httpx.get(f"{url}/v2/models/other/ready").status_code == 200
        assert serving_metric(url, "other") == 1.0
        assert registry.rollback("churn", reason="bring it back", actor="ops").version == 1
        wait_for(lambda: serving_metric(url, "churn") == 1.0)
        assert "reasons" not in httpx.get(f"{url}/v2/health/ready").json()
        infer = httpx.post(f"{url}/v2/models/churn/infer", json=BODY)
        assert infer.status_code == 200 and infer.json()["model_version"] == "1"
