"""Per-version serving knobs, stored in the registry with each version (Triton's names)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from registry.errors import InvalidRequest


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
    warmup_runs: int | None = None
    """Warm-up inferences before the version counts as ready (None: the server setting)."""

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
        if self.max_batch_size and any(s > self.max_batch_size for s in self.preferred_batch_sizes):
            problems.append("preferred_batch_sizes: each must be <= max_batch_size")
        if self.warmup_runs is not None and self.warmup_runs < 0:
            problems.append("warmup_runs: expected >= 0")
        if problems:
            raise InvalidRequest("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return data
