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
