"""A gateway built from parts: :class:`Gateway` owns what serving needs and starts/stops it.

Parts: the registry handle (given, or opened from the settings and then closed by the gateway),
the deployment scope (:mod:`serving.scope`: production by default, or staging), the metrics, the
prediction-log writer (given, or made from the settings; either way the gateway starts it and
closes it, which seals the log), and, made at each start, the model repository, the data plane,
the registry poller, the gRPC server and the SIGTERM drain. :func:`serving.app.create_app` takes a
gateway (or builds one from the settings) and its lifespan only calls :meth:`Gateway.start` and
:meth:`Gateway.stop`, so a second gateway (a staging one, or a test's) is assembled the same way::

    gateway = Gateway(settings, registry=registry, scope=DeploymentScope.staging())
    app = create_app(settings, gateway)

The gateway's ``state`` is the app's ``app.state`` once bound (:meth:`bind`): ``dataplane``,
``draining`` and ``grpc_server`` live there, where the HTTP edge (:mod:`serving.edge`) reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from typing import Any

from starlette.datastructures import State

from registry import Registry, RoostError, RoostSettings
from serving.autoscaler import start_instance_autoscaler, stop_instance_autoscaler
from serving.dataplane import DataPlane
from serving.drain import Drain
from serving.grpc_server import STOP_GRACE_S, start_grpc_server
from serving.metrics import GatewayMetrics
from serving.poller import RegistryPoller
from serving.repository import ModelRepository
from serving.scope import DeploymentScope
from warehouse import PredictionLogWriter

log = logging.getLogger("roost.serving")

GIL_SWITCH_INTERVAL_S = 0.00025
"""A short ``gil_switch_interval_ms`` (``ROOST_GIL_SWITCH_INTERVAL_MS``; off by default: it cost
throughput, RESULTS S4.1): ``sys.setswitchinterval`` while a gateway serves (CPython's default
is 5 ms): how long the
event loop waits for the GIL while a background thread runs Python (a WAL seal decoding rows,
a registry poll or consent refresh in SQLAlchemy) before that thread must let go. At 5 ms a
request arriving during a seal could wait 5 ms each time the loop took the GIL back
(docs/latency.md)."""
_interval_holders: list[Gateway] = []  # serving gateways; the last one out restores it
_saved_interval: list[float] = []


class Gateway:
    """Registry, repository, log writer, metrics, data plane, gRPC, poller and drain."""

    def __init__(
        self,
        settings: RoostSettings,
        *,
        registry: Registry | None = None,
        log_writer: PredictionLogWriter | None = None,
        metrics: GatewayMetrics | None = None,
        scope: DeploymentScope | None = None,
    ) -> None:
        if scope is not None:
            # The settings describe this gateway: its scope decides where its log lives.
            models = sorted(scope.models) if scope.models is not None else []
            settings = settings.model_copy(
                update={"scope": scope.kind.value, "serve_models": models}
            )
        self.settings = settings
        self.scope = scope if scope is not None else DeploymentScope.from_settings(settings)
        self.owns_registry = registry is None
        self.registry = registry if registry is not None else Registry.from_settings(settings)
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self._given_writer = log_writer
        self.state: Any = State()
        self.state.draining = False
        self.repository: ModelRepository | None = None
        self.log_writer: PredictionLogWriter | None = None
        self.dataplane: DataPlane | None = None
        self.poller: RegistryPoller | None = None
        self.grpc_server: Any = None
        self.drain: Drain | None = None
        self.autoscaler: asyncio.Task[None] | None = None  # ROOST_AUTOSCALE_INSTANCES=true

    def bind(self, app: Any) -> None:
        """Keep the serving state on ``app.state`` (where the HTTP edge and handlers find it)."""
        app.state.draining = self.state.draining
        app.state.gateway = self
        self.state = app.state

    @property
    def plane(self) -> DataPlane:
        """The data plane (between :meth:`start` and :meth:`stop`)."""
        if self.dataplane is None:
            raise RuntimeError("the gateway is not started")
        return self.dataplane

    @property
    def draining(self) -> bool:
        return bool(self.state.draining)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the log, load the scope's versions, then start polling, mirroring and gRPC.

        Nothing answers before the write-ahead log is open (and segments dead processes left
        are recovered). On failure whatever was started is stopped again.
        """
        settings = self.settings
        self.state.draining = False
        repository = ModelRepository(self.registry, settings, self.metrics, self.scope)
        self.repository = repository
        writer = self._given_writer or PredictionLogWriter.from_settings(settings)
        await asyncio.to_thread(writer.start)
        self.log_writer = writer
        try:
            plane = DataPlane(
                repository,
                writer,
                self.metrics,
                shadow_queue=settings.shadow_queue_size,
                shadow_concurrency=settings.shadow_concurrency,
            )
            self.dataplane = self.state.dataplane = plane
            await repository.sync(force=True)
            # Everything loaded so far lives as long as the process: keep it out of the
            # collector's full passes, which otherwise stall the event loop for tens of ms.
            gc.collect()
            gc.freeze()
            _shorten_switch_interval(self)
            await self._open_feature_store(repository, plane)
            self.poller = RegistryPoller(repository)
            self.poller.start()
            plane.mirror.start()
            self.grpc_server = self.state.grpc_server = await start_grpc_server(plane, settings)
            self.drain = Drain(self.state, settings, self.grpc_server)
            self.drain.install()
            self.autoscaler = start_instance_autoscaler(self)
        except BaseException:
            await self.stop()
            raise
        log.info("gateway serving the %s", self.scope.describe())

    async def _open_feature_store(self, repository: ModelRepository, plane: DataPlane) -> None:
        if not any(v.info.tags.get("feature_service") for v in repository.table.loaded.values()):
            return
        # Feast takes seconds to import: pay it at start-up, not on the first request.
        from features.online import shared_online_features

        features = shared_online_features(self.settings.home)
        with contextlib.suppress(RoostError):  # an unavailable store answers 503 later
            await asyncio.to_thread(lambda: features.store)
        plane.features = features  # the data plane's enrich step

    async def stop(self) -> None:
        """Drain and stop, in order: gRPC before the log closes, then the poller, the mirror,
        the versions, the log writer (sealing every WAL segment) and an owned registry."""
        # Uvicorn has stopped accepting and waited for in-flight HTTP requests by now.
        self.state.draining = True
        await stop_instance_autoscaler(self.autoscaler)
        drain, self.drain = self.drain, None
        if drain is not None:
            drain.uninstall()
        grpc_server, self.grpc_server = self.grpc_server, None
        if drain is not None and drain.grpc_stopping is not None:
            await drain.grpc_stopping
        elif grpc_server is not None:  # before the log writer closes: in-flight calls log
            await grpc_server.stop(STOP_GRACE_S)
        poller, self.poller = self.poller, None
        if poller is not None:
            await poller.stop()
        plane = self.dataplane
        if plane is not None:
            await plane.mirror.stop()
        repository, self.repository = self.repository, None
        if repository is not None:
            await repository.close()
        writer, self.log_writer = self.log_writer, None
        if writer is not None:
            # Commits what is left, seals every WAL segment into Parquet, releases the WAL.
            await asyncio.to_thread(writer.close)
        if self.owns_registry:
            self.registry.close()
        # What start() froze stays out of the collector for ever otherwise: at interpreter exit
        # extension types still referenced from the permanent generation are reported as leaks
        # ("nanobind: leaked ... instances" from onnx), and an embedded gateway's models stay
        # alive after it stopped.
        gc.unfreeze()
        _restore_switch_interval(self)


def _shorten_switch_interval(gateway: Gateway) -> None:
    if gateway in _interval_holders:
        return
    wanted = float(getattr(gateway.settings, "gil_switch_interval_ms", 0.0)) / 1000.0
    if not wanted:
        return
    if not _interval_holders:
        _saved_interval[:] = [sys.getswitchinterval()]
        sys.setswitchinterval(min(_saved_interval[0], wanted))
    _interval_holders.append(gateway)


def _restore_switch_interval(gateway: Gateway) -> None:
    if gateway not in _interval_holders:
        return
    _interval_holders.remove(gateway)
    if not _interval_holders and _saved_interval:
        sys.setswitchinterval(_saved_interval.pop())
