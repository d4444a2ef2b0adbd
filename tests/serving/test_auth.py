"""API keys on a real gateway: roles, model scope, dev key, revocation and rate limits."""

from __future__ import annotations

import time

import httpx
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import InvalidRequest, Registry, RoostSettings, Unauthorized
from registry.keys import DEV_KEY, authenticate, create_key, list_keys, revoke_key

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def test_keys_are_hashed_at_rest_and_checked(registry: Registry, settings: RoostSettings) -> None:
    plain, key = create_key(registry, "ci", ["predict"], models=["m"])
    assert plain.startswith(f"rk_{key.id}_")
    import sqlite3

    stored = sqlite3.connect(settings.home / "registry.db").execute(
        "select secret_sha256 from api_keys"
    ).fetchall()
    assert plain.split("_", 2)[2] not in str(stored)
    assert authenticate(registry, plain, dev_mode=False).allows("predict", "m")
    assert not authenticate(registry, plain, dev_mode=False).allows("predict", "other")
    assert not authenticate(registry, plain, dev_mode=False).allows("admin")
    with pytest.raises(Unauthorized, match="not valid"):
        authenticate(registry, plain[:-2] + "xx", dev_mode=False)
    with pytest.raises(Unauthorized, match="refused outside dev mode"):
        authenticate(registry, DEV_KEY, dev_mode=False)
    assert authenticate(registry, DEV_KEY, dev_mode=True).allows("admin")
    revoke_key(registry, key.id)
    with pytest.raises(Unauthorized, match="revoked"):
        authenticate(registry, plain, dev_mode=False)
    assert [k.revoked for k in list_keys(registry)] == [True]
    assert [r.action for r in registry.audit_records()][-2:] == ["create_key", "revoke_key"]
    with pytest.raises(InvalidRequest, match="roles"):
        create_key(registry, "x", ["superuser"])


def test_gateway_enforces_roles_scope_and_rate_limits(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    deploy_model(registry, "other", make_linear_onnx(seed=2))
    predict_m, _ = create_key(registry, "app", ["predict"], models=["m"])
    reader, _ = create_key(registry, "dash", ["read"])
    admin, _ = create_key(registry, "ops", ["admin"])
    limited, _ = create_key(registry, "slow", ["predict"], rate_limit_rps=5)
    secure = settings.model_copy(update={"auth_required": True})
    with running_gateway(secure) as url, httpx.Client(base_url=url) as client:
        def infer(model: str, key: str | None) -> httpx.Response:
            headers = {"x-api-key": key} if key else {}
            return client.post(f"/v2/models/{model}/infer", json=BODY, headers=headers)

        assert client.get("/v2/health/ready").status_code == 200  # probes stay public
        missing = infer("m", None)
        assert missing.status_code == 401 and "role 'predict'" in missing.json()["error"]
        assert infer("m", predict_m).status_code == 200
        scoped = infer("other", predict_m)
        assert scoped.status_code == 403 and "for model 'other'" in scoped.json()["error"]
        assert infer("m", reader).status_code == 403
        assert client.get("/v2/models/m", headers={"x-api-key": reader}).status_code == 200
        bearer = client.get("/v2/models/m", headers={"authorization": f"Bearer {admin}"})
        assert bearer.status_code == 200
        assert infer("m", "rk_nope_nope").status_code == 401
        assert infer("m", DEV_KEY).status_code == 401  # not in dev mode
        # nothing that changes state without admin
        for path in ("/admin/models/m/traffic", "/v2/repository/models/m/unload"):
            for key in (None, predict_m, reader):
                headers = {"x-api-key": key} if key else {}
                assert client.post(path, headers=headers).status_code in (401, 403), (path, key)
        assert client.get("/admin/models/m/traffic", headers={"x-api-key": admin}).status_code == (
            200
        )
        # rate limit: 5 requests/s, bursts of 5
        codes = [infer("m", limited).status_code for _ in range(12)]
        assert codes.count(429) >= 5 and codes[:5] == [200] * 5
        time.sleep(1.0)
        assert infer("m", limited).status_code == 200
        refused = infer("m", limited)
        while refused.status_code == 200:
            refused = infer("m", limited)
        assert refused.headers["retry-after"] == "1"


def test_admin_needs_a_key_even_when_auth_is_optional(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    with running_gateway(settings) as url:
        assert httpx.post(f"{url}/v2/models/m/infer", json=BODY).status_code == 200
        assert httpx.get(f"{url}/admin/models/m/traffic").status_code == 401
        dev = httpx.get(f"{url}/admin/models/m/traffic", headers={"x-api-key": DEV_KEY})
        assert dev.status_code == 401 and "dev mode" in dev.json()["error"]


def test_grpc_enforces_keys_too(settings: RoostSettings, registry: Registry) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from roost_testing import running_gateway_with_grpc
    from tritonclient.utils import InferenceServerException

    deploy_model(registry, "m", make_linear_onnx(seed=1))
    deploy_model(registry, "other", make_linear_onnx(seed=2))
    key, _ = create_key(registry, "app", ["predict"], models=["m"])
    secure = settings.model_copy(update={"auth_required": True})
    with running_gateway_with_grpc(secure) as (_url, address):
        client = grpcclient.InferenceServerClient(url=address)
        try:
            inp = grpcclient.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
            assert client.is_server_live()  # liveness stays public
            with pytest.raises(InferenceServerException, match="API key"):
                client.infer("m", [inp])
            ok = client.infer("m", [inp], headers={"x-api-key": key})
            assert ok.as_numpy("label").shape == (1,)
            with pytest.raises(InferenceServerException, match="for model 'other'"):
                client.infer("other", [inp], headers={"x-api-key": key})
        finally:
            client.close()
