"""The gateway's FastAPI application factory; nothing is built at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry import Registry, RoostError, RoostSettings
from serving.batching import QueueFull
from serving.dataplane import SERVER_VERSION, DataPlane
from serving.fastpath import InferFastPath
from serving.grpc_server import STOP_GRACE_S, start_grpc_server
from serving.metrics import GatewayMetrics
from serving.repository import ModelRepository
from serving.repository_api import repository
from serving.rest import health, json_response, v1, v2
from warehouse import PredictionLogWriter

log = logging.getLogger("roost.serving")


def create_app_from_env() -> FastAPI:
    """The gateway with settings from the environment (uvicorn's factory for worker processes)."""
    return create_app(RoostSettings())


def create_app(settings: RoostSettings, registry: Registry | None = None) -> FastAPI:
    """Build the gateway: routes, error mapping, and a lifespan that loads deployed versions."""
    owns_registry = registry is None
    reg = registry or Registry.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        repository = ModelRepository(reg, settings, metrics)
        writer = PredictionLogWriter.from_settings(settings)
        writer.start()
        app.state.dataplane = DataPlane(repository, writer, metrics)
        await repository.sync(force=True)
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # full passes, which otherwise stall the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        poller = asyncio.create_task(repository.poll_forever())
        grpc_server = None
        try:
            grpc_server = await start_grpc_server(app.state.dataplane, settings)
            app.state.grpc_server = grpc_server
            yield
        finally:
            if grpc_server is not None:  # before the log writer closes: in-flight calls log
                await grpc_server.stop(STOP_GRACE_S)
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await repository.close()
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
    app.include_router(health)
    app.include_router(v2)
    app.include_router(v1)
    app.include_router(repository)

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
