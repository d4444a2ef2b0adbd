"""Prometheus metrics of the gateway, served on ``/metrics``.

Each app gets its own :class:`CollectorRegistry` (several gateways can live in one test process).
With ``roost serve --workers N`` (and ``ROOST_GRPC_PROCESSES``) every process keeps its own
in-memory registry and ``/metrics`` merges every process's figures (:mod:`serving.metrics_share`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from serving.breaker import BreakerState
from serving.llm.metrics import LLMMetrics
from serving.metrics_share import MetricsShare, Snapshot, gauge_modes, snapshot

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


MULTIPROC_ENV = "ROOST_METRICS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory worker processes share metrics through (set by ``roost serve --workers``).

    Roost's own variable, not ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess
    mode, not used: see :mod:`serving.metrics_share`).
    """
    return os.environ.get(MULTIPROC_ENV) or None


class GatewayMetrics:
    """Every figure the gateway exports; the canary sensor and autoscaler read the same ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["model", "version"]
        reg = self.registry
        # ``variant``: the router's answer (production, canary, an experiment's variant name,
        # a segment id, v<N> when pinned); appended last so older label order still holds.
        self.requests = Counter(
            "roost_requests",
            "Inference requests by outcome.",
            [*labels, "protocol", "status", "variant"],
            registry=reg,
        )
        self.latency = Histogram(
            "roost_request_latency_seconds",
            "End-to-end latency inside the gateway.",
            [*labels, "variant"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            "roost_queue_wait_seconds",
            "Time the oldest request of a batch waited in the queue.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.inference = Histogram(
            "roost_inference_seconds",
            "Model execution time per batch.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "roost_batch_size",
            "Rows per model call.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "roost_queue_depth",
            "Requests waiting in the version's queue.",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "roost_rejected_requests",
            "Requests refused before the model ran.",
            [*labels, "reason"],
            registry=reg,
        )
        self._children: dict[tuple[str, str, str, int, str], tuple[Counter, Histogram]] = {}
        self.shadow_dropped = Counter(
            "roost_shadow_dropped", "Mirrored copies dropped because the shadow queue was full.",
            labels, registry=reg,
        )
        self.shadow_copies = Counter(
            "roost_shadow_copies",
            "Mirrored copies by outcome: mirrored (the shadow answered), failed, dropped.",
            [*labels, "outcome"],
            registry=reg,
        )
        self.load_seconds = Gauge(
            "roost_model_load_seconds",
            "Time to load and warm up a version.",
            labels,
            registry=reg,
            multiprocess_mode="max",
        )
        # fault isolation (serving/breaker.py, serving/batching.py, serving/repository.py)
        self.breaker_open = Gauge(
            "roost_breaker_open",
            "1 while the version's circuit breaker is open or half-open (any worker), else 0.",
            labels,
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.breaker_trips = Counter(
            "roost_breaker_trips", "Times the version's circuit breaker opened.", labels,
            registry=reg,
        )
        self.execution_timeouts = Counter(
            "roost_execution_timeouts",
            "Batches that ran past the version's execution_timeout_ms.",
            labels,
            registry=reg,
        )
        self.set_aside = Gauge(
            "roost_instances_set_aside",
            "Instances stuck in a timed-out batch, taking no work until it returns.",
            labels,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.model_serving = Gauge(
            "roost_model_serving",
            "1 while a deployed model has a version answering its requests, 0 while it has "
            "none (e.g. its production version was taken out): every request for it fails.",
            ["model"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._serving_models: set[str] = set()
        self.llm = LLMMetrics(reg)  # roost_llm_*: text generation (serving/llm/metrics.py)
        self.registry_poll_errors = Counter(
            "roost_registry_poll_errors",
            "Registry polls that failed; the gateway kept serving its last known table.",
            registry=reg,
        )
        self.registry_last_success = Gauge(
            "roost_registry_last_success_timestamp_seconds",
            "Unix time of the last successful registry poll (the stalest worker's).",
            registry=reg,
            multiprocess_mode="livemin",
        )
        # how each gauge's values of several processes combine (livesum, max, ...)
        self._gauge_modes = gauge_modes(
            g for owner in (self, self.llm) for g in vars(owner).values() if isinstance(g, Gauge)
        )
        shared = multiprocess_dir()
        self.share = MetricsShare(self.figures, shared) if shared else None

    def figures(self) -> Snapshot:
        """This process's figures, as the other processes receive them (for ``/metrics``)."""
        return snapshot(self.registry, self._gauge_modes)

    def record_request(
        self,
        model: str,
        version: str,
        protocol: str,
        status: int,
        seconds: float,
        *,
        variant: str = "",
    ) -> None:
        """Count one request and observe its latency (label children are cached)."""
        key = (model, version, protocol, status, variant)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, version, protocol, str(status), variant),
                self.latency.labels(model, version, variant),
            )
            self._children[key] = children
        children[0].inc()
        if status == 200:
            children[1].observe(seconds)

    def record_shadow_drop(self, model: str, version: int) -> None:
        self.shadow_dropped.labels(model, str(version)).inc()

    def record_shadow_copy(self, model: str, version: int, outcome: str) -> None:
        """One mirrored copy's fate: ``mirrored``, ``failed`` or ``dropped``."""
        self.shadow_copies.labels(model, str(version), outcome).inc()

    def record_rejection(self, model: str, version: str, reason: str) -> None:
        self.rejected.labels(model, version, reason).inc()

    def batch_observer(
        self, model: str, version: str
    ) -> Callable[[int, float, float, int], None]:
        """A callback for the version's batcher: (rows, queue wait s, inference s, depth)."""
        size = self.batch_size.labels(model, version)
        wait = self.queue_wait.labels(model, version)
        run = self.inference.labels(model, version)
        depth_gauge = self.queue_depth.labels(model, version)

        def observe(rows: int, waited: float, inferred: float, depth: int) -> None:
            size.observe(rows)
            wait.observe(waited)
            run.observe(inferred)
            depth_gauge.set(depth)

        return observe

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        self.load_seconds.labels(model, version).set(seconds)

    def breaker_observer(self, model: str, version: str) -> Callable[[BreakerState, bool], None]:
        """A callback for the version's circuit breaker: (new state, whether it tripped)."""
        gauge = self.breaker_open.labels(model, version)
        trips = self.breaker_trips.labels(model, version)
        gauge.set(0)

        def changed(state: BreakerState, tripped: bool) -> None:
            gauge.set(0 if state is BreakerState.CLOSED else 1)
            if tripped:
                trips.inc()

        return changed

    def timeout_observer(self, model: str, version: str) -> Callable[[int, bool], None]:
        """A callback for the version's batcher: (instances set aside now, batch timed out)."""
        timeouts = self.execution_timeouts.labels(model, version)
        gauge = self.set_aside.labels(model, version)

        def observe(set_aside: int, timed_out: bool) -> None:
            gauge.set(set_aside)
            if timed_out:
                timeouts.inc()

        return observe

    def models_serving(self, serving: dict[str, bool]) -> None:
        """``roost_model_serving{model}``: 1/0 per deployed model; models gone are dropped."""
        for model, ok in serving.items():
            self.model_serving.labels(model).set(1 if ok else 0)
        for gone in self._serving_models - set(serving):
            self.model_serving.remove(gone)
        self._serving_models = set(serving)

    def registry_polled(self, ok: bool) -> None:
        if ok:
            self.registry_last_success.set(time.time())
        else:
            self.registry_poll_errors.inc()

    def exposition(self, depths: dict[tuple[str, str], int]) -> tuple[bytes, str]:
        """The text format of every metric (all workers' in multi-process mode).

        ``depths`` are the current queue depths of this process's versions.
        """
        for (model, version), depth in depths.items():
            self.queue_depth.labels(model, version).set(depth)
        if self.share is not None:
            return generate_latest(self.share.collect_all()), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
