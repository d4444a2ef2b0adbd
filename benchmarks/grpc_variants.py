"""Alternative gRPC servers over Roost's data plane, for ``grpc_compare.py`` (not shipped).

    ROOST_HOME=... .venv/bin/python benchmarks/grpc_variants.py --variant threaded --port 8001

Each variant starts a :class:`~serving.gateway.Gateway` (registry, repository, log writer,
data plane; its own gRPC off) on an asyncio loop and then serves ``ModelInfer`` and
``ServerReady`` its own way:

- ``threaded``: grpcio's synchronous server (``grpc.server(ThreadPoolExecutor)``); each call is
  decoded on a pool thread and handed to the data plane on the loop
  (``run_coroutine_threadsafe``), its answer encoded back on the thread;
- ``grpclib``: Roost's servicer on :class:`~serving.grpc_grpclib.GrpclibServer` (grpclib, pure
  asyncio, h2, each connection's writes coalesced) on the gateway's loop, as ``roost serve``
  runs it with ``ROOST_GRPC_SERVER=grpclib``; ``grpclib-plain``: ``grpclib.server.Server`` as
  it comes, with the same ``tritonclient`` messages;
- ``aio``: Roost's own ``grpc.aio`` servicer, on a loop with no HTTP edge; ``--processes N``
  starts N such processes sharing the port (SO_REUSEPORT), each with its own data plane.

``--null``: the same servers answering every ``ModelInfer`` with a fixed response after
decoding the request, without the data plane: what the transport alone costs per call.

SIGINT/SIGTERM stop the server, then the gateway (which seals the prediction log).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402

from registry import RoostError, RoostSettings  # noqa: E402
from serving.dataplane import CallContext, DataPlane  # noqa: E402
from serving.gateway import Gateway  # noqa: E402
from serving.grpc_server import InferenceServicer  # noqa: E402
from serving.protocol.grpc_codec import (  # noqa: E402
    decode_model_infer_request,
    encode_model_infer_response,
)

SERVICE = "inference.GRPCInferenceService"


def _context(metadata: dict[str, str]) -> CallContext:
    return CallContext(
        protocol="v2-grpc", user_id=metadata.get("roost-user"),
        request_id=metadata.get("x-request-id"), headers=metadata,
    )


NULL: list[Any] = []  # --null: the fixed answer


async def _infer(plane: DataPlane, message: Any, call: CallContext) -> Any:
    if NULL:
        decode_model_infer_request(message, plane.limits)
        return NULL[0]
    decoded = decode_model_infer_request(message, plane.limits)
    result = await plane.infer(message.model_name, message.model_version or None, decoded, call)
    return encode_model_infer_response(
        result.model, result.version, result.request_id, result.outputs,
        result.response_parameters(),
    )


# -- threaded -----------------------------------------------------------------------------


def serve_threaded(plane: DataPlane, loop: asyncio.AbstractEventLoop, port: int,
                   threads: int) -> grpc.Server:
    def model_infer(request: Any, context: grpc.ServicerContext) -> Any:
        metadata = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        decoded = decode_model_infer_request(request, plane.limits)
        if NULL:
            return NULL[0]
        future = asyncio.run_coroutine_threadsafe(
            plane.infer(request.model_name, request.model_version or None, decoded,
                        _context(metadata)),
            loop,
        )
        try:
            result = future.result()
        except RoostError as exc:
            context.abort(getattr(grpc.StatusCode, exc.to_grpc()), exc.message)
        return encode_model_infer_response(
            result.model, result.version, result.request_id, result.outputs,
            result.response_parameters(),
        )

    def server_ready(request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=True)

    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            model_infer, pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
        ),
        "ServerReady": grpc.unary_unary_rpc_method_handler(
            server_ready, pb.ServerReadyRequest.FromString,
            pb.ServerReadyResponse.SerializeToString,
        ),
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


# -- grpclib ------------------------------------------------------------------------------


def grpclib_service(plane: DataPlane) -> Any:
    from grpclib.const import Cardinality, Handler

    class Service:
        async def model_infer(self, stream: Any) -> None:
            request = await stream.recv_message()
            metadata = {k: v for k, v in stream.metadata.items() if isinstance(v, str)}
            await stream.send_message(await _infer(plane, request, _context(metadata)))

        async def server_ready(self, stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(pb.ServerReadyResponse(ready=True))

        def __mapping__(self) -> dict[str, Any]:
            return {
                f"/{SERVICE}/ModelInfer": Handler(
                    self.model_infer, Cardinality.UNARY_UNARY,
                    pb.ModelInferRequest, pb.ModelInferResponse,
                ),
                f"/{SERVICE}/ServerReady": Handler(
                    self.server_ready, Cardinality.UNARY_UNARY,
                    pb.ServerReadyRequest, pb.ServerReadyResponse,
                ),
            }

    return Service()


def _servicer(plane: DataPlane, null: bool, sync_alone: bool = False) -> InferenceServicer:
    """Roost's servicer; ``null``: its ModelInfer decodes and answers the fixed response."""
    servicer = InferenceServicer(plane, sync_alone)
    if null:
        async def model_infer(request: Any, context: Any) -> Any:
            return await _infer(plane, request, _context({}))

        setattr(servicer, "ModelInfer", model_infer)  # noqa: B010
    return servicer


# -- the process ---------------------------------------------------------------------------


async def main_async(variant: str, port: int, threads: int, reuse: bool, null: bool) -> None:
    settings = RoostSettings(grpc_port=0)
    gateway = Gateway(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    plane = gateway.plane
    if null:
        probe = pb.ModelInferResponse(model_name="breast-cancer", model_version="1", id="x")
        probe.outputs.add(name="label", datatype="INT64", shape=[1])
        probe.raw_output_contents.append(b"\0" * 8)
        probe.outputs.add(name="probabilities", datatype="FP32", shape=[1, 2])
        probe.raw_output_contents.append(b"\0" * 8)
        NULL.append(probe)
    try:
        if variant == "threaded":
            sync_server = serve_threaded(plane, loop, port, threads)
            await stop.wait()
            await asyncio.to_thread(lambda: sync_server.stop(5).wait())
        elif variant == "grpclib-plain":
            from grpclib.server import Server

            lib_server = Server([grpclib_service(plane)])
            await lib_server.start("127.0.0.1", port, reuse_port=reuse)
            await stop.wait()
            lib_server.close()
            await lib_server.wait_closed()
        elif variant == "grpclib":
            from serving.grpc_grpclib import GrpclibServer

            lib = GrpclibServer(_servicer(plane, null, True), settings.max_request_bytes)
            await lib.start("127.0.0.1", port, reuse)
            await stop.wait()
            await lib.stop(5)
        else:
            aio_server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse else 0)])
            from tritonclient.grpc import service_pb2_grpc as pb_grpc

            pb_grpc.add_GRPCInferenceServiceServicer_to_server(_servicer(plane, null), aio_server)
            aio_server.add_insecure_port(f"127.0.0.1:{port}")
            await aio_server.start()
            await stop.wait()
            await aio_server.stop(5)
    finally:
        await gateway.stop()


def run(variant: str, port: int, threads: int, reuse: bool, null: bool = False,
        loop: str = "uvloop") -> None:
    factory: Any = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main_async(variant, port, threads, reuse, null))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=["threaded", "grpclib", "grpclib-plain", "aio"],
                        required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16, help="threaded: pool size")
    parser.add_argument("--processes", type=int, default=1, help="aio/grpclib: processes")
    parser.add_argument("--null", action="store_true", help="a fixed answer, no data plane")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--switch-interval-ms", type=float, help="sys.setswitchinterval")
    args = parser.parse_args(argv)
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    reuse = args.processes > 1
    if args.processes == 1:
        run(args.variant, args.port, args.threads, reuse, args.null, args.loop)
        return 0
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(
            target=run,
            args=(args.variant, args.port, args.threads, True, args.null, args.loop),
        )
        for _ in range(args.processes)
    ]
    for child in children:
        child.start()

    def forward(sig: int, _frame: Any) -> None:
        for child in children:
            if child.pid is not None:
                os.kill(child.pid, sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for child in children:
        child.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
