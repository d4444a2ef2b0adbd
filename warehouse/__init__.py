"""The prediction log: every served prediction, as Parquet partitioned by model and date.

Write with :class:`PredictionLogWriter` — a write-ahead log (:mod:`warehouse.wal`: group commit,
fsync before the response) or a plain buffer — in front of a :class:`RecordSink` such as
:class:`ParquetSink`; query with :func:`connect` / :func:`run_query` (DuckDB, view
``predictions``).
"""

from warehouse.records import (
    PARTITION_COLUMNS,
    PREDICTION_SCHEMA,
    PredictionRecord,
    records_from_table,
    records_to_table,
    validate_model_name,
)
from warehouse.sql import connect, run_query
from warehouse.wal import (
    WAL_DIR,
    WAL_SCHEMA,
    Durability,
    LogUnavailable,
    WalLocked,
    WriteAheadLog,
    read_segment,
)
from warehouse.writer import (
    PREDICTIONS_DIR,
    ParquetSink,
    PredictionLogWriter,
    RecordSink,
    RejectedRecords,
    SegmentSink,
    default_writer_id,
)

__all__ = [
    "PARTITION_COLUMNS",
    "WAL_DIR",
    "WAL_SCHEMA",
    "Durability",
    "LogUnavailable",
    "SegmentSink",
    "WalLocked",
    "WriteAheadLog",
    "read_segment",
    "records_from_table",
    "PREDICTIONS_DIR",
    "PREDICTION_SCHEMA",
    "ParquetSink",
    "PredictionLogWriter",
    "PredictionRecord",
    "RecordSink",
    "RejectedRecords",
    "connect",
    "default_writer_id",
    "records_to_table",
    "run_query",
    "validate_model_name",
]
