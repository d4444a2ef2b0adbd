"""What every model backend offers the repository: :class:`ModelBackend`.

A backend runs one instance of one version's artifact. The repository makes instances through
:func:`serving.backends.load_backends` (one small factory keyed by the version's
``ServingConfig.backend``), warms each up in its loader thread, hands ``infer`` to the version's
batcher (a plain function runs on the instance's thread, a coroutine function on the event loop),
and closes the instances when the version is retired.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, Self

import numpy as np

from registry import RoostSettings, ServingConfig, VersionInfo

Tensors = dict[str, np.ndarray]


class ModelBackend(Protocol):
    """One execution instance of a model version (in-process or remote)."""

    @property
    def platform(self) -> str:
        """The OIP ``platform`` reported in model metadata."""
        ...

    @property
    def providers(self) -> list[str]:
        """Where it runs (execution providers, or the remote's address)."""
        ...

    @classmethod
    def load(
        cls, info: VersionInfo, artifact: bytes, config: ServingConfig, settings: RoostSettings
    ) -> Self:
        """A new instance for ``info`` (``artifact``: its sha256-checked bytes)."""
        ...

    def warm_up(self, runs: int, samples: list[Tensors] | None = None) -> None:
        """Run ``samples`` (default: zeros shaped like the signature) ``runs`` times; blocking,
        called from the repository's loader thread before the version takes traffic."""
        ...

    def infer(self, feeds: Tensors) -> Tensors | Awaitable[Tensors]:
        """Run one (batched) request; outputs by name."""
        ...

    async def close(self) -> None:
        """Release what the instance holds beyond memory (called on the event loop)."""
        ...
