"""The gateway's FastAPI application factory; nothing is built at import time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from registry import Registry, RoostSettings
from serving.admin_api import admin
from serving.asgi import GatewayApp
from serving.consent_api import consent
from serving.dataplane import SERVER_VERSION
from serving.drain import Drain
from serving.edge import install as install_edge
from serving.explain_api import explanations
from serving.feedback_api import feedback
from serving.gateway import Gateway
from serving.governance import install as install_governance
from serving.llm.api import openai_api
from serving.repository_api import repository
from serving.rest import health, v1, v2

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
        governance = install_governance(parts.dataplane, settings, reg)  # residency, consent
        try:
            yield
        finally:
            if governance.consent is not None:
                await governance.consent.stop()
            await parts.stop()

    app = GatewayApp(
        title="Roost gateway",
        version=SERVER_VERSION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # FastAPI's native OpenTelemetry hooks ask the OTel providers on every request (~3 us);
        # Roost's own metrics are Prometheus (serving/metrics.py).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.registry = reg
    parts.bind(app)
    # the HTTP edge (draining, auth, body limits, the infer hot path) and error rendering
    install_edge(app, reg, settings)
    app.include_router(health)
    app.include_router(v2)
    app.include_router(v1)
    app.include_router(repository)
    app.include_router(admin)
    app.include_router(feedback)
    app.include_router(consent)
    app.include_router(explanations)
    app.include_router(openai_api)  # text generation: OpenAI API, OIP generate (serving/llm/)

    return app
