"""``ROOST_GRPC_SERVER=grpclib``: what the grpclib server adds to grpclib (the service itself runs
the whole of test_grpc.py on both implementations): the message size limit from the length
prefix, and a drain that lets calls in flight finish. A real grpclib server on loopback, a real
``grpc.aio`` client; the servicer here is a small real one whose ModelInfer waits for the test."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from roost_testing import free_port
from tritonclient.grpc import service_pb2 as pb

from serving.grpc_grpclib import GrpclibServer

METHOD = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"


class WaitingServicer:
    """Answers ModelInfer once ``release`` is set; every other RPC like a live server."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.started.set()
        await self.release.wait()
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)

    def __getattr__(self, name: str) -> Any:
        async def live(request: Any, context: Any) -> Any:
            return pb.ServerLiveResponse(live=True)

        return live


def infer(channel: grpc.aio.Channel, message: Any) -> Any:
    call = channel.unary_unary(
        METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    return call(message, timeout=10)


def test_a_message_over_the_limit_is_resource_exhausted() -> None:
    async def scenario() -> None:
        servicer = WaitingServicer()
        servicer.release.set()
        server = GrpclibServer(servicer, max_request_bytes=1000)
        port = free_port()
        await server.start("127.0.0.1", port, reuse_port=False)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                small = pb.ModelInferRequest(model_name="m", id="ok")
                assert (await infer(channel, small)).id == "ok"
                big = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"x" * 5000])
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await infer(channel, big)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "limit of 1000 bytes" in (refused.value.details() or "")
                assert (await infer(channel, small)).id == "ok"  # the connection still serves
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        servicer = WaitingServicer()
        server = GrpclibServer(servicer, max_request_bytes=1 << 20)
        port = free_port()
        await server.start("127.0.0.1", port, reuse_port=False)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            in_flight = asyncio.ensure_future(
                infer(channel, pb.ModelInferRequest(model_name="m", id="in-flight"))
            )
            await asyncio.wait_for(servicer.started.wait(), 10)
            stopping = asyncio.ensure_future(server.stop(30))
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # same connection: refused
                await infer(channel, pb.ModelInferRequest(model_name="m", id="late"))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "draining" in (refused.value.details() or "")
            assert not stopping.done()  # waits for the call in flight
            servicer.release.set()
            assert (await in_flight).id == "in-flight"
            await asyncio.wait_for(stopping, 10)
        with pytest.raises(OSError):  # no longer listening
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(scenario())


def test_stop_cancels_what_outlives_the_grace() -> None:
    async def scenario() -> None:
        servicer = WaitingServicer()  # never released
        server = GrpclibServer(servicer, max_request_bytes=1 << 20)
        port = free_port()
        await server.start("127.0.0.1", port, reuse_port=False)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stuck = asyncio.ensure_future(
                infer(channel, pb.ModelInferRequest(model_name="m", id="stuck"))
            )
            await asyncio.wait_for(servicer.started.wait(), 10)
            await asyncio.wait_for(server.stop(0.2), 10)
            with pytest.raises(grpc.aio.AioRpcError) as stopped:
                await asyncio.wait_for(stuck, 5)  # answered at once, not at its deadline
            assert stopped.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())


def test_grpclib_is_the_pinned_version_with_the_private_parts_roost_uses() -> None:
    """serving/grpc_grpclib.py reaches into grpclib: ``Server._protocol_factory`` (to coalesce a
    connection's writes), ``Server._server`` (to stop listening while calls drain) and the
    server stream's ``_stream.recv_data`` (to refuse a message from its length prefix). They are
    not grpclib's API: pyproject.toml pins grpclib's exact version, and this fails when the
    installed one differs or those parts moved. Upgrading grpclib: check these against its
    source, run this file and tests/serving/test_grpc.py, then move the pin."""
    import inspect
    import re
    import tomllib
    from importlib import metadata
    from pathlib import Path

    import grpclib.protocol
    import grpclib.server

    project = tomllib.loads(
        (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    )["project"]
    pins = [d for d in project["dependencies"] if re.match(r"grpclib\b", d)]
    assert pins == [f"grpclib=={metadata.version('grpclib')}"], (
        f"pyproject.toml pins {pins}, grpclib {metadata.version('grpclib')} is installed: "
        "serving/grpc_grpclib.py uses grpclib's private parts, review them for this version"
    )
    assert callable(getattr(grpclib.server.Server, "_protocol_factory", None))
    assert "_server" in inspect.getsource(grpclib.server.Server.start)
    assert "self._stream = stream" in inspect.getsource(grpclib.server.Stream.__init__)
    assert "recv_data" in vars(grpclib.protocol.Stream)
    assert "self._transport.write(" in inspect.getsource(grpclib.protocol.Stream.send_headers)


def test_an_answer_leaves_in_one_write() -> None:
    """Headers, message and trailers of a unary answer reach the client together (one send;
    grpclib alone sends three): the first bytes the client reads hold the trailers."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    async def scenario() -> None:
        servicer = WaitingServicer()
        servicer.release.set()
        server = GrpclibServer(servicer, max_request_bytes=1 << 20)
        port = free_port()
        await server.start("127.0.0.1", port, reuse_port=False)
        try:
            await asyncio.to_thread(call_raw, port)
        finally:
            await server.stop(None)

    def call_raw(port: int) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(conn.data_to_send())
            while not any(  # the server's preface (SETTINGS) first
                isinstance(e, h2.events.RemoteSettingsChanged)
                for e in conn.receive_data(sock.recv(65536))
            ):
                pass
            sock.sendall(conn.data_to_send())
            body = pb.ModelInferRequest(model_name="m", id="one-write").SerializeToString()
            conn.send_headers(1, [
                (":method", "POST"), (":scheme", "http"), (":path", METHOD),
                (":authority", "localhost"), ("content-type", "application/grpc"),
                ("te", "trailers"),
            ])
            conn.send_data(1, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
            sock.sendall(conn.data_to_send())
            events: list[Any] = []
            while not any(isinstance(e, h2.events.ResponseReceived) for e in events):
                events = conn.receive_data(sock.recv(65536))  # acks and settings come first
            kinds = [type(e) for e in events]
            assert h2.events.DataReceived in kinds and h2.events.TrailersReceived in kinds, kinds
            trailers = dict(next(e for e in events if isinstance(e, h2.events.TrailersReceived))
                            .headers)
            assert trailers[b"grpc-status"] == b"0"

    asyncio.run(scenario())


def test_a_call_past_its_client_deadline_ends_deadline_exceeded() -> None:
    async def scenario() -> None:
        servicer = WaitingServicer()  # never released
        server = GrpclibServer(servicer, max_request_bytes=1 << 20)
        port = free_port()
        await server.start("127.0.0.1", port, reuse_port=False)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(
                    METHOD, request_serializer=pb.ModelInferRequest.SerializeToString,
                    response_deserializer=pb.ModelInferResponse.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as late:
                    await call(pb.ModelInferRequest(model_name="m"), timeout=0.3)
                assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert server.inflight == 0  # the handler was cancelled, not left running
        finally:
            await server.stop(None)

    asyncio.run(scenario())
