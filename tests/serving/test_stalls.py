"""What keeps the event loop free for requests at concurrency 1 (docs/latency.md): the gateway
shortens the GIL switch interval while it serves and restores it after; the benchmarks' stall
probe (benchmarks/stall_probe.py) reports a served window."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from roost_testing import deploy_model, in_process_client, make_linear_onnx

from registry import Registry, RoostSettings
from serving import create_app
from serving.gateway import GIL_SWITCH_INTERVAL_S, Gateway

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "stall_probe.py"


def load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stall_probe", PROBE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stall_probe"] = module
    spec.loader.exec_module(module)
    return module


def test_switch_interval_is_short_while_serving_and_restored_after(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    settings = settings.model_copy(
        update={"grpc_port": 0, "gil_switch_interval_ms": GIL_SWITCH_INTERVAL_S * 1000}
    )
    before = sys.getswitchinterval()
    seen: list[float] = []

    async def scenario() -> None:
        app = create_app(settings, Gateway(settings, registry=registry))
        async with in_process_client(app) as client:
            seen.append(sys.getswitchinterval())
            assert (await client.post("/v2/models/m/infer", json=BODY)).status_code == 200

    asyncio.run(scenario())
    assert seen == [min(before, GIL_SWITCH_INTERVAL_S)]
    assert sys.getswitchinterval() == before

    # ROOST_GIL_SWITCH_INTERVAL_MS=0 (the default) leaves the interpreter's own
    settings = settings.model_copy(update={"gil_switch_interval_ms": 0})
    seen.clear()
    asyncio.run(scenario())
    assert seen == [before]


def test_stall_probe_reports_requests_lag_and_background_work() -> None:
    probe_module = load_probe()
    # slow requests take 30 ms and the threshold is 20 ms: a fast one on a busy machine (the
    # suite runs on two xdist workers) stays below it
    probe = probe_module.StallProbe(every_s=0.001, threshold_ms=20.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        await asyncio.sleep(0.03 if scope["path"] == "/slow" else 0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    probed = probe_module.ProbedApp(app, probe)

    async def scenario() -> dict[str, Any]:
        probe.start_lag_thread(asyncio.get_running_loop())
        transport = httpx.ASGITransport(app=probed)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            await client.get("/_stalls?reset=1")
            for path in ("/fast", "/slow", "/fast"):
                assert (await client.get(path)).status_code == 200
            start = probe_module.time.perf_counter_ns()
            probe.event("seal: parquet", start, start + 10**9)  # covers the next request
            await client.get("/slow")
            await asyncio.sleep(0.01)  # a few lag samples
            report: dict[str, Any] = (await client.get("/_stalls")).json()
        probe.stop()
        return report

    report = asyncio.run(scenario())
    assert report["requests"]["n"] == 4
    assert report["requests"]["over_1ms"] >= 2
    assert report["loop_lag"]["n"] >= 1
    assert report["activities"]["seal: parquet"]["n"] == 1
    assert report["requests_during"]["seal"]["requests"] == 1
    assert report["requests_during"]["nothing"]["requests"] == 3
    assert report["slow_requests_attributed"] == {"none": 1, "seal: parquet": 1}
