"""The gateway's FastAPI application factory; nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry import Registry, RoostError, RoostSettings
from serving.admin_api import admin
from serving.auth import AuthGate
from serving.batching import QueueFull
from serving.dataplane import SERVER_VERSION, DataPlane
from serving.fastpath import InferFastPath
from serving.feedback_api import feedback
from serving.grpc_server import STOP_GRACE_S, start_grpc_server
from serving.metrics import GatewayMetrics
from serving.repository import ModelRepository
from serving.repository_api import repository
from serving.rest import health, json_response, v1, v2
from warehouse import PredictionLogWriter

log = logging.getLogger("roost.serving")


class Drain:
    """Graceful shutdown on SIGTERM, on top of uvicorn's own.

    Installed from the lifespan (main thread only), in front of the handler uvicorn installed.
    On SIGTERM: ``app.state.draining`` turns true at once, so readiness answers 503
    ``draining`` and new inference requests 503 (see :mod:`serving.fastpath`); gRPC stops taking
    new calls (UNAVAILABLE) and gives in-flight ones the grace period. After
    ``settings.drain_delay_s`` it asks uvicorn to exit, with its graceful-shutdown timeout set to
    ``settings.drain_grace_s`` unless configured: uvicorn closes the listeners, waits for
    in-flight requests (each answered once its log record is durable), then runs the lifespan's
    shutdown, which seals the prediction log. Uvicorn is asked through ``should_exit`` rather
    than its signal handler, which would re-raise SIGTERM after the shutdown and turn a clean
    drain into exit status 143; the process exits 0.
    """

    def __init__(self, app: FastAPI, settings: RoostSettings, grpc_server: Any) -> None:
        self.app = app
        self.settings = settings
        self.grpc_server = grpc_server
        self.grpc_stopping: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()
        self.previous: Any = None
        self.installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # an embedded server (tests): whoever runs it stops it
        self.previous = signal.getsignal(signal.SIGTERM)
        if self.previous in (None, signal.SIG_IGN):
            return  # SIGTERM is ignored (or handled outside Python): leave it so
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.installed = True

    def uninstall(self) -> None:
        if self.installed and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self.previous)
        self.installed = False

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self.app.state.draining:
            return  # already draining; a second SIGTERM changes nothing
        self.app.state.draining = True
        self.loop.call_soon_threadsafe(self.begin)

    def begin(self) -> None:
        """Start draining (on the event loop)."""
        self.app.state.draining = True
        delay, grace = self.settings.drain_delay_s, self.settings.drain_grace_s
        log.warning(
            "SIGTERM: draining; not ready, new requests get 503; stopping in %.1fs, "
            "in-flight requests have %.1fs more",
            delay,
            grace,
        )
        if self.grpc_server is not None and self.grpc_stopping is None:
            self.grpc_stopping = self.loop.create_task(self.grpc_server.stop(delay + grace))
        self.loop.call_later(delay, self._stop_serving)

    def _stop_serving(self) -> None:
        previous = self.previous
        server = getattr(previous, "__self__", None)
        if isinstance(server, uvicorn.Server):
            config = server.config
            if config.timeout_graceful_shutdown is None:
                config.timeout_graceful_shutdown = max(1, math.ceil(self.settings.drain_grace_s))
            server.should_exit = True
        elif callable(previous):
            previous(signal.SIGTERM, None)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)


def create_app_from_env() -> FastAPI:
    """The gateway with settings from the environment (uvicorn's factory for worker processes)."""
    return create_app(RoostSettings())


def create_app(settings: RoostSettings, registry: Registry | None = None) -> FastAPI:
    """Build the gateway: routes, error mapping, and a lifespan that loads deployed versions."""
    owns_registry = registry is None
    reg = registry or Registry.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.draining = False
        metrics = GatewayMetrics()
        repository = ModelRepository(reg, settings, metrics)
        # Opens the write-ahead log (and recovers segments dead processes left) before any
        # request can be answered.
        writer = PredictionLogWriter.from_settings(settings)
        await asyncio.to_thread(writer.start)
        drain: Drain | None = None
        poller: asyncio.Task[None] | None = None
        grpc_server = None
        try:
            app.state.dataplane = DataPlane(
                repository,
                writer,
                metrics,
                shadow_queue=settings.shadow_queue_size,
                shadow_concurrency=settings.shadow_concurrency,
            )
            await repository.sync(force=True)
            # Everything loaded so far lives as long as the process: keep it out of the
            # collector's full passes, which otherwise stall the event loop for tens of ms.
            gc.collect()
            gc.freeze()
            if any(v.info.tags.get("feature_service") for v in repository.table.loaded.values()):
                # Feast takes seconds to import: pay it at start-up, not on the first request.
                from features.online import shared_online_features

                features = shared_online_features(settings.home)
                with contextlib.suppress(RoostError):  # an unavailable store answers 503 later
                    await asyncio.to_thread(lambda: features.store)
                app.state.dataplane.features = features
            poller = asyncio.create_task(repository.poll_forever())
            app.state.dataplane.mirror.start()
            grpc_server = await start_grpc_server(app.state.dataplane, settings)
            app.state.grpc_server = grpc_server
            drain = Drain(app, settings, grpc_server)
            drain.install()
            yield
        finally:
            # Uvicorn has stopped accepting and waited for in-flight HTTP requests by now.
            app.state.draining = True
            if drain is not None:
                drain.uninstall()
            if drain is not None and drain.grpc_stopping is not None:
                await drain.grpc_stopping
            elif grpc_server is not None:  # before the log writer closes: in-flight calls log
                await grpc_server.stop(STOP_GRACE_S)
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            plane = getattr(app.state, "dataplane", None)
            if plane is not None:
                await plane.mirror.stop()
            await repository.close()
            # Commits what is left, seals every WAL segment into Parquet, releases the WAL.
            await asyncio.to_thread(writer.close)
            if owns_registry:
                reg.close()

    app = FastAPI(
        title="Roost gateway",
        version=SERVER_VERSION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = reg
    app.add_middleware(InferFastPath, owner=app)
    # added last, so it runs first: nothing reaches a route (or the fast path) unauthorized
    app.add_middleware(AuthGate, registry=reg, settings=settings)
    app.include_router(health)
    app.include_router(v2)
    app.include_router(v1)
    app.include_router(repository)
    app.include_router(admin)
    app.include_router(feedback)

    @app.exception_handler(RoostError)
    async def roost_error(_request: Request, exc: RoostError) -> Response:
        response = json_response({"error": exc.message}, exc.status_code)
        if isinstance(exc, QueueFull):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        return json_response({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return json_response({"error": f"{where}: {first.get('msg', 'invalid')}"}, 400)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return json_response({"error": "internal server error"}, 500)

    return app
