"""Per-arm samples for canary and experiment analysis, read from the prediction and feedback logs.

One DuckDB query (in-memory, over the Parquet files of the ``predictions`` and ``feedback``
views of :func:`warehouse.sql.connect`) returns, for one model and a time window
``[since, until)``, one :class:`ArmSample` per (variant, version): request and error counts,
the latencies, distinct units, and the feedback joined on ``request_id``.

What counts:

* **Shadows are excluded** (``shadow = true`` rows are mirrored copies nobody received).
* **Server errors** (``status >= 500``) are what a canary is blamed for: internal errors,
  timeouts (``504``, counted again in ``timeouts``), an open breaker or a full queue. Shared
  faults (a draining gateway, the log unavailable: 503) hit both arms alike and cancel out in a
  comparison. **Client errors** (``4xx``) are counted apart and never gate a promotion: bad input
  is the caller's fault, whichever version answered it.
* **Latency** is that of answered requests (``status < 400``): a fast failure must not make a
  broken canary look quick (its failures are already in the error rate).
* **Labelled / correct**: the latest non-null ``label`` fed back for the request (feedback rows
  are deduplicated per request id, latest ``ts`` wins) joined to an answered prediction whose
  output named ``label_output`` (``"label"``, the convention of the demo classifiers) holds
  exactly one value; ``correct`` when that value equals the label (both as numbers: outputs are
  stored as v2 JSON tensors ``[{"name", "datatype", "shape", "data"}]``, labels as DOUBLE).
  Batched requests (several rows, one label) are not labelled for accuracy.
* **Rewards**: the latest non-null ``reward`` fed back per request.
* **Units**: distinct ``user_id``; ``anonymous`` counts requests without one (the router
  assigns those per request, so each is its own unit of randomisation).

Freshness: only sealed Parquet is read. Rows still in the write-ahead log appear once their
segment is sealed: within ``log_flush_interval_s`` (2 s by default) and a bit of the request, or
sooner at ``log_flush_rows`` rows. Analyse windows that ended at least that long ago.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from warehouse.sql import connect

if TYPE_CHECKING:
    from registry.storage import Location

FloatArray = npt.NDArray[np.float64]


def _empty() -> FloatArray:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class ArmSample:
    """What one arm (a variant answered by one version) did in a window."""

    arm: str
    """The router's variant name: ``production``, ``canary``, an experiment variant, ..."""
    version: int | None
    requests: int = 0
    server_errors: int = 0
    """``status >= 500``: the arm's fault (timeouts included)."""
    timeouts: int = 0
    """``status = 504``: deadline exceeded (a subset of ``server_errors``)."""
    client_errors: int = 0
    """``400 <= status < 500``: reported, never blamed on the arm."""
    units: int = 0
    """Distinct ``user_id`` values."""
    anonymous: int = 0
    """Requests without a ``user_id``."""
    latencies_ms: FloatArray = field(default_factory=_empty)
    """Latency of every answered request (``status < 400``), in ms."""
    labelled: int = 0
    correct: int = 0
    rewards: FloatArray = field(default_factory=_empty)

    @property
    def error_rate(self) -> float | None:
        return self.server_errors / self.requests if self.requests else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def reward_sum(self) -> float:
        return float(self.rewards.sum())

    @property
    def reward_mean(self) -> float | None:
        return float(self.rewards.mean()) if self.rewards.size else None

    def latency_quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0-1, linear interpolation) of the latencies, in ms."""
        if not self.latencies_ms.size:
            return None
        return float(np.quantile(self.latencies_ms, q))


_QUERY = """
WITH p AS (
    SELECT request_id, variant, version, status, latency_ms, user_id, outputs
    FROM predictions
    WHERE model = $model AND date >= $first_day AND date <= $last_day
      AND ts >= $since AND ts < $until AND NOT shadow {arm_filter}
),
f AS (
    SELECT request_id,
           arg_max(label, ts) FILTER (WHERE label IS NOT NULL) AS label,
           arg_max(reward, ts) FILTER (WHERE reward IS NOT NULL) AS reward
    FROM feedback
    WHERE model = $model AND date >= $first_day
      AND request_id IN (SELECT request_id FROM p)
    GROUP BY request_id
),
j AS (
    SELECT p.variant, p.version, p.status, p.latency_ms, p.user_id, f.label, f.reward,
           CASE WHEN f.label IS NOT NULL AND p.status < 400 THEN
               list_filter(
                   TRY_CAST(p.outputs AS JSON[]), lambda o: o->>'name' = $label_output
               )[1]
           END AS label_tensor
    FROM p LEFT JOIN f USING (request_id)
),
k AS (
    SELECT *,
           CASE WHEN json_array_length(label_tensor, '$.data') = 1 THEN
               TRY_CAST(label_tensor->>'$.data[0]' AS DOUBLE)
           END AS predicted
    FROM j
)
SELECT coalesce(variant, '') AS arm, version,
       count(*) AS requests,
       count(*) FILTER (WHERE status >= 500) AS server_errors,
       count(*) FILTER (WHERE status = 504) AS timeouts,
       count(*) FILTER (WHERE status >= 400 AND status < 500) AS client_errors,
       count(DISTINCT user_id) AS units,
       count(*) FILTER (WHERE user_id IS NULL) AS anonymous,
       coalesce(list(latency_ms) FILTER (WHERE status < 400), []) AS latencies,
       count(*) FILTER (WHERE predicted IS NOT NULL AND label IS NOT NULL) AS labelled,
       count(*) FILTER (WHERE predicted = label) AS correct,
       coalesce(list(reward) FILTER (WHERE reward IS NOT NULL), []) AS rewards
FROM k
GROUP BY ALL
ORDER BY arm, version
"""


def _floats(column: pa.ChunkedArray, row: int) -> FloatArray:
    values = column[row].values
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def read_arms(
    logs_dir: Path,
    model: str,
    since: datetime,
    until: datetime,
    *,
    experiment: str | None = None,
    routes: Sequence[str] | None = None,
    label_output: str = "label",
    logs_location: Location | None = None,
) -> list[ArmSample]:
    """One :class:`ArmSample` per (variant, version) of ``model``'s requests in
    ``[since, until)`` (timezone-aware), ordered by variant then version.

    ``experiment`` keeps only requests that experiment routed (``route = 'experiment'``);
    ``routes`` keeps only those routes (e.g. ``("production", "canary")``: requests the router
    randomised, not pinned or segment ones). ``logs_dir`` is ``RoostSettings.logs_dir``;
    ``logs_location`` (:func:`registry.storage.logs_location`) is where the sealed prediction
    log lives when ``ROOST_LOGS_URL`` puts it elsewhere (object storage); feedback is always
    read from ``logs_dir``.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    conditions: list[str] = []
    params: dict[str, Any] = {
        "model": model,
        "since": since,
        "until": until,
        "first_day": since.astimezone(UTC).date(),
        "last_day": until.astimezone(UTC).date(),
        "label_output": label_output,
    }
    if experiment is not None:
        conditions.append("experiment = $experiment AND route = 'experiment'")
        params["experiment"] = experiment
    if routes is not None:
        names = [f"$route{i}" for i in range(len(routes))]
        conditions.append(f"route IN ({', '.join(names) or 'NULL'})")
        params |= {f"route{i}": r for i, r in enumerate(routes)}
    arm_filter = "".join(f" AND {c}" for c in conditions)
    con = connect(Path(logs_dir), logs_location=logs_location)
    try:
        table = con.sql(_QUERY.format(arm_filter=arm_filter), params=params).to_arrow_table()
    finally:
        con.close()
    columns = {name: table.column(name) for name in table.column_names}
    arms = []
    for row in range(table.num_rows):
        scalar = {
            name: columns[name][row].as_py()
            for name in table.column_names
            if name not in ("latencies", "rewards")
        }
        arms.append(
            ArmSample(
                arm=scalar["arm"],
                version=scalar["version"],
                requests=scalar["requests"],
                server_errors=scalar["server_errors"],
                timeouts=scalar["timeouts"],
                client_errors=scalar["client_errors"],
                units=scalar["units"],
                anonymous=scalar["anonymous"],
                latencies_ms=_floats(columns["latencies"], row),
                labelled=scalar["labelled"],
                correct=scalar["correct"],
                rewards=_floats(columns["rewards"], row),
            )
        )
    return arms


def read_canary(
    logs_dir: Path,
    model: str,
    since: datetime,
    until: datetime,
    *,
    canary_version: int | None = None,
    label_output: str = "label",
    logs_location: Location | None = None,
) -> tuple[ArmSample, ArmSample]:
    """(production, canary): the requests the router sent to production and to the canary
    (routes ``production`` and ``canary`` only) in ``[since, until)``.

    When production changed version inside the window, the version with the most requests is
    taken; ``canary_version`` keeps only that version's canary requests. An arm without
    requests is returned empty.
    """
    arms = read_arms(
        logs_dir, model, since, until, routes=("production", "canary"),
        label_output=label_output, logs_location=logs_location,
    )
    production = [a for a in arms if a.arm == "production"]
    canary = [
        a for a in arms
        if a.arm == "canary" and (canary_version is None or a.version == canary_version)
    ]

    def biggest(candidates: list[ArmSample], name: str, version: int | None) -> ArmSample:
        if not candidates:
            return ArmSample(arm=name, version=version)
        return max(candidates, key=lambda a: a.requests)

    return biggest(production, "production", None), biggest(canary, "canary", canary_version)
