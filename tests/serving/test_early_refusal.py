"""Load shedding at the edge: a request that will be refused is answered 503 before its body is
read, the connection stays usable, and the queue deadline counts from the request's arrival.

The ASGI app is driven directly (its lifespan running, real models) with a ``receive`` that
records whether the body was asked for; the keep-alive tests talk raw HTTP/1.1 to a real
uvicorn server on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import numpy as np
import onnx
import orjson
import pytest
from refusal_testing import BODY, FAILING, ROW, post, quiet, read_response, rejected
from roost_testing import (
    deploy_model,
    in_process_client,
    make_failing_onnx,
    make_linear_onnx,
    running_gateway,
)

from registry import Registry, RoostSettings, ServingConfig, State
from registry.errors import DeadlineExceeded, ServiceUnavailable
from serving import create_app
from serving.batching import DynamicBatcher, QueueFull
from serving.breaker import BreakerOpen, BreakerState, CircuitBreaker


class Body:
    """An ASGI ``receive`` for one request: records whether the app asked for the body; the
    body comes after ``delay`` seconds, or once ``release`` is set."""

    def __init__(self, data: bytes = BODY, delay: float = 0.0) -> None:
        self.data, self.delay = data, delay
        self.calls = 0
        self.release: asyncio.Event | None = None

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()  # after the body: nothing until the client leaves
        if self.release is not None:
            await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        return {"type": "http.request", "body": self.data, "more_body": False}


async def call(app: Any, path: str, body: Body) -> tuple[int, dict[str, str], Any]:
    """One POST through the ASGI app: (status, headers, JSON body)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body.data)).encode())],
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, body, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))


# -- through the ASGI app ---------------------------------------------------------------------


def test_open_breaker_refuses_before_the_body_is_read(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "bad", make_failing_onnx(), config=FAILING)
    app = create_app(quiet(settings))

    async def scenario() -> None:
        async with in_process_client(app) as client:
            first = Body()
            status, _, _ = await call(app, "/v2/models/bad/infer", first)
            assert status == 500 and first.calls == 1  # it ran, failed, opened the breaker
            refused = Body()
            status, headers, answer = await call(app, "/v2/models/bad/infer", refused)
            assert refused.calls == 0  # the body was never asked for
            assert status == 503 and int(headers["retry-after"]) > 500
            assert answer["error"].startswith(
                "model 'bad' version 1 is unavailable: circuit breaker open"
            )
            pinned = Body()
            status, _, _ = await call(app, "/v2/models/bad/versions/1/infer", pinned)
            assert status == 503 and pinned.calls == 0
            text = (await client.get("/metrics")).text
            assert rejected(text, "bad", "breaker_open") == 2

    asyncio.run(scenario())


def test_over_the_admission_limit_is_refused_at_once(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx())
    app = create_app(quiet(settings, max_inflight_requests=1))

    async def scenario() -> None:
        async with in_process_client(app) as client:
            slow = Body()
            slow.release = asyncio.Event()
            in_flight = asyncio.create_task(call(app, "/v2/models/m/infer", slow))
            while slow.calls == 0:  # admitted: it waits for its body
                await asyncio.sleep(0.001)
            second = Body()
            status, headers, answer = await call(app, "/v2/models/m/infer", second)
            assert second.calls == 0 and status == 503 and headers["retry-after"] == "1"
            assert answer["error"] == (
                "the gateway is overloaded: 1 inference requests in flight in this process "
                "(max_inflight_requests: 1); retry later"
            )
            made_up = Body()  # a model nobody serves: refused too, counted without its name
            status, _, _ = await call(app, "/v2/models/made-up-7f3a/infer", made_up)
            assert status == 503 and made_up.calls == 0
            slow.release.set()
            assert (await in_flight)[0] == 200
            assert (await call(app, "/v2/models/m/infer", Body()))[0] == 200  # room again
            text = (await client.get("/metrics")).text
            assert rejected(text, "m", "overloaded") == 1
            assert rejected(text, "", "overloaded") == 1 and "made-up-7f3a" not in text

    asyncio.run(scenario())


def test_deadline_counts_from_arrival_a_slow_upload_is_not_run(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(), config={"queue_timeout_ms": 100})
    app = create_app(quiet(settings))

    async def scenario() -> None:
        async with in_process_client(app):
            batcher = app.state.dataplane.repository.resolve("m", None).batcher
            assert (await call(app, "/v2/models/m/infer", Body()))[0] == 200
            batches = batcher.stats.batches
            status, _, answer = await call(app, "/v2/models/m/infer", Body(delay=0.3))
            assert status == 504
            assert "old when it reached the queue" in answer["error"]
            assert "deadline of 100 ms; it was not run" in answer["error"]
            assert batcher.stats.batches == batches and batcher.stats.expired == 1
            # a request's own timeout (parameters.timeout, microseconds) counts from arrival too
            late = Body(orjson.dumps(ROW | {"parameters": {"timeout": 400_000}}), delay=0.3)
            assert (await call(app, "/v2/models/m/infer", late))[0] == 200

    asyncio.run(scenario())


def test_routed_model_is_refused_early_only_when_every_version_would_refuse(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_failing_onnx(), config=FAILING)
    other = onnx.load_from_string(make_failing_onnx())
    other.doc_string = "the canary: other bytes, same failure"
    canary = registry.register_version("m", other.SerializeToString(), config=FAILING).version
    for state in (State.VALIDATING, State.VALIDATED):
        registry.transition("m", canary, state, reason="test")
    registry.start_canary("m", canary, 10)
    app = create_app(quiet(settings))

    async def scenario() -> None:
        async with in_process_client(app):
            assert "m" in app.state.dataplane.repository.table.routers
            assert (await call(app, "/v2/models/m/versions/1/infer", Body()))[0] == 500
            through = Body()  # v1's breaker is open, the canary's is not: the body is read
            status, _, _ = await call(app, "/v2/models/m/infer", through)
            assert through.calls == 1 and status in (500, 503)
            await call(app, f"/v2/models/m/versions/{canary}/infer", Body())
            refused = Body()  # every version the model could route to refuses
            status, _, answer = await call(app, "/v2/models/m/infer", refused)
            assert refused.calls == 0 and status == 503
            assert "circuit breaker open" in answer["error"]

    asyncio.run(scenario())


# -- the parts ---------------------------------------------------------------------------------


def test_batcher_says_why_it_would_refuse_without_side_effects() -> None:
    started, release = threading.Event(), threading.Event()

    def blocked(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started.set()
        release.wait(10)
        return {"y": feeds["x"]}

    async def scenario() -> None:
        batcher = DynamicBatcher(
            "m v1", [blocked], ServingConfig(max_batch_size=1, max_queue_size=1)
        )
        assert isinstance(batcher.refusal(), ServiceUnavailable)  # not started
        batcher.start()
        assert batcher.refusal() is None
        running = asyncio.create_task(batcher.submit({"x": np.zeros((1, 1))}))
        while not started.is_set():  # the instance took it and is busy with it
            await asyncio.sleep(0.001)
        queued = asyncio.create_task(batcher.submit({"x": np.ones((1, 1))}))
        while batcher.depth == 0:
            await asyncio.sleep(0.001)
        refusal = batcher.refusal()
        assert isinstance(refusal, QueueFull) and "queue is full (1 requests" in refusal.message
        assert batcher.stats.rejected_full == 0  # asking is not refusing
        release.set()
        assert [float((await t)["y"][0, 0]) for t in (running, queued)] == [0.0, 1.0]
        assert batcher.refusal() is None
        await batcher.stop()

    asyncio.run(scenario())


def test_a_request_past_its_deadline_on_arrival_at_the_queue_is_not_queued() -> None:
    calls: list[int] = []

    def model(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(1)
        return {"y": feeds["x"]}

    async def scenario() -> None:
        breaker = CircuitBreaker("m", 1, failures=1, failure_rate=0, reset_s=0.001)
        breaker.record_failure("boom")
        await asyncio.sleep(0.002)  # half-open: the next admitted request would be the probe
        config = ServingConfig(queue_timeout_ms=100)
        batcher = DynamicBatcher("m v1", [model], config, breaker=breaker)
        batcher.start()
        arrived = time.monotonic() - 0.25  # its body took 250 ms to arrive
        with pytest.raises(DeadlineExceeded, match=r"2\d\d ms old when it reached the queue"):
            await batcher.submit({"x": np.zeros((1, 1))}, arrived=arrived)
        assert batcher.stats.expired == 1 and batcher.depth == 0 and not calls
        assert breaker.refusal() is None  # the probe slot was not taken
        out = await batcher.submit({"x": np.ones((1, 1))}, 400, arrived=arrived)  # 400 ms
        assert float(out["y"][0, 0]) == 1.0 and calls == [1]
        assert breaker.state is BreakerState.CLOSED  # the probe went through and closed it
        await batcher.stop()

    asyncio.run(scenario())


def test_breaker_refusal_does_not_take_the_probe() -> None:
    now = [0.0]
    breaker = CircuitBreaker("m", 1, failures=1, failure_rate=0, reset_s=5, clock=lambda: now[0])
    assert breaker.refusal() is None
    breaker.record_failure("boom")
    refusal = breaker.refusal()
    assert isinstance(refusal, BreakerOpen) and "tried again in 5.0 s" in refusal.message
    now[0] = 6.0  # half-open: asking leaves the probe slot to the request that comes through
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.refusal() is None and breaker.refusal() is None
    assert breaker.admit() is True  # the probe
    assert isinstance(breaker.refusal(), BreakerOpen)  # the others wait for its outcome
    with pytest.raises(BreakerOpen):
        breaker.admit()


# -- on a real server: the connection after an early refusal -------------------------------------


def test_connection_stays_usable_after_an_early_refusal(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "bad", make_failing_onnx(), config=FAILING)
    deploy_model(registry, "good", make_linear_onnx())
    with running_gateway(quiet(settings)) as url:
        assert httpx.post(f"{url}/v2/models/bad/infer", json=ROW).status_code == 500
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            # headers and half the body; refused before the rest is even sent
            sock.sendall(post("/v2/models/bad/infer", BODY) + BODY[:20])
            status, headers, answer = read_response(sock)
            assert status == 503 and "circuit breaker open" in orjson.loads(answer)["error"]
            assert headers.get("connection") != "close" and headers["retry-after"]
            sock.sendall(BODY[20:])  # the rest arrives late: discarded by the server
            for _ in range(3):  # the same connection serves the next requests
                sock.sendall(post("/v2/models/good/infer", BODY) + BODY)
                status, _, answer = read_response(sock)
                assert status == 200 and orjson.loads(answer)["model_name"] == "good"
                sock.sendall(post("/v2/models/bad/infer", BODY) + BODY)
                assert read_response(sock)[0] == 503
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            # a client waiting for 100 Continue may still send its body: the server closes
            sock.sendall(post("/v2/models/bad/infer", BODY, "Expect: 100-continue\r\n"))
            status, headers, _ = read_response(sock)
            assert status == 503 and headers["connection"] == "close"
