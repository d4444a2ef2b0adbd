"""Where alert rules read their figures: :class:`MetricSource`, and :class:`MetricHistory`, a
synthetic one held in memory (for tests and what-if evaluation).

Windows are half-open on the left: a request at ``ts`` is in the window ``(start, end]``.
Shadow answers never count (they are not what callers saw). Latency is that of successful
requests (status < 400), as the gateway's histogram observes; quantiles interpolate linearly
(DuckDB's ``quantile_cont``, NumPy's default). An error is a 5xx answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

import numpy as np

IN_FLIGHT = ("REGISTERED", "VALIDATING", "VALIDATED", "STAGING", "STAGING_TESTED", "CANARY")
"""States of a version on its way to production (model freshness counts their wait)."""


@dataclass(frozen=True)
class RequestCounts:
    total: int
    server_errors: int

    @property
    def error_ratio(self) -> float | None:
        """The 5xx share, ``None`` without requests (no data)."""
        return self.server_errors / self.total if self.total else None


@dataclass(frozen=True)
class FairnessFigures:
    """One protected attribute's fairness on one day (a row of the ``fairness`` view)."""

    model: str
    day: date
    attribute: str
    di_ratio: float | None
    dp_difference: float | None
    eo_difference: float | None = None
    judged: bool = True


@dataclass(frozen=True)
class PendingArtifact:
    """The oldest version of a model on its way to production."""

    model: str
    version: int
    registered_at: datetime
    state: str


class MetricSource(Protocol):
    """The figures alert rules are evaluated on."""

    def models(self) -> list[str]:
        """Every model with predictions logged or versions registered."""
        ...

    def request_counts(self, model: str | None, start: datetime, end: datetime) -> RequestCounts:
        """Requests and 5xx answers of ``model`` (``None``: every model) in ``(start, end]``."""
        ...

    def latency_quantile(
        self, model: str, q: float, start: datetime, end: datetime
    ) -> tuple[float | None, int]:
        """(the ``q`` quantile of successful requests' latency in ms, how many there were)."""
        ...

    def accuracy(
        self, model: str, start: datetime, end: datetime, label_output: str
    ) -> tuple[int, int]:
        """(correct, labelled) among the model's requests in ``(start, end]``."""
        ...

    def drift_share(self, model: str, since: date) -> float | None:
        """Share of drifted features in the model's latest drift report dated ``since`` or
        later; ``None`` when there is none (no data)."""
        ...

    def pending_artifact(self, model: str) -> PendingArtifact | None:
        """The oldest in-flight version registered after the production version, if any."""
        ...

    def fairness(self, model: str, since: date) -> list[FairnessFigures]:
        """The model's fairness figures of its latest day dated ``since`` or later, one per
        attribute (empty: no data)."""
        ...


@dataclass(frozen=True)
class Request:
    """One logged request of a synthetic history; ``correct`` is ``None`` when unlabelled."""

    ts: datetime
    model: str
    status: int = 200
    latency_ms: float = 10.0
    correct: bool | None = None
    shadow: bool = False


@dataclass(frozen=True)
class DriftReport:
    model: str
    day: date
    share_drifted: float


@dataclass(frozen=True)
class Artifact:
    """A registered version: ``state`` a lifecycle state name (``PRODUCTION``, ``STAGING``...)."""

    model: str
    version: int
    registered_at: datetime
    state: str


@dataclass
class MetricHistory:
    """A synthetic metric history: requests, drift reports and registered versions."""

    requests: list[Request] = field(default_factory=list)
    drift: list[DriftReport] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    fairness_results: list[FairnessFigures] = field(default_factory=list)

    def add(self, requests: Iterable[Request]) -> MetricHistory:
        self.requests.extend(requests)
        return self

    def _window(self, model: str | None, start: datetime, end: datetime) -> list[Request]:
        return [r for r in self.requests
                if not r.shadow and start < r.ts <= end and model in (None, r.model)]

    def models(self) -> list[str]:
        names = {r.model for r in self.requests} | {a.model for a in self.artifacts}
        names |= {f.model for f in self.fairness_results}
        return sorted(names | {d.model for d in self.drift})

    def request_counts(self, model: str | None, start: datetime, end: datetime) -> RequestCounts:
        rows = self._window(model, start, end)
        return RequestCounts(len(rows), sum(1 for r in rows if r.status >= 500))

    def latency_quantile(
        self, model: str, q: float, start: datetime, end: datetime
    ) -> tuple[float | None, int]:
        latencies = [r.latency_ms for r in self._window(model, start, end) if r.status < 400]
        if not latencies:
            return None, 0
        return float(np.quantile(np.asarray(latencies), q)), len(latencies)

    def accuracy(
        self, model: str, start: datetime, end: datetime, label_output: str
    ) -> tuple[int, int]:
        labelled = [r for r in self._window(model, start, end)
                    if r.correct is not None and r.status < 400]
        return sum(1 for r in labelled if r.correct), len(labelled)

    def drift_share(self, model: str, since: date) -> float | None:
        reports = [d for d in self.drift if d.model == model and d.day >= since]
        if not reports:
            return None
        return max(reports, key=lambda d: d.day).share_drifted

    def pending_artifact(self, model: str) -> PendingArtifact | None:
        return oldest_pending(a for a in self.artifacts if a.model == model)

    def fairness(self, model: str, since: date) -> list[FairnessFigures]:
        return latest_fairness(f for f in self.fairness_results
                               if f.model == model and f.day >= since)


def latest_fairness(figures: Iterable[FairnessFigures]) -> list[FairnessFigures]:
    """The figures of the latest day among ``figures``."""
    rows = list(figures)
    if not rows:
        return []
    last = max(f.day for f in rows)
    return [f for f in rows if f.day == last]


def oldest_pending(artifacts: Iterable[Artifact]) -> PendingArtifact | None:
    """The oldest in-flight version newer than the production one (or any, without one)."""
    versions: Sequence[Artifact] = list(artifacts)
    production = max((a.version for a in versions if a.state == "PRODUCTION"), default=0)
    pending = [a for a in versions if a.state in IN_FLIGHT and a.version > production]
    if not pending:
        return None
    first = min(pending, key=lambda a: (a.registered_at, a.version))
    return PendingArtifact(first.model, first.version, first.registered_at, first.state)
