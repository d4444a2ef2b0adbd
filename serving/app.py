"""The gateway's FastAPI application factory; nothing is built at import time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry import Registry, RoostError, RoostSettings
from serving.admin_api import admin
from serving.auth import AuthGate
from serving.batching import QueueFull
from serving.dataplane import SERVER_VERSION
from serving.drain import Drain
from serving.fastpath import InferFastPath
from serving.feedback_api import feedback
from serving.gateway import Gateway
from serving.repository_api import repository
from serving.rest import health, json_response, v1, v2

log = logging.getLogger("roost.serving")

__all__ = ["Drain", "Gateway", "create_app", "create_app_from_env"]


def create_app_from_env() -> FastAPI:
    """The gateway with settings from the environment (uvicorn's factory for worker processes)."""
    return create_app(RoostSettings())


def create_app(settings: RoostSettings, gateway: Gateway | Registry | None = None) -> FastAPI:
    """Build the gateway app: routes, error mapping, and a lifespan that starts ``gateway``.

    ``gateway`` defaults to ``Gateway(settings)`` (its scope, registry and log from the
    settings); a :class:`Registry` alone is shorthand for ``Gateway(settings, registry=...)``.
    """
    parts = gateway if isinstance(gateway, Gateway) else Gateway(settings, registry=gateway)
    settings = parts.settings
    reg = parts.registry

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await parts.start()
        try:
            yield
        finally:
            await parts.stop()

    app = FastAPI(
        title="Roost gateway",
        version=SERVER_VERSION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = reg
    parts.bind(app)
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
