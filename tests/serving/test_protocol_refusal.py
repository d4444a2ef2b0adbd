"""Early refusal inside the HTTP protocol (serving/http_protocol.py): a request that will be
refused is answered from its headers without reaching the ASGI app, with the same answer and
metrics as the ASGI edge's refusal, and the connection stays usable.

Real uvicorn servers on loopback (in a thread, and ``roost serve --workers 2``), raw HTTP/1.1
over sockets. The ASGI app is wrapped in a counter (:class:`Counted`) to see which requests
reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from refusal_testing import (
    BODY,
    FAILING,
    ROW,
    post,
    quiet,
    read_response,
    read_responses,
    rejected,
)
from roost_testing import (
    deploy_model,
    free_port,
    gateway_process,
    make_failing_onnx,
    make_linear_onnx,
)

from registry import Registry, RoostSettings
from serving import create_app
from serving.http_protocol import EarlyRefusalProtocol
from serving.shedding import Admission


class Counted:
    """ASGI wrapper counting the HTTP requests that reach the app (``.app``: the protocol finds
    the gateway's edge through it, as through uvicorn's own wrappers)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serving(settings: RoostSettings) -> Iterator[tuple[Counted, tuple[str, int], str]]:
    """The gateway on uvicorn with :class:`EarlyRefusalProtocol`: (counter, address, URL)."""
    import uvicorn

    app = Counted(create_app(settings))
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        lifespan="on", http=EarlyRefusalProtocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "gateway did not start"
        time.sleep(0.02)
    try:
        yield app, ("127.0.0.1", port), url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def trip(url: str, model: str = "bad") -> None:
    assert httpx.post(f"{url}/v2/models/{model}/infer", json=ROW).status_code == 500


def test_refused_in_the_protocol_without_reaching_the_app(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "bad", make_failing_onnx(), config=FAILING)
    deploy_model(registry, "good", make_linear_onnx())
    with serving(quiet(settings)) as (app, address, url):
        trip(url)
        reached = len(app.paths)
        with socket.create_connection(address, timeout=10) as sock:
            # headers and part of the body; refused before the rest is sent
            sock.sendall(post("/v2/models/bad/infer", BODY) + BODY[:20])
            status, headers, refusal = read_response(sock)
            assert status == 503 and len(app.paths) == reached  # the app never saw it
            assert orjson.loads(refusal)["error"].startswith(
                "model 'bad' version 1 is unavailable: circuit breaker open"
            )
            assert int(headers["retry-after"]) > 500 and "connection" not in headers
            assert headers["content-type"] == "application/json" and "date" in headers
            sock.sendall(BODY[20:])  # arrives late: discarded
            for _ in range(3):  # the connection goes on: answers and refusals in turn
                sock.sendall(post("/v2/models/good/infer", BODY) + BODY)
                status, _, answer = read_response(sock)
                assert status == 200 and orjson.loads(answer)["model_name"] == "good"
                sock.sendall(post("/v2/models/bad/versions/1/infer", BODY) + BODY)
                assert read_response(sock)[0] == 503
            assert app.paths[reached:] == ["/v2/models/good/infer"] * 3
            # pipelined behind an answer still being written: the ASGI edge refuses it, in
            # order, with the same answer
            sock.sendall(post("/v2/models/good/infer", BODY) + BODY
                         + post("/v2/models/bad/infer", BODY) + BODY)
            served, (status, edge_headers, edge_refusal) = read_responses(sock, 2)
            assert served[0] == 200
            assert status == 503  # the same message, up to the seconds left until the probe
            assert edge_refusal.rpartition(b" in ")[0] == refusal.rpartition(b" in ")[0]
            assert edge_headers.keys() == headers.keys()
        with socket.create_connection(address, timeout=10) as sock:
            # a client waiting for 100 Continue may still send its body: closed after
            sock.sendall(post("/v2/models/bad/infer", BODY, "Expect: 100-continue\r\n"))
            status, headers, _ = read_response(sock)
            assert status == 503 and headers["connection"] == "close"
            assert sock.recv(100) == b""
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(post("/v2/models/bad/infer", BODY).replace(b"HTTP/1.1", b"HTTP/1.0"))
            status, headers, _ = read_response(sock)
            assert status == 503 and headers["connection"] == "close"
            assert sock.recv(100) == b""
        assert len(app.paths) - reached <= 5  # 3 + 1 + perhaps the pipelined refusal
        text = httpx.get(f"{url}/metrics").text
        assert rejected(text, "bad", "breaker_open") == 7


def test_what_the_edge_answers_first_is_left_to_it(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "bad", make_failing_onnx(), config=FAILING)
    with serving(quiet(settings, max_request_bytes=1024)) as (app, _, url):
        trip(url)
        reached = len(app.paths)
        infer = f"{url}/v2/models/bad/infer"
        big = httpx.post(infer, content=b"x" * 2000, headers={"content-type": "a/json"})
        assert big.status_code == 413  # the body limit comes first, as in the edge
        odd = httpx.post(infer, content=BODY, headers={"content-encoding": "br"})
        assert odd.status_code == 415
        assert httpx.post(f"{url}/v2/models/bad%2Dx/infer", content=BODY).status_code == 404
        assert len(app.paths) == reached + 3
        assert httpx.post(infer, content=BODY).status_code == 503
        assert len(app.paths) == reached + 3


def test_over_the_admission_limit_is_refused_in_the_protocol(
    settings: RoostSettings, registry: Registry
) -> None:
    deploy_model(registry, "m", make_linear_onnx(), config={"queue_timeout_ms": 100})
    with serving(quiet(settings, max_inflight_requests=1)) as (app, address, url):
        assert httpx.post(f"{url}/v2/models/m/infer", json=ROW).status_code == 200
        with socket.create_connection(address, timeout=10) as slow:
            slow.sendall(post("/v2/models/m/infer", BODY) + BODY[:10])  # admitted, waiting
            deadline = time.monotonic() + 10
            while len(app.paths) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            refused = httpx.post(f"{url}/v2/models/m/infer", json=ROW)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert len(app.paths) == 2  # refused in the protocol
            assert "overloaded" in refused.json()["error"]
            time.sleep(0.3)  # the rest of its body comes late: its deadline counts from arrival
            slow.sendall(BODY[10:])
            status, _, answer = read_response(slow)
            assert status == 504, answer
            assert b"old when it reached the queue" in answer
        assert httpx.post(f"{url}/v2/models/m/infer", json=ROW).status_code == 200


async def answer(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one answer on a non-blocking client socket."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
        data.lower().split(b"content-length: ")[1].split(b"\r\n")[0]
    ):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        assert chunk, "closed before the answer"
        data += chunk
    return int(data.split(b" ")[1]), data.partition(b"\r\n\r\n")[2]


def test_requests_read_in_one_loop_turn_are_admitted_one_by_one(
    settings: RoostSettings, registry: Registry
) -> None:
    """Two requests read before any task runs: the first takes the only in-flight slot, the
    second is refused in the protocol (without the slot taken at once both would pass, and the
    edge would refuse one after its task ran). A slot the edge never takes over (the gateway
    started draining before the task ran) is given back when the answer is written."""
    import uvicorn
    from uvicorn.server import ServerState

    deploy_model(registry, "m", make_linear_onnx())
    app = Counted(create_app(quiet(settings, max_inflight_requests=1)))
    fastapi = app.app

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with fastapi.router.lifespan_context(fastapi):
            transport = httpx.ASGITransport(app=app)  # builds the edge; warms the model up
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                assert (await client.post("/v2/models/m/infer", json=ROW)).status_code == 200
            admission: Admission = fastapi.state.edge.admission
            config = uvicorn.Config(app, http=EarlyRefusalProtocol, log_level="warning")
            config.load()
            state = ServerState()
            clients, protocols = [], []
            for _ in range(3):
                ours, theirs = socket.socketpair()
                theirs.setblocking(False)
                protocol = EarlyRefusalProtocol(config, state, {}, _loop=loop)
                await loop.connect_accepted_socket(lambda p=protocol: p, ours)
                clients.append(theirs)
                protocols.append(protocol)
            request = post("/v2/models/m/infer", BODY) + BODY
            reached = len(app.paths)
            protocols[0].data_received(request)  # as the transport does, in one loop turn
            protocols[1].data_received(request)
            assert admission.inflight == 1
            first, second = await answer(clients[0]), await answer(clients[1])
            assert first[0] == 200 and second[0] == 503 and b"overloaded" in second[1]
            assert len(app.paths) == reached + 1 and admission.inflight == 0
            protocols[2].data_received(request)  # admitted; then the gateway starts draining
            fastapi.state.draining = True
            status, body = await answer(clients[2])
            assert status == 503 and b"draining" in body
            assert admission.inflight == 0  # the protocol gave the slot back
            fastapi.state.draining = False
            for sock in clients:
                sock.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_roost_serve_with_two_workers_refuses_early(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "bad", make_failing_onnx(), config=FAILING)
    registry.close()
    with gateway_process(home, workers=2, grpc=False) as gateway:
        url = f"{gateway.url}/v2/models/bad/infer"
        statuses = [httpx.post(url, json=ROW).status_code for _ in range(20)]  # new connections
        assert statuses.count(500) <= 2 and statuses[-5:] == [503] * 5  # each worker tripped
        with httpx.Client() as client:  # one keep-alive connection
            answers = [client.post(url, json=ROW) for _ in range(5)]
        assert {a.status_code for a in answers} == {503}
        assert all(int(a.headers["retry-after"]) > 500 for a in answers)
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert rejected(metrics, "bad", "breaker_open") == statuses.count(503) + 5
