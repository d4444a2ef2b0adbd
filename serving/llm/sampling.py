"""Sampling one token from a sequence's logits: temperature, nucleus (``top_p``) and a seed.

Every sequence has its own :class:`numpy.random.Generator`, seeded from the request's ``seed``
(or from fresh entropy without one), so a seeded request draws the same tokens whatever else
shares its batch. ``temperature == 0`` is greedy (argmax) and draws nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops (OpenAI's names)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (benchmarks: fixed output lengths)."""

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from ``logits`` [V] under ``params``."""
    if params.temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        cumulative = np.cumsum(sorted_probs)
        # the smallest prefix whose mass reaches top_p (at least one token)
        keep = int(np.searchsorted(cumulative, params.top_p, side="left")) + 1
        kept = sorted_probs[:keep] / cumulative[keep - 1]
        pick = int(np.searchsorted(np.cumsum(kept), rng.random(), side="right"))
        return int(order[min(pick, keep - 1)])
    pick = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
    return min(pick, len(probs) - 1)
