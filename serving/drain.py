"""Graceful shutdown on SIGTERM: :class:`Drain`."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
from types import FrameType
from typing import Any

import uvicorn

from registry import RoostSettings

log = logging.getLogger("roost.serving")


class Drain:
    """Graceful shutdown on SIGTERM, on top of uvicorn's own.

    Installed by :meth:`serving.gateway.Gateway.start` (main thread only), in front of the
    handler uvicorn installed. On SIGTERM: ``state.draining`` (the app's state, which the HTTP
    edge reads) turns true at once, so readiness answers 503 ``draining`` and new inference
    requests 503 (the route table of :mod:`serving.edge`); gRPC stops taking
    new calls (UNAVAILABLE) and gives in-flight ones the grace period. After
    ``settings.drain_delay_s`` it asks uvicorn to exit, with its graceful-shutdown timeout set to
    ``settings.drain_grace_s`` unless configured: uvicorn closes the listeners, waits for
    in-flight requests (each answered once its log record is durable), then runs the lifespan's
    shutdown, which seals the prediction log. Uvicorn is asked through ``should_exit`` rather
    than its signal handler, which would re-raise SIGTERM after the shutdown and turn a clean
    drain into exit status 143; the process exits 0.
    """

    def __init__(self, state: Any, settings: RoostSettings, grpc_server: Any) -> None:
        self.state = state
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
        if self.state.draining:
            return  # already draining; a second SIGTERM changes nothing
        self.state.draining = True
        self.loop.call_soon_threadsafe(self.begin)

    def begin(self) -> None:
        """Start draining (on the event loop)."""
        self.state.draining = True
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
