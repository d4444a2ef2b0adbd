"""Per-version serving knobs, stored in the registry with each version (Triton's names)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from registry.errors import InvalidRequest

BACKENDS = ("onnxruntime", "triton", "llm", "openai")
TRITON_PROTOCOLS = ("http", "grpc")
NAN_POLICIES = ("allow", "reject")
LLM_BATCHING = ("continuous", "static")
_STRING_KNOBS = frozenset(
    {
        "backend",
        "triton_url",
        "triton_protocol",
        "triton_model",
        "triton_model_version",
        "nan_policy",
        "batching",
        "upstream_url",
        "upstream_model",
    }
)
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class ServingConfig:
    """Serving knobs of one version (Triton's names), stored in the version's ``config``."""

    max_batch_size: int = 32
    """Most rows one model call takes; 0 turns batching off (no batch dimension)."""
    max_queue_delay_ms: float = 0.0
    """How long a batch may wait for more requests; 0 batches only what is already queued."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Batch sizes worth dispatching at once without waiting out the delay."""
    max_queue_size: int = 1024
    """Requests that may wait; one more is refused with 503 and Retry-After."""
    queue_timeout_ms: float = 5000.0
    """Default time a request may wait in the queue before it is answered 504."""
    max_queue_timeout_ms: float = 60000.0
    """Cap on the per-request ``timeout`` override."""
    instances: int = 1
    """Parallel execution instances (ONNX Runtime sessions) of the version."""
    execution_timeout_ms: float = 30000.0
    """Longest one batch may run; past it its requests are answered 504 and the batch counts as
    a failure for the circuit breaker. A thread-run instance (ONNX Runtime) cannot be stopped:
    it is set aside, taking no batches, until its call returns (see serving/batching.py)."""
    breaker_failures: int = 5
    """Consecutive failed batches that open the version's circuit breaker; 0 turns it off."""
    breaker_failure_rate: float = 0.5
    """... or this share of failed batches over the last 10 s (at least 20 batches); 0: off."""
    breaker_reset_ms: float = 5000.0
    """How long an open breaker answers 503 at once before it lets one probe request through."""
    warmup_runs: int | None = None
    """Warm-up inferences before the version counts as ready (None: the server setting)."""
    backend: str = "onnxruntime"
    """What runs the version: ``onnxruntime`` in the gateway, or a remote ``triton`` server
    (any Open Inference Protocol v2 server) that serves the same ONNX artifact."""
    triton_url: str | None = None
    """``host:port`` of the remote server (no scheme); required when ``backend`` is triton."""
    triton_protocol: str = "http"
    """How the gateway talks to the remote server: ``http`` or ``grpc``."""
    triton_model: str | None = None
    """The model's name on the remote server (None: the Roost model name)."""
    triton_model_version: str = ""
    """The model version on the remote server ("": the server's version policy decides)."""
    triton_timeout_s: float = 10.0
    """How long one call to the remote server may take before it is answered 504."""
    nan_policy: str = "allow"
    """What a floating-point input holding NaN or +/-Inf gets: ``allow`` (passed to the model)
    or ``reject`` (400 naming the input). JSON cannot carry them; binary and gRPC data can."""
    # -- text generation (backend llm and openai; docs/llm-serving.md; vLLM's names) --------
    max_num_seqs: int = 16
    """Most sequences in one decode step (the running batch); more wait in the queue, which
    holds ``max_queue_size`` sequences (one more is refused with 503 and Retry-After)."""
    max_num_batched_tokens: int = 2048
    """Most tokens one engine step processes: a decode token per running sequence plus the
    prompts prefilled in that step. A longer prompt is refused (400)."""
    kv_cache_budget_mb: float = 256.0
    """Memory for the sequences' KV caches; a sequence reserves prompt + max_tokens positions
    when it starts, and waits while the budget cannot hold it."""
    batching: str = "continuous"
    """``continuous`` (sequences join and leave the batch at every step) or ``static`` (a batch
    is formed once and nobody joins until all of it has finished; for comparison)."""
    upstream_url: str | None = None
    """backend openai: the upstream's base URL, ``http(s)://host:port/v1`` (as OpenAI clients'
    ``base_url``); its ``/completions`` and ``/chat/completions`` are called."""
    upstream_model: str | None = None
    """backend openai: the model name the upstream knows (None: the Roost model name)."""
    upstream_timeout_s: float = 60.0
    """backend openai: longest wait for the upstream's answer (or its next streamed chunk)."""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ServingConfig:
        """Read and check the knobs from a version's config; errors name the knob."""
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for key, raw in config.items():
            if key not in known:
                continue  # other keys (e.g. warm-up samples) belong to other readers
            if key == "preferred_batch_sizes":
                if not isinstance(raw, list | tuple) or not all(
                    isinstance(v, int) and v > 0 for v in raw
                ):
                    raise InvalidRequest(f"{key}: expected a list of positive integers")
                values[key] = tuple(sorted(raw))
            elif key == "warmup_runs" and raw is None:
                values[key] = None
            elif key == "triton_model_version" and type(raw) is int:
                values[key] = str(raw)
            elif key in _STRING_KNOBS:
                if not isinstance(raw, str):
                    raise InvalidRequest(f"{key}: expected a string, got {raw!r}")
                values[key] = raw
            else:
                if isinstance(raw, bool) or not isinstance(raw, int | float):
                    raise InvalidRequest(f"{key}: expected a number, got {raw!r}")
                values[key] = raw
        made = cls(**values)
        made.check()
        return made

    def check(self) -> None:
        problems = []
        if self.max_batch_size < 0:
            problems.append("max_batch_size: expected >= 0")
        if self.max_queue_delay_ms < 0:
            problems.append("max_queue_delay_ms: expected >= 0")
        if self.max_queue_size < 1:
            problems.append("max_queue_size: expected >= 1")
        if self.queue_timeout_ms <= 0 or self.max_queue_timeout_ms < self.queue_timeout_ms:
            problems.append("queue_timeout_ms: expected > 0 and <= max_queue_timeout_ms")
        if not 1 <= self.instances <= 64:
            problems.append("instances: expected 1 to 64")
        if self.execution_timeout_ms <= 0:
            problems.append("execution_timeout_ms: expected > 0")
        if self.breaker_failures < 0 or int(self.breaker_failures) != self.breaker_failures:
            problems.append("breaker_failures: expected an integer >= 0 (0: no breaker)")
        if not 0 <= self.breaker_failure_rate <= 1:
            problems.append("breaker_failure_rate: expected 0 to 1 (0: off)")
        if self.breaker_reset_ms <= 0:
            problems.append("breaker_reset_ms: expected > 0")
        if self.max_batch_size and any(s > self.max_batch_size for s in self.preferred_batch_sizes):
            problems.append("preferred_batch_sizes: each must be <= max_batch_size")
        if self.warmup_runs is not None and self.warmup_runs < 0:
            problems.append("warmup_runs: expected >= 0")
        if self.nan_policy not in NAN_POLICIES:
            problems.append(
                f"nan_policy: expected one of {', '.join(NAN_POLICIES)}, got {self.nan_policy!r}"
            )
        problems.extend(self._backend_problems())
        problems.extend(self._llm_problems())
        if problems:
            raise InvalidRequest("; ".join(problems))

    def _backend_problems(self) -> list[str]:
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend: expected one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.triton_protocol not in TRITON_PROTOCOLS:
            problems.append(f"triton_protocol: expected http or grpc, got {self.triton_protocol!r}")
        if self.triton_url is not None:
            problem = _host_port_problem(self.triton_url)
            if problem:
                problems.append(f"triton_url: {problem}")
        elif self.backend == "triton":
            problems.append("triton_url: required when backend is triton (host:port)")
        if self.triton_model is not None and not self.triton_model.strip():
            problems.append("triton_model: expected a non-empty model name")
        if self.triton_model_version and not self.triton_model_version.isdigit():
            problems.append(
                'triton_model_version: expected a version number or "" (the server\'s '
                f"policy), got {self.triton_model_version!r}"
            )
        if not 0 < self.triton_timeout_s <= 3600:
            problems.append("triton_timeout_s: expected > 0 and <= 3600 seconds")
        return problems

    def _llm_problems(self) -> list[str]:
        problems = []
        for knob in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, knob)
            if int(value) != value or value < 1:
                problems.append(f"{knob}: expected an integer >= 1, got {value!r}")
        if self.kv_cache_budget_mb <= 0:
            problems.append("kv_cache_budget_mb: expected > 0")
        if self.batching not in LLM_BATCHING:
            problems.append(f"batching: expected continuous or static, got {self.batching!r}")
        if self.upstream_url is not None:
            if not self.upstream_url.startswith(("http://", "https://")):
                problems.append(
                    f"upstream_url: expected http(s)://host:port/v1, got {self.upstream_url!r}"
                )
        elif self.backend == "openai":
            problems.append("upstream_url: required when backend is openai (http(s)://host/v1)")
        if self.upstream_model is not None and not self.upstream_model.strip():
            problems.append("upstream_model: expected a non-empty model name")
        if not 0 < self.upstream_timeout_s <= 3600:
            problems.append("upstream_timeout_s: expected > 0 and <= 3600 seconds")
        return problems

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return data


def _host_port_problem(url: str) -> str | None:
    """Why ``url`` is not a ``host:port`` address, or None."""
    if "://" in url:
        return f"expected host:port without a scheme, got {url!r}"
    match = _HOST_PORT.match(url)
    if match is None:
        return f"expected host:port, got {url!r}"
    if not 1 <= int(match["port"]) <= 65535:
        return f"port must be 1 to 65535, got {match['port']}"
    return None
