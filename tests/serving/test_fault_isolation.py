"""Fault isolation on a real gateway: a failing or hanging backend trips its version's circuit
breaker (503 at once, other models unaffected) and recovers; a batch past
``execution_timeout_ms`` is answered 504 and its stuck instance set aside; versions whose
artifact is missing or that cannot load are unavailable with a reason; an unreachable registry
leaves the last table serving, with a metric and a readiness reason."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import uvicorn
from onnx import TensorProto, helper, numpy_helper
from roost_testing import (
    deploy_model,
    free_port,
    make_failing_onnx,
    make_linear_onnx,
    running_gateway,
)

from registry import DeadlineExceeded, Registry, RoostSettings, ServingConfig
from serving import create_app
from serving.batching import DynamicBatcher, ExecutionTimeout, InstancesStuck
from serving.breaker import RATE_MIN_BATCHES, BreakerOpen, BreakerState, CircuitBreaker

Tensors = dict[str, np.ndarray]


def body(*row: float) -> dict[str, Any]:
    data = list(row) if row else [1.0, 2.0, 3.0, 4.0]
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": data}]}


def fast(settings: RoostSettings) -> RoostSettings:
    return settings.model_copy(update={"poll_interval_s": 0.1, "log_flush_interval_s": 0.2})


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextlib.contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """A uvicorn server running ``app`` on a loopback port (a given one, to come back on)."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert thread.is_alive() and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_spinning_onnx(n_features: int = 4) -> bytes:
    """A model whose run time is set by its input: it spins ``max(input)`` loop iterations
    (about 0.7 us each) before a linear softmax, so ``[1, 2, 3, 2e6]`` keeps it busy ~1.5 s
    while ``[1, 2, 3, 4]`` takes microseconds. A stand-in for a backend that hangs."""
    spin = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
        ],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    weights = np.random.default_rng(0).normal(size=(n_features, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["input"], ["most"], keepdims=0),
            helper.make_node("Cast", ["most"], ["trips"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trips", "cond", "zero"], ["spun"], body=spin),
            helper.make_node("Mul", ["spun", "zero"], ["nothing"]),
            helper.make_node("MatMul", ["input", "W"], ["z0"]),
            helper.make_node("Add", ["z0", "nothing"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
        ],
        "spinning",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array(True), "cond"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


# -- the breaker on its own (a fake clock) ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_state_machine() -> None:
    clock = Clock()
    changes: list[tuple[BreakerState, bool]] = []
    breaker = CircuitBreaker(
        "m", 3, failures=3, failure_rate=0, reset_s=5, clock=clock,
        on_change=lambda state, tripped: changes.append((state, tripped)),
    )
    assert breaker.admit() is False
    breaker.record_failure("boom")
    breaker.record_failure("boom")
    breaker.record_success()  # a success resets the consecutive count
    assert not breaker.record_failure("boom") and not breaker.record_failure("boom")
    assert breaker.record_failure("kaput")
    with pytest.raises(BreakerOpen) as refused:
        breaker.admit()
    message = refused.value.message
    assert message.startswith("model 'm' version 3 is unavailable: circuit breaker open")
    assert "3 consecutive failed batches" in message and "kaput" in message
    assert "tried again in 5.0 s" in message and refused.value.retry_after_s == 5
    assert refused.value.status_code == 503
    clock.now += 4
    assert refused.value.retry_after_s == 5 and breaker.rejection().retry_after_s == 1
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit() is True  # the one probe
    with pytest.raises(BreakerOpen, match="a probe request is testing"):
        breaker.admit()
    breaker.probe_abandoned()  # it expired in the queue: the next request probes
    assert breaker.admit() is True
    assert breaker.record_failure("still down")  # the probe failed: open again
    assert (breaker.state, breaker.trips) == (BreakerState.OPEN, 2)
    clock.now += 5
    assert breaker.admit() is True
    breaker.record_success()
    assert (breaker.state, breaker.describe()) == (BreakerState.CLOSED, None)
    assert changes == [
        (BreakerState.OPEN, True),
        (BreakerState.HALF_OPEN, False),
        (BreakerState.OPEN, True),
        (BreakerState.HALF_OPEN, False),
        (BreakerState.CLOSED, False),
    ]


def test_breaker_failure_rate_over_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker("m", 1, failures=100, failure_rate=0.5, reset_s=1, clock=clock)
    for i in range(RATE_MIN_BATCHES - 1):  # alternate: 50% but too few batches yet
        clock.now += 0.1
        if i % 2:
            breaker.record_success()
        else:
            assert not breaker.record_failure("flaky")
    clock.now += 0.1
    assert breaker.record_failure("flaky")
    assert "of 20 batches failed in the last 10 s" in (breaker.describe() or "")
    # Failures spread thinner than the window never add up.
    quiet = CircuitBreaker("m", 1, failures=100, failure_rate=0.5, reset_s=1, clock=clock)
    for _ in range(50):
        clock.now += 11
        assert not quiet.record_failure("rare")
    assert CircuitBreaker.for_config("m", 1, ServingConfig(breaker_failures=0)) is None


def test_timed_out_batch_sets_its_instance_aside_until_it_returns() -> None:
    """A thread-run instance stuck past execution_timeout_ms: its waiters get 504, the other
    instance keeps serving, with both stuck requests are refused at once, and an instance
    whose call returns takes batches again."""
    gates = {1.0: threading.Event(), 2.0: threading.Event()}
    timeouts: list[tuple[int, bool]] = []

    def model(feeds: Tensors) -> Tensors:
        value = float(feeds["x"][0, 0])
        if value in gates:
            gates[value].wait(10)
        return {"y": feeds["x"] * 2}

    async def scenario() -> None:
        config = ServingConfig(max_batch_size=1, execution_timeout_ms=100, breaker_failures=0)
        batcher = DynamicBatcher(
            "m:1", [model, model], config, on_timeout=lambda *a: timeouts.append(a)
        )
        batcher.start()
        started = time.monotonic()
        with pytest.raises(ExecutionTimeout) as late:
            await batcher.submit({"x": np.full((1, 1), 1.0)})
        assert 0.1 <= time.monotonic() - started < 1
        assert late.value.status_code == 504
        assert "within execution_timeout_ms (100 ms" in late.value.message
        assert "set aside until its call returns" in late.value.message
        await asyncio.sleep(0.01)
        assert len(batcher.set_aside) == 1 and "1 of 2 instance(s) set aside" in batcher.health()[0]
        for i in range(5):  # the other instance serves
            assert (await batcher.submit({"x": np.full((1, 1), 10.0 + i)}))["y"][0, 0] == 20 + 2 * i
        with pytest.raises(ExecutionTimeout):
            await batcher.submit({"x": np.full((1, 1), 2.0)})
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(InstancesStuck, match="every instance \\(2\\) is stuck") as stuck:
            await batcher.submit({"x": np.full((1, 1), 3.0)})
        assert time.monotonic() - started < 0.05 and stuck.value.status_code == 503
        gates[1.0].set()
        for _ in range(100):
            if len(batcher.set_aside) < 2:
                break
            await asyncio.sleep(0.01)
        assert (await batcher.submit({"x": np.full((1, 1), 4.0)}))["y"][0, 0] == 8
        gates[2.0].set()
        await asyncio.sleep(0.05)
        assert not batcher.set_aside and batcher.stats.timeouts == 2
        await batcher.stop()

    asyncio.run(scenario())
    assert [t for t in timeouts if t[1]] == [(0, True), (1, True)]
    assert timeouts[-1] == (0, False)


def test_timeouts_count_as_breaker_failures_and_a_trip_fails_the_queue() -> None:
    release = threading.Event()

    def model(feeds: Tensors) -> Tensors:
        release.wait(10)
        return feeds

    async def scenario() -> None:
        config = ServingConfig(
            max_batch_size=1, execution_timeout_ms=50, breaker_failures=1, breaker_reset_ms=60000
        )
        breaker = CircuitBreaker.for_config("m", 1, config)
        assert breaker is not None
        batcher = DynamicBatcher("m:1", [model, model], config, breaker=breaker)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
        second = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
        third = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))  # queued
        results = await asyncio.gather(first, second, third, return_exceptions=True)
        assert [type(r) for r in results] == [ExecutionTimeout, ExecutionTimeout, BreakerOpen]
        assert isinstance(results[0], DeadlineExceeded)  # 504
        with pytest.raises(BreakerOpen, match="circuit breaker open \\(1 consecutive"):
            await batcher.submit({"x": np.zeros((1, 1))})
        release.set()
        await batcher.stop()

    asyncio.run(scenario())


# -- on a real gateway -----------------------------------------------------------------------


def test_failing_backend_opens_the_breaker_and_other_models_keep_serving(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "good", make_linear_onnx(seed=1))
    deploy_model(
        registry, "bad", make_failing_onnx(),
        config={"warmup_runs": 0, "breaker_failures": 3, "breaker_reset_ms": 60000},
    )
    with running_gateway(fast(settings)) as url, httpx.Client(base_url=url) as client:
        assert metric(url, "roost_breaker_open", model="bad") == 0
        for _ in range(3):
            resp = client.post("/v2/models/bad/infer", json=body())
            assert resp.status_code == 500 and "inference failed" in resp.json()["error"]
        times = []
        for _ in range(20):
            started = time.perf_counter()
            resp = client.post("/v2/models/bad/infer", json=body())
            times.append(time.perf_counter() - started)
            assert resp.status_code == 503, resp.text
        error = resp.json()["error"]
        assert error.startswith("model 'bad' version 1 is unavailable: circuit breaker open")
        assert "3 consecutive failed batches" in error and "tried again in" in error
        assert int(resp.headers["retry-after"]) > 50
        assert sorted(times)[10] < 0.1, times  # answered at once, the model is not called
        for _ in range(5):
            assert client.post("/v2/models/good/infer", json=body()).status_code == 200
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200
        assert any(r.startswith("bad v1: circuit breaker open") for r in ready.json()["reasons"])
        assert metric(url, "roost_breaker_open", model="bad", version="1") == 1
        assert metric(url, "roost_breaker_trips_total", model="bad") == 1
        rejected = metric(url, "roost_rejected_requests_total", model="bad", reason="breaker_open")
        assert rejected == 20
        assert metric(url, "roost_breaker_open", model="good") == 0


def test_breaker_recovers_once_the_remote_backend_is_back(
    settings: RoostSettings, registry: Registry, tmp_path: Path
) -> None:
    """The version runs on a remote OIP server (a second gateway, B). B stops: failures open
    the breaker; B comes back: after breaker_reset_ms one probe goes through and closes it."""
    model = make_linear_onnx(seed=3)
    remote = RoostSettings(home=tmp_path / "remote", poll_interval_s=0.1)
    remote_registry = Registry.from_settings(remote)
    deploy_model(remote_registry, "m", model)
    remote_registry.close()
    port = free_port()
    deploy_model(
        registry, "m", model,
        config={
            "backend": "triton", "triton_url": f"127.0.0.1:{port}",
            "breaker_failures": 2, "breaker_reset_ms": 500,
        },
    )
    with contextlib.ExitStack() as remote_running:
        remote_running.enter_context(serve(create_app(remote), port))
        with running_gateway(fast(settings)) as url, httpx.Client(base_url=url) as client:
            assert client.post("/v2/models/m/infer", json=body()).status_code == 200
            remote_running.close()  # B goes away
            for _ in range(2):
                resp = client.post("/v2/models/m/infer", json=body())
                assert resp.status_code == 503 and "unreachable" in resp.json()["error"]
            resp = client.post("/v2/models/m/infer", json=body())
            assert resp.status_code == 503 and "circuit breaker open" in resp.json()["error"]
            assert metric(url, "roost_breaker_open", model="m") == 1
            time.sleep(0.6)  # half-open: the probe fails (B is still down), open again
            resp = client.post("/v2/models/m/infer", json=body())
            assert resp.status_code == 503 and "unreachable" in resp.json()["error"]
            resp = client.post("/v2/models/m/infer", json=body())
            assert "circuit breaker open (the probe request failed" in resp.json()["error"]
            with serve(create_app(remote), port):  # B is back on the same port
                deadline = time.monotonic() + 5
                while client.post("/v2/models/m/infer", json=body()).status_code != 200:
                    assert time.monotonic() < deadline, "the breaker never closed"
                    time.sleep(0.1)
                recovered = time.monotonic()
                for _ in range(10):
                    assert client.post("/v2/models/m/infer", json=body()).status_code == 200
                assert metric(url, "roost_breaker_open", model="m") == 0
                assert metric(url, "roost_breaker_trips_total", model="m") == 2
                assert "reasons" not in client.get("/v2/health/ready").json()
                assert time.monotonic() - recovered < 5


def test_hung_batch_is_answered_504_and_the_gateway_stays_responsive(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(
        registry, "spin", make_spinning_onnx(),
        config={"instances": 2, "max_batch_size": 1, "execution_timeout_ms": 300,
                "breaker_failures": 0},
    )
    deploy_model(registry, "other", make_linear_onnx(seed=1))
    hang = body(1, 2, 3, 2.5e6)  # ~1.5-2 s of spinning
    with running_gateway(fast(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v2/models/spin/infer", json=body()).status_code == 200
        started = time.monotonic()
        resp = client.post("/v2/models/spin/infer", json=hang)
        took = time.monotonic() - started
        assert resp.status_code == 504 and "execution_timeout_ms (300 ms" in resp.json()["error"]
        assert 0.3 <= took < 1.5, took
        # instance 0 is still spinning; instance 1, the other model and health answer
        for _ in range(5):
            started = time.monotonic()
            assert client.post("/v2/models/spin/infer", json=body()).status_code == 200
            assert client.post("/v2/models/other/infer", json=body()).status_code == 200
            assert client.get("/v2/health/live").status_code == 200
            assert time.monotonic() - started < 0.5
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200
        assert any("1 of 2 instance(s) set aside" in r for r in ready.json()["reasons"])
        assert metric(url, "roost_instances_set_aside", model="spin") == 1
        assert client.post("/v2/models/spin/infer", json=hang).status_code == 504
        resp = client.post("/v2/models/spin/infer", json=body())
        if resp.status_code == 503:  # both instances still stuck: refused at once
            assert "every instance (2) is stuck" in resp.json()["error"]
            assert resp.headers["retry-after"] == "1"
        deadline = time.monotonic() + 15
        while metric(url, "roost_instances_set_aside", model="spin") > 0:
            assert time.monotonic() < deadline, "the stuck instances never came back"
            time.sleep(0.1)
        assert client.post("/v2/models/spin/infer", json=body()).status_code == 200
        assert metric(url, "roost_execution_timeouts_total", model="spin") == 2
        assert "reasons" not in client.get("/v2/health/ready").json()


def test_missing_artifact_and_unloadable_version_are_unavailable_with_reasons(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "good", make_linear_onnx(seed=1))
    deploy_model(registry, "gone", make_linear_onnx(seed=2))
    path = registry.artifacts.path_for(registry.get_version("gone", 1).sha256)
    path.unlink()
    nowhere = f"127.0.0.1:{free_port()}"
    deploy_model(
        registry, "remote", make_linear_onnx(seed=3),
        config={"backend": "triton", "triton_url": nowhere, "triton_timeout_s": 2},
    )
    with running_gateway(fast(settings)) as url, httpx.Client(base_url=url) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503
        reasons = ready.json()["reasons"]
        assert any(r.startswith("gone v1: artifact sha256:") and "is missing" in r for r in reasons)
        assert any(r.startswith("remote v1: triton at") and "unreachable" in r for r in reasons)
        resp = client.post("/v2/models/gone/infer", json=body())
        assert resp.status_code == 503 and "is missing" in resp.json()["error"]
        assert client.post("/v2/models/good/infer", json=body()).status_code == 200


def test_unreachable_registry_keeps_the_last_table_serving_with_a_reason(
    settings: RoostSettings, tmp_path: Path
) -> None:
    """The gateway's registry database goes away (its directory moved, pooled connections
    dropped, as when a database server restarts): polls fail, the gateway serves on, says so in
    readiness and metrics, and picks up changes once the database is back."""
    database = tmp_path / "db"
    settings = fast(settings).model_copy(
        update={"database_url": f"sqlite:///{database}/registry.db"}
    )
    writer = Registry.from_settings(settings)
    deploy_model(writer, "m", make_linear_onnx(seed=1))
    writer.close()
    gateway_registry = Registry.from_settings(settings)
    with serve(create_app(settings, gateway_registry)) as url, httpx.Client(base_url=url) as client:
        assert client.post("/v2/models/m/infer", json=body()).status_code == 200
        assert metric(url, "roost_registry_last_success_timestamp_seconds") > time.time() - 5
        assert metric(url, "roost_registry_poll_errors_total") == 0
        shutil.move(database, tmp_path / "db-away")
        gateway_registry.close()  # drop pooled connections: the next poll must reconnect
        deadline = time.monotonic() + 10
        while metric(url, "roost_registry_poll_errors_total") < 3:
            assert time.monotonic() < deadline, "polls kept succeeding"
            time.sleep(0.1)
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200
        (reason,) = ready.json()["reasons"]
        assert reason.startswith("registry unreachable since 20")
        assert "serving the last known table" in reason and "unable to open database" in reason
        for _ in range(10):
            assert client.post("/v2/models/m/infer", json=body()).status_code == 200
        stale = metric(url, "roost_registry_last_success_timestamp_seconds")
        assert stale < time.time() - 0.2

        shutil.move(tmp_path / "db-away", database)
        writer = Registry.from_settings(settings)
        v2 = deploy_model(writer, "m", make_linear_onnx(seed=2))
        writer.close()
        deadline = time.monotonic() + 10
        while client.post("/v2/models/m/infer", json=body()).json().get("model_version") != "2":
            assert time.monotonic() < deadline, "the gateway never followed the registry again"
            time.sleep(0.1)
        assert v2 == 2 and "reasons" not in client.get("/v2/health/ready").json()
        assert metric(url, "roost_registry_last_success_timestamp_seconds") > stale
    gateway_registry.close()
