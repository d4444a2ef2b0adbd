"""The iteration-level scheduler: who runs in the next model step (vLLM's design, simplified).

State: a bounded FIFO of **waiting** sequences and the list of **running** ones. Before every
step the engine calls :meth:`Scheduler.schedule`, which admits waiting sequences (oldest first)
while all of these hold:

* running + admitted < ``max_num_seqs``;
* the step's tokens stay within ``max_num_batched_tokens``: one decode token per running
  sequence plus each admitted prompt's length (its prefill runs in this step);
* the sequence's KV cache fits the budget. A sequence reserves its whole cache when admitted,
  prompt + ``max_tokens`` positions, so a running sequence never runs out of cache and nothing
  is ever preempted; a sequence that cannot get its cache waits (first come, first served: a
  big request at the head is not overtaken, so it cannot starve).

A request that could never run (prompt + ``max_tokens`` beyond the whole cache budget, or a
prompt longer than ``max_num_batched_tokens``) is refused when it arrives (400, see
:meth:`Scheduler.check`); one more waiting sequence than ``max_waiting`` is refused with 503
and Retry-After (:class:`~serving.batching.QueueFull`). Aborted sequences (client gone) leave
the waiting queue or the running batch at the next step and free their cache at once.

``static`` mode (the benchmark's baseline): a batch is admitted only when nothing runs, and
nobody joins it until all of its sequences have finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from registry.errors import InvalidRequest
from serving.batching import QueueFull

MODES = ("continuous", "static")


@dataclass(eq=False)
class Sequence:
    """One request being generated (the engine's fields live in ``state``)."""

    id: int
    prompt: list[int]
    max_tokens: int
    state: Any = None
    aborted: bool = False
    output: list[int] = field(default_factory=list)

    @property
    def reserve(self) -> int:
        """Cache positions it needs: prompt + max_tokens (the last token is never fed back)."""
        return len(self.prompt) + self.max_tokens


@dataclass(frozen=True)
class SchedulerLimits:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    kv_cache_tokens: int = 65536
    """Cache positions the budget holds (``kv_cache_budget_mb`` / bytes per position)."""
    max_waiting: int = 1024
    mode: str = "continuous"


class Scheduler:
    """Waiting queue, running batch and KV-cache reservations (not thread-safe: the engine
    holds its lock around every call)."""

    def __init__(self, limits: SchedulerLimits) -> None:
        self.limits = limits
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reserved = 0
        """Cache positions reserved by running sequences."""

    def check(self, seq: Sequence) -> None:
        """Refuse a sequence that could never be admitted (400 naming the field)."""
        limits = self.limits
        if len(seq.prompt) > limits.max_num_batched_tokens:
            raise InvalidRequest(
                f"prompt: {len(seq.prompt)} tokens, more than this model's "
                f"max_num_batched_tokens ({limits.max_num_batched_tokens})"
            )
        if seq.reserve > limits.kv_cache_tokens:
            raise InvalidRequest(
                f"max_tokens: the prompt ({len(seq.prompt)} tokens) plus max_tokens "
                f"({seq.max_tokens}) need {seq.reserve} cache positions, more than this "
                f"model's whole KV-cache budget ({limits.kv_cache_tokens}); lower max_tokens"
            )

    def add(self, seq: Sequence) -> None:
        """Queue ``seq``; :class:`QueueFull` (503, Retry-After) when the queue is full."""
        self.check(seq)
        if len(self.waiting) >= self.limits.max_waiting:
            raise QueueFull(
                f"the model's waiting queue is full ({self.limits.max_waiting} sequences); "
                "retry later"
            )
        self.waiting.append(seq)

    def schedule(self) -> list[Sequence]:
        """Admit waiting sequences for this step (see the module docstring); they are now
        running and their prompts must be prefilled in this step."""
        limits = self.limits
        self._drop_aborted_waiting()
        if limits.mode == "static" and self.running:
            return []
        admitted: list[Sequence] = []
        budget = limits.max_num_batched_tokens - len(self.running)
        while self.waiting:
            head = self.waiting[0]
            if len(self.running) + len(admitted) >= limits.max_num_seqs:
                break
            if len(head.prompt) > budget or self.reserved + head.reserve > limits.kv_cache_tokens:
                break
            self.waiting.popleft()
            self.reserved += head.reserve
            budget -= len(head.prompt)
            admitted.append(head)
        self.running.extend(admitted)
        return admitted

    def finish(self, seq: Sequence) -> None:
        """``seq`` leaves the running batch and frees its cache."""
        self.running.remove(seq)
        self.reserved -= seq.reserve

    def drop_aborted(self, on_drop: Callable[[Sequence], None]) -> None:
        """Remove aborted sequences (waiting and running), freeing their cache."""
        for seq in [s for s in self.running if s.aborted]:
            self.finish(seq)
            on_drop(seq)
        for seq in [s for s in self.waiting if s.aborted]:
            self.waiting.remove(seq)
            on_drop(seq)

    def _drop_aborted_waiting(self) -> None:
        if any(s.aborted for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if not s.aborted)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running
