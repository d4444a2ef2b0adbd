"""Data residency (issue 14): a gateway whose ROOST_REGION a model or user is not pinned to
answers 451 naming the rule (real gateway), spec ``residency`` blocks count, and the start-up
check refuses a pinned model whose log location lies outside its regions."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from assets.spec import parse_spec, write_spec
from registry import Registry, RoostSettings
from serving.governance import ResidencyRefused, load_policy
from warehouse.sql import run_query

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [0.1, 0.2, 0.3, 0.4]}]}


def _policy(tmp_path: Path, **content: object) -> Path:
    path = tmp_path / "residency.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize("region", ["us", "eu"])
def test_gateway_refuses_a_model_pinned_elsewhere(
    settings: RoostSettings, registry: Registry, tmp_path: Path, region: str
) -> None:
    deploy_model(registry, "eu-only", make_linear_onnx(4))
    deploy_model(registry, "anywhere", make_linear_onnx(4, seed=1))
    deploy_model(registry, "spec-pinned", make_linear_onnx(4, seed=2))
    write_spec(settings.home, parse_spec({  # a spec's residency block counts too
        "name": "spec-pinned", "held_out": {"demo": "fraud"},
        "residency": {"allowed_regions": ["eu"]}}))
    policy = _policy(tmp_path, models={"eu-only": ["eu"]},
                     users={"eve": {"allowed_regions": ["eu"]}})
    served = settings.model_copy(update={"region": region, "residency_policy": policy,
                                         "log_flush_interval_s": 0.2})
    with running_gateway(served) as url:
        def infer(model: str, user: str = "u") -> httpx.Response:
            return httpx.post(f"{url}/v2/models/{model}/infer", json=BODY, timeout=30,
                              headers={"roost-user": user})

        pinned, spec_pinned = infer("eu-only"), infer("spec-pinned")
        assert infer("anywhere").status_code == 200
        by_eve = infer("anywhere", "eve")
        if region == "us":
            for answer, model in ((pinned, "eu-only"), (spec_pinned, "spec-pinned")):
                assert answer.status_code == 451, answer.text
                error = answer.json()["error"]
                assert f"model '{model}' may only be served in regions ['eu']" in error
                assert "region 'us' (ROOST_REGION)" in error
            assert by_eve.status_code == 451 and "this user's requests" in by_eve.json()["error"]
        else:
            assert pinned.status_code == spec_pinned.status_code == by_eve.status_code == 200
        deadline = time.monotonic() + 20
        expected = 1 if region == "us" else 4
        while True:  # refused requests are never logged (nothing left the region)
            _, rows = run_query(served.logs_dir, "select model from predictions")
            if len(rows) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    logged = sorted(m for (m,) in rows)
    assert logged == (["anywhere"] if region == "us"  # eve's request was refused too
                      else ["anywhere", "anywhere", "eu-only", "spec-pinned"])


def test_start_up_check_refuses_a_model_whose_log_leaves_its_regions(tmp_path: Path) -> None:
    path = _policy(tmp_path, models={"fraud": ["eu"]},
                   storage_regions={"s3://logs-eu/": "eu", "s3://logs-us/": "us"})
    policy = load_policy("eu", path, None)
    policy.check_storage("s3://logs-eu/prod")
    policy.admit("fraud", None, None)  # in region, log in region
    policy.check_storage("s3://logs-us/prod")
    with pytest.raises(ResidencyRefused, match="log location s3://logs-us/prod is in region 'us'"):
        policy.admit("fraud", None, None)
    unknown = load_policy("eu", path, None)
    unknown.check_storage("s3://elsewhere/x")
    with pytest.raises(ResidencyRefused, match="has no declared region"):
        unknown.admit("fraud", None, None)
    local = load_policy("eu", path, None)
    local.check_storage((tmp_path / "logs").as_uri())  # a local log is in the gateway's region
    local.admit("fraud", None, None)
    assert ResidencyRefused("x").status_code == 451


def test_bad_policy_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"models\.fraud: expected allowed_regions"):
        load_policy("eu", _policy(tmp_path, models={"fraud": "eu"}), None)
    with pytest.raises(ValueError, match="expected a mapping"):
        load_policy("eu", _policy(tmp_path, regions={}), None)
