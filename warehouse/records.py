"""One served prediction, and the Parquet schema the prediction log stores it with.

The log lives under ``<logs_dir>/predictions/model=<model>/date=<YYYY-MM-DD>/*.parquet``. The two
partition keys, ``model`` and ``date`` (the UTC date of ``ts``), are hive partition directories and
are *not* columns of the files: DuckDB's ``hive_partitioning`` restores them (see
:mod:`warehouse.sql`). Every other field of :class:`PredictionRecord` is a column.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pyarrow as pa

PREDICTION_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("inputs", pa.string(), nullable=False),
        pa.field("outputs", pa.string(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("status", pa.int32(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("protocol", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        # the traffic router's decision (see serving/router.py)
        pa.field("variant", pa.string()),
        pa.field("experiment", pa.string()),
        pa.field("route", pa.string()),
        pa.field("shadow", pa.bool_(), nullable=False),
        # the region of the gateway that answered (ROOST_REGION); null in files written before
        pa.field("region", pa.string()),
    ]
)
"""Columns of every prediction-log Parquet file (``model`` and ``date`` are partition keys)."""

PARTITION_COLUMNS: tuple[str, ...] = ("model", "date")
"""Hive partition keys, in directory order: ``model=<model>/date=<YYYY-MM-DD>``."""

_MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_MODEL_NAME = 200
# DuckDB (like Hive) reads this partition value back as NULL.
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def validate_model_name(model: str) -> str:
    """Return ``model`` if it is safe as a partition directory name; raise ``ValueError`` if not.

    Safe: 1-200 characters from letters, digits, ``-``, ``_`` and ``.``, not starting with ``.``.
    """
    if (
        not isinstance(model, str)
        or len(model) > _MAX_MODEL_NAME
        or _MODEL_NAME.fullmatch(model) is None
        or model == _HIVE_NULL
    ):
        raise ValueError(
            f"model name {model!r} is not a safe partition name: use 1-{_MAX_MODEL_NAME} "
            "letters, digits, '-', '_' or '.', not starting with '.'"
        )
    return model


@dataclass(slots=True)
class PredictionRecord:
    """One prediction the gateway served (or failed to serve).

    ``ts`` must be timezone-aware; it is normalised to UTC on construction. ``inputs`` and
    ``outputs`` are JSON text (``outputs`` is ``""`` when the request failed).
    """

    request_id: str
    ts: datetime
    model: str
    version: int
    inputs: str
    outputs: str
    latency_ms: float
    status: int
    user_id: str | None
    protocol: str
    error: str | None
    variant: str | None = None
    """Which arm answered: an experiment variant, ``canary``, ``production``, a segment, ..."""
    experiment: str | None = None
    """The experiment or bandit id that chose the version, if any."""
    route: str | None = None
    """Why the router chose the version: pinned, segment, experiment, bandit, canary, production."""
    shadow: bool = False
    """True for a mirrored copy answered by a shadow version (never sent to the caller)."""
    region: str | None = None
    """The region of the gateway that served it (``ROOST_REGION``); None in older logs."""

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise ValueError(f"PredictionRecord.ts must be timezone-aware, got {self.ts!r}")
        if self.ts.tzinfo is not UTC:
            self.ts = self.ts.astimezone(UTC)

    @property
    def utc_date(self) -> date:
        """The UTC date of ``ts``: the ``date`` partition key."""
        return self.ts.date()


def records_to_table(records: Sequence[PredictionRecord]) -> pa.Table:
    """The records as a table with :data:`PREDICTION_SCHEMA` (partition keys left out)."""
    columns = {name: [getattr(r, name) for r in records] for name in PREDICTION_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=PREDICTION_SCHEMA)


def records_from_table(table: pa.Table) -> list[PredictionRecord]:
    """The rows of a table with :data:`PREDICTION_SCHEMA`'s columns plus ``model`` as records."""
    names = [f.name for f in dataclasses.fields(PredictionRecord)]
    return [  # a column an older table lacks (``region``) keeps the record's default
        PredictionRecord(**{n: row[n] for n in names if n in row}) for row in table.to_pylist()
    ]
