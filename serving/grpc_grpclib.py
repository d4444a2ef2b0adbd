"""The OIP v2 gRPC service on ``grpclib`` (pure-asyncio HTTP/2), on the gateway's event loop.

``ROOST_GRPC_SERVER=grpclib`` serves the same :class:`~serving.grpc_server.InferenceServicer`
(every RPC, auth, request ids, early refusals, logging) that ``grpc.aio`` serves by default.
Why: ``grpc.aio`` runs its own poller thread, and every call crosses from it to the event loop
and back (about 15 context switches per call next to the data plane's own threads, against 4
here); with the data plane it costs the gateway more CPU per call than grpclib's in-loop
HTTP/2, and answers fewer calls at 64 in flight, more at 8 (its poller thread does the network
I/O in parallel), measured side by side in ``benchmarks/grpc_compare.py`` and
``benchmarks/grpc_cpu.py`` (docs/grpc.md, benchmarks/RESULTS.md).

The servicer is written against ``grpc.aio``'s context (``invocation_metadata()``,
``abort(code, details, trailing_metadata)``); :class:`StreamContext` gives it that over a grpclib
stream, so one servicer serves both. What grpclib does not do by itself is done here:

- a request message over ``max_request_bytes`` is refused RESOURCE_EXHAUSTED from its 5-byte
  length prefix, before its body is read (as grpc-core's ``max_receive_message_length``);
- ``stop(grace)`` drains like ``grpc.aio.Server.stop``: no new connections, new calls on open
  ones UNAVAILABLE, calls in flight get ``grace`` seconds; those still running then are answered
  UNAVAILABLE and cancelled;
- a connection's writes of one event-loop iteration leave in one ``send``
  (:class:`CoalescingTransport`): grpclib writes an answer's headers, message and trailers
  separately, three sends and three TCP segments for the client to wake up for.

Three of grpclib's private parts are used (``Server._protocol_factory``, ``Server._server``, the
server stream's ``_stream.recv_data``): pyproject.toml pins grpclib's exact version and
tests/serving/test_grpc_grpclib.py fails when the installed one differs or they moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn, cast

import grpc
from google.protobuf import message_factory
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from tritonclient.grpc import service_pb2 as pb

__all__ = ["GrpclibServer", "StreamContext"]

log = logging.getLogger("roost.serving")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class StreamContext:
    """The part of a ``grpc.aio`` servicer context the servicer uses, over a grpclib stream."""

    __slots__ = ("stream",)

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return list(self.stream.metadata.items())

    async def abort(
        self, code: grpc.StatusCode, details: str = "",
        trailing_metadata: Iterable[tuple[str, str]] = (),
    ) -> NoReturn:
        """Send the status (and trailing metadata) now and end the handler."""
        status = Status(code.value[0])
        metadata = dict(trailing_metadata)
        await self.stream.send_trailing_metadata(
            status=status, status_message=details, metadata=metadata or None
        )
        raise GRPCError(status, details)  # the trailers are sent: grpclib only ends the call


async def _recv_limited(stream: Any, request_type: Any, limit: int) -> Any:
    """The call's one request message; RESOURCE_EXHAUSTED from the length prefix when it is
    over ``limit`` bytes (before the body is read)."""
    raw = stream._stream  # grpclib's HTTP/2 stream (what grpclib's own recv_message reads)
    prefix = await raw.recv_data(5)
    if not prefix:
        raise GRPCError(Status.INVALID_ARGUMENT, "the call carried no request message")
    compressed, length = struct.unpack(">?I", prefix)
    if compressed:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed request messages are not supported")
    if length > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request message of {length} bytes is larger than the limit of {limit} bytes "
            "(ROOST_MAX_REQUEST_BYTES)",
        )
    try:
        return request_type.FromString(await raw.recv_data(length))
    except Exception as exc:  # DecodeError
        raise GRPCError(Status.INTERNAL, f"the request message does not parse: {exc}") from None


class CoalescingTransport:
    """A connection's transport whose writes within one event-loop iteration leave as one.

    grpclib writes each HTTP/2 step of an answer as it is made (headers, data, trailers: three
    ``send`` calls per unary answer, and as many TCP segments for the client to wake up for).
    Here they are joined and written once, by a callback that runs right after the current
    iteration's callbacks (so a burst of answers on one connection leaves in one write too).
    """

    __slots__ = ("transport", "loop", "pending", "scheduled")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.pending: list[bytes] = []
        self.scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pending.append(data)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pending = self.pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # pause_reading, abort, ...: the transport's
        return getattr(self.transport, name)


class _Server(Server):
    """grpclib's server, each connection's writes coalesced (:class:`CoalescingTransport`)."""

    def _protocol_factory(self) -> Any:  # grpclib's (private) per-connection protocol factory
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            made(cast(asyncio.Transport, CoalescingTransport(cast(asyncio.Transport, transport))))

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol


class GrpclibServer:
    """A servicer on grpclib, with ``grpc.aio.Server``'s ``stop(grace)``."""

    def __init__(self, servicer: Any, max_request_bytes: int) -> None:
        self.servicer = servicer
        self.limit = max_request_bytes
        self.inflight = 0
        self.streams: set[Any] = set()  # the calls in flight
        self.draining = False
        self._idle = asyncio.Event()
        self.server = _Server([self])

    def __mapping__(self) -> dict[str, Handler]:
        """Every RPC of the service, to the servicer's method of the same name."""
        mapping = {}
        for method in SERVICE.methods:
            request_type = message_factory.GetMessageClass(method.input_type)
            reply_type = message_factory.GetMessageClass(method.output_type)
            streaming = method.client_streaming or method.server_streaming
            cardinality = Cardinality.STREAM_STREAM if streaming else Cardinality.UNARY_UNARY
            mapping[f"/{SERVICE.full_name}/{method.name}"] = Handler(
                self._handler(getattr(self.servicer, method.name), request_type, streaming),
                cardinality, request_type, reply_type,
            )
        return mapping

    def _handler(
        self, rpc: Callable[[Any, Any], Awaitable[Any]], request_type: Any, streaming: bool
    ) -> Callable[[Any], Awaitable[None]]:
        async def handle(stream: Any) -> None:
            context = StreamContext(stream)
            if self.draining:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "the gateway is draining (shutting down)"
                )
            self.inflight += 1
            self.streams.add(stream)
            try:
                # streaming RPCs (ModelStreamInfer) only answer UNIMPLEMENTED: nothing to read
                request = None if streaming else await _recv_limited(
                    stream, request_type, self.limit
                )
                await stream.send_message(await rpc(request, context))
            finally:
                self.streams.discard(stream)
                self.inflight -= 1
                if not self.inflight:
                    self._idle.set()

        return handle

    async def start(self, host: str, port: int, reuse_port: bool) -> None:
        await self.server.start(host.strip("[]"), port, reuse_port=reuse_port or None)

    async def stop(self, grace: float | None) -> None:
        """Stop taking calls; give those in flight ``grace`` seconds, then cancel them."""
        self.draining = True
        listener = self.server._server  # stop accepting connections, keep the open ones
        if listener is not None:
            listener.close()
        if grace and self.inflight:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for stream in list(self.streams):  # past the grace: answered now, then cancelled
            with contextlib.suppress(Exception):
                await stream.send_trailing_metadata(
                    status=Status.UNAVAILABLE,
                    status_message="the gateway stopped before the call finished",
                )
        self.server.close()
        await self.server.wait_closed()
