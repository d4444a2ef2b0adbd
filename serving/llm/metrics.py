"""Text-generation figures on ``/metrics`` (registered on the gateway's own registry).

Per version (``model``, ``version`` labels): time to first token and inter-token latency as the
client sees them (from the request's arrival; a streamed chunk is one "token" event), prompt and
generated token counters (tokens/s: ``rate(roost_llm_generated_tokens_total[1m])``), and, for
in-gateway engines, running and waiting sequences and the KV-cache budget in use.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0, 10.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2, 0.5, 1.0)


class LLMMetrics:
    """The ``roost_llm_*`` metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model", "version"]
        self.ttft = Histogram(
            "roost_llm_time_to_first_token_seconds",
            "From a generation request's arrival to its first text.",
            labels, buckets=TTFT_BUCKETS, registry=registry,
        )
        self.itl = Histogram(
            "roost_llm_inter_token_latency_seconds",
            "Between consecutive text chunks of one generation.",
            labels, buckets=ITL_BUCKETS, registry=registry,
        )
        self.generated = Counter(
            "roost_llm_generated_tokens", "Completion tokens generated.", labels,
            registry=registry,
        )
        self.prompt = Counter(
            "roost_llm_prompt_tokens", "Prompt tokens processed.", labels, registry=registry
        )
        self.finished = Counter(
            "roost_llm_requests", "Generations by finish reason (stop, length, abort, error).",
            [*labels, "finish_reason"], registry=registry,
        )
        self.running = Gauge(
            "roost_llm_running_sequences", "Sequences in the running batch.", labels,
            registry=registry, multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "roost_llm_waiting_sequences", "Sequences waiting for a slot.", labels,
            registry=registry, multiprocess_mode="livesum",
        )
        self.kv_used = Gauge(
            "roost_llm_kv_cache_usage_ratio",
            "Share of the KV-cache budget reserved by running sequences.", labels,
            registry=registry, multiprocess_mode="livemax",
        )

    def observer(self, model: str, version: str) -> EngineGauges:
        return EngineGauges(self, model, version)

    def finish(
        self, model: str, version: str, reason: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.finished.labels(model, version, reason).inc()
        if prompt_tokens:
            self.prompt.labels(model, version).inc(prompt_tokens)
        if completion_tokens:
            self.generated.labels(model, version).inc(completion_tokens)


class EngineGauges:
    """An engine's occupancy, as gauges of one version (serving.llm.engine.EngineObserver)."""

    def __init__(self, metrics: LLMMetrics, model: str, version: str) -> None:
        self._running = metrics.running.labels(model, version)
        self._waiting = metrics.waiting.labels(model, version)
        self._kv = metrics.kv_used.labels(model, version)

    def occupancy(self, running: int, waiting: int, kv_used: int, kv_total: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)
        self._kv.set(kv_used / kv_total if kv_total else 0.0)
