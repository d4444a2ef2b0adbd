"""Queueing over HTTP on a real server: a full queue answers 503 with Retry-After, an expired
deadline 504, and the Prometheus metrics move with the traffic."""

from __future__ import annotations

import asyncio
import re

import httpx
from roost_testing import deploy_model, make_linear_onnx, make_mlp_onnx, running_gateway

from registry import Registry, RoostSettings

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def burst(url: str, model: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return list(
            await asyncio.gather(*(client.post(f"/v2/models/{model}/infer", json=BODY)
                                   for _ in range(n)))
        )


def test_full_queue_gets_503_with_retry_after_and_metrics_count_it(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(
        registry, "slow", make_mlp_onnx(hidden=768, layers=6),
        config={"max_batch_size": 1, "max_queue_size": 2},
    )
    with running_gateway(settings) as url:
        responses = asyncio.run(burst(url, "slow", 48))
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        for r in refused:
            assert r.headers["retry-after"] == "1"
            assert "queue is full (2 requests waiting)" in r.json()["error"]
        text = httpx.get(f"{url}/metrics").text
        ok = statuses.count(200)
        assert metric(text, "roost_requests_total", model="slow", status="200") == ok
        assert metric(text, "roost_requests_total", model="slow", status="503") == len(refused)
        assert metric(
            text, "roost_rejected_requests_total", model="slow", reason="queue_full"
        ) == len(refused)
        assert metric(text, "roost_batch_size_count", model="slow") == ok
        assert metric(text, "roost_request_latency_seconds_count", model="slow") == ok
        assert metric(text, "roost_model_load_seconds", model="slow") > 0
        assert re.search(r'roost_queue_depth\{model="slow",version="1"\} 0\.0', text)


def test_expired_deadline_gets_504_and_batches_are_counted(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(), config={"max_batch_size": 8})
    with running_gateway(settings) as url:
        late = httpx.post(
            f"{url}/v2/models/m/infer", json=BODY | {"parameters": {"timeout": 1}}
        )
        assert late.status_code == 504 and "not run" in late.json()["error"]
        bad = httpx.post(
            f"{url}/v2/models/m/infer", json=BODY | {"parameters": {"timeout": "soon"}}
        )
        assert bad.status_code == 400 and "parameters.timeout" in bad.json()["error"]
        responses = asyncio.run(burst(url, "m", 32))
        assert {r.status_code for r in responses} == {200}
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "roost_rejected_requests_total", model="m", reason="deadline") == 1
        assert metric(text, "roost_requests_total", model="m", status="504") == 1
        assert metric(text, "roost_batch_size_sum", model="m") == 32
        assert metric(text, "roost_batch_size_count", model="m") <= 32
