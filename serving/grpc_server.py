"""gRPC transport: the Open Inference Protocol v2 service ``inference.GRPCInferenceService``.

The messages and the service stubs are the ones NVIDIA ships inside ``tritonclient`` (generated
from Triton's ``grpc_service.proto``), so ``tritonclient.grpc`` talks to Roost unchanged. The
servicer is written against ``grpc.aio``'s servicer context; it is served on the gateway's event
loop by a ``grpc.aio`` server (``ROOST_GRPC_SERVER=grpcio``, the default) or by grpclib
(``grpclib``: :mod:`serving.grpc_grpclib`), or from processes of its own
(:mod:`serving.grpc_processes`), started and stopped by the gateway; every RPC goes through the same
:class:`~serving.dataplane.DataPlane` as REST. ``ModelInfer`` encodes its answer before it waits
for the answer's log record to be durable, as REST does.

Tensor data arrives either typed (``InferInputTensor.contents``) or raw
(``ModelInferRequest.raw_input_contents``: little-endian bytes; BYTES elements each prefixed by
their 4-byte little-endian length; FP16 only this way). Responses always carry
``raw_output_contents``, which is what ``tritonclient.grpc``'s ``InferResult.as_numpy`` reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from registry import RoostError, RoostSettings
from registry.errors import InvalidRequest, NotFound, ServiceUnavailable
from serving.auth import ANONYMOUS, KeyChecker, Principal
from serving.dataplane import CallContext, DataPlane, Rejected
from serving.protocol.grpc_codec import decode_model_infer_request, encode_model_infer_response
from serving.protocol.render import MAX_PREVIEW_TENSORS
from serving.protocol.types import DEFAULT_LIMITS, DecodeLimits
from serving.shedding import Admission, reason_of

if TYPE_CHECKING:
    from serving.grpc_grpclib import GrpclibServer
    from serving.grpc_processes import GrpcProcesses

__all__ = ["GrpcBindError", "InferenceServicer", "grpc_address", "start_grpc_server"]

log = logging.getLogger("roost.serving")

PROTOCOL = "v2-grpc"
USER_METADATA = "roost-user"
REQUEST_ID_METADATA = "x-request-id"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
STOP_GRACE_S = 5.0


class GrpcBindError(RuntimeError):
    """The gRPC server could not listen on its address."""


# --------------------------------------------------------------------------------------------
# the service


def _metadata(context: Any) -> dict[str, str]:
    """The call's text metadata, with lower-case keys."""
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            metadata[key.lower()] = value
    return metadata


def _presented_key(metadata: dict[str, str]) -> str | None:
    """The key in ``x-api-key`` or ``authorization: Bearer`` metadata, if any."""
    key = metadata.get("x-api-key")
    if key is not None:
        return key.strip()
    bearer = metadata.get("authorization")
    if bearer is not None and bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return None


def _rejected(message: Any) -> Rejected:
    """A request that did not decode, for the log: its tensor headers and its size."""
    tensors = tuple(
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        for t in message.inputs[:MAX_PREVIEW_TENSORS]
    )
    return Rejected(message.ByteSize(), tensors, message.id or None)


async def _abort(context: Any, exc: Exception, rpc: str) -> NoReturn:
    """End the RPC with the status ``exc`` maps to (``RoostError.to_grpc``; never a traceback);
    ``retry-after`` goes as trailing metadata, as the HTTP header does."""
    if isinstance(exc, RoostError):
        code = getattr(grpc.StatusCode, exc.to_grpc(), grpc.StatusCode.INTERNAL)
        retry = exc.to_http()[1].get("Retry-After")
        trailing = (("retry-after", retry),) if retry is not None else ()
        await context.abort(code, exc.message, trailing_metadata=trailing)
    else:
        log.exception("unhandled error in gRPC %s", rpc)
        await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
    raise AssertionError("context.abort returned")  # pragma: no cover


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The OIP v2 RPCs over a :class:`DataPlane`; Triton-only RPCs stay UNIMPLEMENTED."""

    def __init__(self, plane: DataPlane, sync_alone: bool = False) -> None:
        self.plane = plane
        self.sync_alone = sync_alone
        """The only call in flight fdatasyncs its log record on the event loop
        (:attr:`CallContext.alone`). On for grpclib; off for ``grpc.aio``, which hands calls to
        the loop one by one and then measured slower with it (a blocked loop delays the next)."""
        settings = getattr(plane.repository, "settings", None)
        self.keys = (
            None
            if settings is None
            else KeyChecker(plane.repository.registry, settings)
        )
        self.limits = DEFAULT_LIMITS if settings is None else DecodeLimits.from_settings(settings)
        """The decoder's limits (the gateway's ``max_tensor_elements``, ``max_json_depth``)."""
        self.admission = Admission(0)
        """Early refusals: a request its version would refuse (queue full, breaker open, every
        instance set aside, unloading) is answered UNAVAILABLE before its tensors are decoded,
        unlogged (:mod:`serving.shedding`; ``max_inflight_requests`` is the HTTP edge's)."""

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        ok, _reasons = self.plane.repository.readiness()
        return pb.ServerReadyResponse(ready=ok)

    async def _authorize(
        self, context: Any, role: str, model: str | None,
        metadata: dict[str, str] | None = None,
    ) -> Principal:
        """The caller, when its ``x-api-key`` (or ``authorization: Bearer``) metadata names a key
        with ``role`` for ``model`` (:meth:`KeyChecker.authorize`, as HTTP); aborts the RPC with
        the error's status otherwise (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED).
        ``metadata``: the call's, when the caller has it already."""
        if self.keys is None:
            return ANONYMOUS
        if metadata is None:
            metadata = _metadata(context)
        try:
            return await self.keys.authorize(
                _presented_key(metadata), role, model, how="x-api-key metadata"
            )
        except RoostError as exc:
            await _abort(context, exc, "authorization")

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorize(context, "read", None)
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorize(context, "read", request.name)
        try:
            self.plane.model_ready(request.name, request.version or None)
        except (NotFound, ServiceUnavailable):
            return pb.ModelReadyResponse(ready=False)
        except Exception as exc:
            await _abort(context, exc, "ModelReady")
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._authorize(context, "read", request.name)
        try:
            meta = self.plane.model_metadata(request.name, request.version or None)
        except Exception as exc:
            await _abort(context, exc, "ModelMetadata")
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for spec in meta["inputs"]:
            response.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for spec in meta["outputs"]:
            response.outputs.add(
                name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
            )
        return response

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        arrived = time.monotonic()
        metadata = _metadata(context)
        principal = await self._authorize(context, "predict", request.model_name, metadata)
        model, version = request.model_name, request.model_version or None
        admission = self.admission
        refused = admission.refusal(self.plane.repository, model, version)
        if refused is not None:  # before the tensors are decoded, as the HTTP edge does
            self._count_refusal(model, refused, arrived)
            await _abort(context, refused[0], "ModelInfer")
        admission.inflight += 1
        try:
            return await self._infer(
                request, metadata, principal, arrived,
                alone=self.sync_alone and admission.inflight == 1,
            )
        except Exception as exc:
            await _abort(context, exc, "ModelInfer")
        finally:
            admission.inflight -= 1

    def _count_refusal(
        self, model: str, refused: tuple[ServiceUnavailable, Any], arrived: float
    ) -> None:
        """``roost_rejected_requests_total`` and ``roost_requests_total`` (503), unlogged."""
        metrics = self.plane.metrics
        if metrics is None:
            return
        error, loaded = refused
        version = str(loaded.info.version) if loaded is not None else ""
        metrics.rejected.labels(model, version, reason_of(error)).inc()
        metrics.record_request(model, version, PROTOCOL, 503, time.monotonic() - arrived)

    async def _infer(
        self, message: Any, metadata: dict[str, str], principal: Principal, arrived: float,
        alone: bool,
    ) -> Any:
        """Decode with the gateway's limits (a request that does not decode is logged against
        the version that would have answered: :meth:`DataPlane.reject`), infer, encode the
        answer, and only then wait for its log record to be durable (as REST does: the sync
        overlaps the encoding; ``alone``, the only call in flight here: fdatasynced on this
        loop, :attr:`CallContext.alone`). A record the log cannot store: UNAVAILABLE."""
        durable: list[asyncio.Future[None]] = []
        call = CallContext(
            protocol=PROTOCOL,
            user_id=metadata.get(USER_METADATA),
            request_id=metadata.get(REQUEST_ID_METADATA),
            headers=metadata,
            principal=principal,
            arrived=arrived,
            durable=durable,
            alone=alone,
        )
        model, version = message.model_name, message.model_version or None
        try:
            decoded = decode_model_infer_request(message, self.limits)
        except InvalidRequest as exc:
            await self.plane.reject(model, version, call, exc, _rejected(message))
        result = await self.plane.infer(model, version, decoded, call)
        response = encode_model_infer_response(
            result.model, result.version, result.request_id, result.outputs,
            result.response_parameters(),
        )
        if durable:
            if alone and not durable[-1].done():
                self.plane.log_writer.sync_here()
            for waiter in durable:
                await waiter  # LogUnavailable: UNAVAILABLE, the answer never leaves
        return response


def _unimplemented(rpc: str) -> Any:
    async def handler(self: InferenceServicer, request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{rpc} is not supported by the Roost gateway"
        )

    handler.__name__ = handler.__qualname__ = rpc
    return handler


# The base servicer answers UNIMPLEMENTED too, but from a worker thread and with an ERROR
# traceback in the log for every call: answer the Triton-only RPCs quietly instead.
for _rpc in [
    name
    for name in vars(pb_grpc.GRPCInferenceServiceServicer)
    if name[:1].isupper() and name not in vars(InferenceServicer)
]:
    setattr(InferenceServicer, _rpc, _unimplemented(_rpc))


# --------------------------------------------------------------------------------------------
# lifecycle


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def start_grpc_server(
    plane: DataPlane, settings: RoostSettings, *, reuse_port: bool = False
) -> grpc.aio.Server | GrpcProcesses | GrpclibServer | None:
    """Start the OIP v2 gRPC service on ``settings.grpc_port``; None when the port is 0.

    On this event loop with ``grpc.aio`` (``settings.grpc_server`` ``grpcio``, the default) or
    grpclib (``grpclib``: :mod:`serving.grpc_grpclib`); or in
    ``settings.grpc_processes`` processes of its own (:mod:`serving.grpc_processes`). Each
    answers ``await server.stop(grace)``.
    ``reuse_port``: share the port (SO_REUSEPORT) even with one worker (a gRPC process does).
    """
    if settings.grpc_port == 0:
        return None
    if settings.grpc_processes > 0:
        from serving.grpc_processes import GrpcProcesses

        processes = GrpcProcesses(settings)
        await processes.start()
        return processes
    address = grpc_address(settings.host, settings.grpc_port)
    if settings.grpc_server == "grpclib":
        try:
            from serving.grpc_grpclib import GrpclibServer
        except ImportError as exc:
            raise GrpcBindError(
                f"ROOST_GRPC_SERVER=grpclib needs the grpclib package ({exc}): "
                "pip install 'grpclib==0.4.9' (a serving dependency), or ROOST_GRPC_SERVER=grpcio"
            ) from None
        lib = GrpclibServer(InferenceServicer(plane, sync_alone=True), settings.max_request_bytes)
        try:
            await lib.start(settings.host, settings.grpc_port, reuse_port or settings.workers > 1)
        except OSError as exc:
            raise GrpcBindError(
                f"the gRPC server cannot listen on {address}: is the port in use? "
                f"({exc.strerror}; set ROOST_GRPC_PORT to another port, or to 0 to disable gRPC)"
            ) from None
        log.info("gRPC (Open Inference Protocol v2, grpclib) listening on %s", address)
        return lib
    server = grpc.aio.server(
        options=[
            # A bigger request gets RESOURCE_EXHAUSTED from gRPC itself, before it is decoded.
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Without this a second server could silently share a port that is in use.
            # Several `roost serve --workers` processes share the port; one gateway alone
            # must fail to bind a busy port rather than quietly share it.
            ("grpc.so_reuseport", 1 if reuse_port or settings.workers > 1 else 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        await server.stop(None)
        raise GrpcBindError(
            f"the gRPC server cannot listen on {address}: is the port in use? "
            "(set ROOST_GRPC_PORT to another port, or to 0 to disable gRPC)"
        )
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) listening on %s", address)
    return server
