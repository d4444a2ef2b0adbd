"""Feedback on served predictions: labels (for accuracy and concept drift) and rewards (bandits).

Stored next to the prediction log as ``<logs_dir>/feedback/model=<m>/date=<d>/*.parquet`` and
joined to predictions on ``request_id`` (DuckDB view ``feedback``, see :mod:`warehouse.sql`).
Each row carries the ``region`` of the gateway that took it (``ROOST_REGION``): feedback stays in
the region's own log, like the predictions it is about.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.records import validate_model_name

FEEDBACK_DIR = "feedback"

FEEDBACK_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("version", pa.int64()),
        pa.field("experiment", pa.string()),
        pa.field("label", pa.float64()),
        pa.field("reward", pa.float64()),
        pa.field("region", pa.string()),  # ROOST_REGION of the gateway; null in older files
    ]
)


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    request_id: str
    model: str
    version: int | None
    experiment: str | None
    label: float | None
    reward: float | None
    ts: datetime
    region: str | None = None


def write_feedback(logs_dir: Path, records: list[FeedbackRecord]) -> list[Path]:
    """Write one durable Parquet file per (model, date) of ``records`` (temp file + rename)."""
    groups: dict[tuple[str, str], list[FeedbackRecord]] = {}
    for record in records:
        validate_model_name(record.model)
        day = record.ts.astimezone(UTC).date().isoformat()
        groups.setdefault((record.model, day), []).append(record)
    written = []
    for (model, day), group in groups.items():
        directory = logs_dir / FEEDBACK_DIR / f"model={model}" / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        table = pa.Table.from_pydict(
            {
                "request_id": [r.request_id for r in group],
                "ts": [r.ts for r in group],
                "version": [r.version for r in group],
                "experiment": [r.experiment for r in group],
                "label": [r.label for r in group],
                "reward": [r.reward for r in group],
                "region": [r.region for r in group],
            },
            schema=FEEDBACK_SCHEMA,
        )
        tmp = directory / f".tmp-{name}"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        final = directory / f"{name}.parquet"
        os.replace(tmp, final)
        written.append(final)
    return written
