"""The real :class:`~monitoring.alerts.source.MetricSource`: the prediction log, feedback and
drift scores in DuckDB, and the registry's versions. Works with no Prometheus running.

One :class:`LogSource` serves one evaluation (a sensor tick): it opens one DuckDB connection
(:func:`warehouse.connect`: views ``predictions``, ``feedback``, ``drift_scores``) and reads
the registry's versions once. Windows are pushed down to the ``date`` partitions before
``ts`` is compared.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import duckdb

from monitoring.alerts.source import (
    Artifact,
    FairnessFigures,
    PendingArtifact,
    RequestCounts,
    oldest_pending,
)
from registry import NotFound, Registry
from warehouse import connect

if TYPE_CHECKING:
    from registry.storage import Location

log = logging.getLogger(__name__)

_WINDOW = """model = $model AND date >= CAST($start AS DATE) AND date <= CAST($end AS DATE)
             AND ts > $start AND ts <= $end AND NOT shadow"""
_ACCURACY = f"""
WITH p AS (
    SELECT request_id, outputs FROM predictions WHERE {_WINDOW} AND status < 400
),
f AS (
    SELECT request_id, arg_max(label, ts) FILTER (WHERE label IS NOT NULL) AS label
    FROM feedback
    WHERE model = $model AND date >= CAST($start AS DATE)
      AND request_id IN (SELECT request_id FROM p)
    GROUP BY request_id
),
j AS (
    SELECT f.label, list_filter(TRY_CAST(p.outputs AS JSON[]),
                                lambda o: o->>'name' = $label_output)[1] AS tensor
    FROM p JOIN f USING (request_id) WHERE f.label IS NOT NULL
),
k AS (
    SELECT label, CASE WHEN json_array_length(tensor, '$.data') = 1
                       THEN TRY_CAST(tensor->>'$.data[0]' AS DOUBLE) END AS predicted
    FROM j
)
SELECT count(*) FILTER (WHERE predicted = label), count(*) FILTER (WHERE predicted IS NOT NULL)
FROM k
"""


class LogSource:
    """Alert figures from ``logs_dir`` (and ``registry`` for model freshness); the sealed
    prediction log from ``logs_location`` when given (``ROOST_LOGS_URL``, e.g. object storage)."""

    def __init__(self, logs_dir: Path, registry: Registry | None = None, *,
                 logs_location: Location | None = None) -> None:
        self.logs_dir = Path(logs_dir)
        self._registry = registry
        self._con = connect(self.logs_dir, sandboxed=False, logs_location=logs_location)
        self._artifacts: dict[str, list[Artifact]] | None = None

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> LogSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...]:
        row = self._con.execute(sql, params).fetchone()
        assert row is not None  # aggregates always return a row
        return row

    def _versions(self) -> dict[str, list[Artifact]]:
        if self._artifacts is None:
            self._artifacts = {}
            if self._registry is not None:
                for info in self._registry.list_models():
                    try:
                        versions = self._registry.list_versions(info.name)
                    except NotFound:
                        continue
                    self._artifacts[info.name] = [
                        Artifact(v.model, v.version, v.created_at, v.state.value)
                        for v in versions
                    ]
        return self._artifacts

    def models(self) -> list[str]:
        logged = self._con.execute("SELECT DISTINCT model FROM predictions").fetchall()
        return sorted({str(m) for (m,) in logged if m is not None} | set(self._versions()))

    def request_counts(self, model: str | None, start: datetime, end: datetime) -> RequestCounts:
        where = _WINDOW if model is not None else _WINDOW.replace("model = $model AND", "")
        params: dict[str, Any] = {"start": start, "end": end}
        if model is not None:
            params["model"] = model
        total, errors = self._one(
            f"SELECT count(*), count(*) FILTER (WHERE status >= 500) FROM predictions "
            f"WHERE {where}", params)
        return RequestCounts(int(total), int(errors))

    def latency_quantile(
        self, model: str, q: float, start: datetime, end: datetime
    ) -> tuple[float | None, int]:
        value, n = self._one(
            f"SELECT quantile_cont(latency_ms, $q), count(*) FROM predictions "
            f"WHERE {_WINDOW} AND status < 400",
            {"model": model, "start": start, "end": end, "q": q})
        return (None if value is None else float(value)), int(n)

    def accuracy(
        self, model: str, start: datetime, end: datetime, label_output: str
    ) -> tuple[int, int]:
        correct, labelled = self._one(_ACCURACY, {"model": model, "start": start, "end": end,
                                                  "label_output": label_output})
        return int(correct), int(labelled)

    def drift_share(self, model: str, since: date) -> float | None:
        # share_drifted is the same on every row of a (model, date); the latest run wins.
        try:
            row = self._one(
                "SELECT arg_max(share_drifted, computed_at) FROM drift_scores "
                "WHERE model = $model AND date = (SELECT max(date) FROM drift_scores "
                "WHERE model = $model AND date >= $since)", {"model": model, "since": since})
        except duckdb.Error as exc:  # a file in another schema: no data, said in the log
            log.warning("cannot read the drift scores of %s: %s", model, exc)
            return None
        return None if row[0] is None else float(row[0])

    def pending_artifact(self, model: str) -> PendingArtifact | None:
        return oldest_pending(self._versions().get(model, []))

    def fairness(self, model: str, since: date) -> list[FairnessFigures]:
        """The latest day's rows of the ``fairness`` view (assets/fairness.py) for ``model``."""
        try:
            rows = self._con.execute(
                "SELECT date, attribute, arg_max(di_ratio, computed_at), "
                "arg_max(dp_difference, computed_at), arg_max(eo_difference, computed_at), "
                "arg_max(judged, computed_at) FROM fairness WHERE model = $model AND date = "
                "(SELECT max(date) FROM fairness WHERE model = $model AND date >= $since) "
                "GROUP BY date, attribute ORDER BY attribute",
                {"model": model, "since": since}).fetchall()
        except duckdb.Error as exc:  # a file in another schema: no data, said in the log
            log.warning("cannot read the fairness results of %s: %s", model, exc)
            return []
        return [FairnessFigures(model, day, attribute, di, dp, eo, bool(judged))
                for day, attribute, di, dp, eo, judged in rows]
