"""The gateway's ASGI application: FastAPI, with its inference route let past the stack.

Starlette runs every request through its middleware stack before a route sees it: FastAPI's
and Starlette's ``__call__``, ``ServerErrorMiddleware`` (which wraps ``send`` in a closure),
FastAPI's exception-telemetry and body-limit middlewares, then the HTTP edge
(:class:`serving.edge.Edge`), which answers the OIP v2 infer route itself. Each layer is a
coroutine frame and some of them wrap ``send``; together about 7 µs of the roughly 300 µs a
request costs at one connection (measured in-process, ``benchmarks/asgi_profile.py``), which a
gateway serving thousands of requests a second has no use for.

:class:`GatewayApp` hands a ``POST /v2/models/.../infer`` request straight to the edge. The
edge does for it everything the stack would have (draining, authentication, body limits,
content encoding, error rendering: its handler turns every exception into a JSON error, so
``ServerErrorMiddleware``'s plain-text 500 is not needed), and hands anything it does not
answer itself to the rest of the stack, as it does in the stack. Every other request, and the
lifespan, goes through the whole stack unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

__all__ = ["GatewayApp"]

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"


class GatewayApp(FastAPI):
    """FastAPI whose inference requests go straight to the HTTP edge (see the module)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._edge: Any = None  # the Edge of the middleware stack, once it is built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        edge = self._edge
        if edge is None:
            edge = self._edge = getattr(self.state, "edge", None)
        if edge is not None and scope["type"] == "http":
            path: str = scope["path"]
            if path.endswith(_SUFFIX) and path.startswith(_PREFIX):
                scope["app"] = self
                await edge(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
