"""A gateway assembled from parts: injected registry, log writer and metrics; deployment scopes
(production and staging side by side in one process); the pure routing table."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from roost_testing import deploy_model, in_process_client, make_linear_onnx

from registry import Registry, RoostSettings, State
from serving import create_app
from serving.backends import BACKENDS, OnnxBackend, TritonBackend
from serving.gateway import Gateway
from serving.llm.backend import LLMBackend
from serving.llm.remote import OpenAIBackend
from serving.metrics import GatewayMetrics
from serving.repository import ModelRepository
from serving.routing_table import RegistrySnapshot, RoutingTable, assemble_table
from serving.scope import DeploymentScope
from warehouse import PredictionLogWriter, PredictionRecord, run_query

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def stage(registry: Registry, model: str, data: bytes) -> int:
    """Register ``data`` and walk it to STAGING (no deployment change)."""
    version = registry.register_version(model, data).version
    for state in (State.VALIDATING, State.VALIDATED, State.STAGING):
        registry.transition(model, version, state, reason="test")
    return int(version)


def no_grpc(settings: RoostSettings) -> RoostSettings:
    return settings.model_copy(update={"grpc_port": 0, "log_flush_interval_s": 0.2})


def test_both_backends_satisfy_the_protocol() -> None:
    # mypy checks the assignment in serving.backends; this checks the factory's keys
    assert BACKENDS == {
        "onnxruntime": OnnxBackend, "triton": TritonBackend, "llm": LLMBackend,
        "openai": OpenAIBackend,
    }


def test_production_and_staging_gateways_in_one_process(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    staged = stage(registry, "m", make_linear_onnx(seed=2))
    assert staged == 2
    base = no_grpc(settings)
    production = Gateway(base, registry=registry)
    staging = Gateway(base, registry=registry, scope=DeploymentScope.staging())
    assert staging.settings.logs_dir != production.settings.logs_dir

    async def scenario() -> None:
        async with contextlib.AsyncExitStack() as stack:
            prod = await stack.enter_async_context(in_process_client(create_app(base, production)))
            stag = await stack.enter_async_context(in_process_client(create_app(base, staging)))
            for _ in range(3):
                a, b = await asyncio.gather(
                    prod.post("/v2/models/m/infer", json=BODY),
                    stag.post("/v2/models/m/infer", json=BODY),
                )
                assert a.status_code == 200 and a.json()["model_version"] == "1"
                assert b.status_code == 200 and b.json()["model_version"] == "2"
                assert b.json()["parameters"]["roost_route"] == "staging"
            # staging does not serve production's version, nor production staging's
            assert (await stag.post("/v2/models/m/versions/1/infer", json=BODY)).status_code == 404
            assert (await prod.post("/v2/models/m/versions/2/infer", json=BODY)).status_code == 404
            assert (await stag.get("/v2/health/ready")).json() == {"ready": True}

    asyncio.run(scenario())
    assert not production.owns_registry and registry.generation() >= 1  # still open
    _, prod_rows = run_query(production.settings.logs_dir, "select version, route from predictions")
    _, stag_rows = run_query(staging.settings.logs_dir, "select version, route from predictions")
    assert sorted(prod_rows) == [(1, "production")] * 3
    assert sorted(stag_rows) == [(2, "staging")] * 3


def test_staging_scope_follows_newly_staged_versions_and_model_filter(
    settings: RoostSettings, registry: Registry
) -> None:
    stage(registry, "a", make_linear_onnx(seed=1))
    deploy_model(registry, "b", make_linear_onnx(seed=3))

    async def scenario() -> None:
        repo = ModelRepository(registry, settings, scope=DeploymentScope.staging(["a"]))
        try:
            await repo.sync(force=True)
            assert repo.resolve("a", None).info.version == 1
            with pytest.raises(Exception, match="unknown model 'b'"):
                repo.resolve("b", None)
            assert not await repo.sync()  # nothing moved
            stage(registry, "a", make_linear_onnx(seed=2))  # does not bump the generation
            assert await repo.sync()
            assert repo.resolve("a", None).info.version == 2
            assert repo.resolve("a", "1").info.version == 1
        finally:
            await repo.close()

    asyncio.run(scenario())


def test_scope_from_settings() -> None:
    s = RoostSettings(scope="staging", serve_models="a, b")  # type: ignore[arg-type]
    assert DeploymentScope.from_settings(s) == DeploymentScope.staging(["a", "b"])
    assert s.logs_dir == s.home / "logs-staging"
    assert DeploymentScope.from_settings(RoostSettings()) == DeploymentScope.production()


class ListSink:
    def __init__(self) -> None:
        self.records: list[PredictionRecord] = []

    def write_batch(self, records: list[PredictionRecord], /) -> None:
        self.records.extend(records)


def test_create_app_takes_injected_parts(settings: RoostSettings, registry: Registry) -> None:
    deploy_model(registry, "m", make_linear_onnx(seed=1))
    sink = ListSink()
    writer = PredictionLogWriter(sink, flush_interval_s=0.1)  # buffer mode, no WAL
    metrics = GatewayMetrics()
    gateway = Gateway(no_grpc(settings), registry=registry, log_writer=writer, metrics=metrics)
    app = create_app(settings, gateway)
    assert app.state.gateway is gateway and app.state.registry is registry

    async def scenario() -> None:
        async with in_process_client(app) as client:
            assert app.state.dataplane is gateway.plane
            assert gateway.plane.log_writer is writer and gateway.plane.metrics is metrics
            resp = await client.post("/v2/models/m/infer", json=BODY)
            assert resp.status_code == 200
            text = (await client.get("/metrics")).text
            assert 'model="m"' in text
        assert gateway.repository is None and app.state.draining

    asyncio.run(scenario())
    assert [r.model for r in sink.records] == ["m"]  # closed (flushed) on stop
    registry.generation()  # the injected registry is not closed by the gateway


def test_reload_failure_keeps_the_previous_version() -> None:
    snapshot = RegistrySnapshot(token=2, generation=2, desired=(), models=frozenset({"m"}))
    previous: Any = object()
    current = RoutingTable(1, {("m", 1): previous}, {"m": 1}, models=frozenset({"m"}))
    table = assemble_table(snapshot, current, {}, {("m", 2): "failed to load: boom"})
    assert table.production == {"m": 1} and table.loaded == {("m", 1): previous}
    assert table.failures == {("m", 2): "failed to load: boom"} and table.token == 2
    assert current.production == {"m": 1}  # the old table is untouched
