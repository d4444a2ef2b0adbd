"""The prediction log: every served prediction, as Parquet partitioned by model and date.

Write with :class:`PredictionLogWriter` (buffer and flush policy) in front of a
:class:`RecordSink` such as :class:`ParquetSink`; query with :func:`connect` / :func:`run_query`
(DuckDB, view ``predictions``).
"""

from warehouse.records import (
    PARTITION_COLUMNS,
    PREDICTION_SCHEMA,
    PredictionRecord,
    records_to_table,
    validate_model_name,
)
from warehouse.sql import connect, run_query
from warehouse.writer import (
    PREDICTIONS_DIR,
    ParquetSink,
    PredictionLogWriter,
    RecordSink,
    RejectedRecords,
    default_writer_id,
)

__all__ = [
    "PARTITION_COLUMNS",
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
