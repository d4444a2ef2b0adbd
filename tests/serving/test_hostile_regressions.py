"""Bugs the hostile-input probing found, kept fixed."""

from __future__ import annotations

import httpx
import pytest
from roost_testing import deploy_model, make_linear_onnx, running_gateway

from registry import InvalidRequest, Registry, RoostSettings

ADMIN = {"x-api-key": "roost-dev-key"}


def test_model_name_with_trailing_newline_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidRequest, match="model name"):
        registry.register_version("abc\n", make_linear_onnx())


def test_deep_entities_and_bad_shadow_percent_are_400s(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1), feature_names=list("abcd"))
    deploy_model(registry, "m", make_linear_onnx(seed=2), feature_names=list("abcd"))
    deep = '{"x":' * 1000 + "1" + "}" * 1000
    body = '{"instances": [{"entities": ' + deep + "}]}"
    with running_gateway(settings.model_copy(update={"dev_mode": True})) as url:
        resp = httpx.post(f"{url}/v1/models/m:predict", content=body)
        assert resp.status_code == 400, resp.text
        bad = httpx.post(
            f"{url}/admin/models/m/shadows", json={"version": 1, "percent": "x"}, headers=ADMIN
        )
        assert bad.status_code == 400 and "percent" in bad.json()["error"]
        assert httpx.post(f"{url}/v2/models/m/infer", json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
        ]}).status_code == 200
