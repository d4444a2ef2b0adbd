"""Querying the prediction log with DuckDB.

:func:`connect` opens an in-memory DuckDB connection (never a ``.duckdb`` file: several processes
share the logs) with a view ``predictions`` over every Parquet file under
``<logs_dir>/predictions``, its hive partition keys ``model`` (VARCHAR) and ``date`` (DATE)
restored as columns. The file list is read on every query, so new files show up without
reconnecting; but if no file existed when the connection was opened, the view is an empty one
with the same columns, so open a fresh connection to see data written since.

The view ``experiment_results`` reads the experiment analyses written under
``<logs_dir>/analysis/experiment_results`` (see :data:`EXPERIMENT_RESULTS_SCHEMA`); empty until
one is written. The view ``alerts`` reads the alert events (Alertmanager-like JSON lines) in
``<logs_dir>/alerts/events.jsonl`` (see :mod:`orchestration.alert_events`).

Timestamps are returned in UTC (the connection's ``TimeZone`` is set to UTC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from registry.errors import InvalidRequest
from warehouse.feedback import FEEDBACK_DIR, FEEDBACK_SCHEMA
from warehouse.records import PREDICTION_SCHEMA
from warehouse.writer import PREDICTIONS_DIR

VIEW = "predictions"
FEEDBACK_VIEW = "feedback"
EXPERIMENT_RESULTS_VIEW = "experiment_results"
EXPERIMENT_RESULTS_DIR = "analysis/experiment_results"
"""Under the logs root: Parquet files of experiment analyses (``analysis.experiments``)."""
ALERTS_VIEW = "alerts"
ALERTS_DIR = "alerts"
"""Under the logs root: ``events.jsonl``, one alert event a line."""
ALERTS_FILE = "events.jsonl"
_ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("status", "VARCHAR"), ("alertname", "VARCHAR"), ("model", "VARCHAR"),
    ("version", "VARCHAR"), ("severity", "VARCHAR"), ("summary", "VARCHAR"),
    ("description", "VARCHAR"), ("starts_at", "TIMESTAMPTZ"), ("labels", "JSON"),
    ("annotations", "JSON"), ("fingerprint", "VARCHAR"),
)

_INT, _FLOAT = pa.int64(), pa.float64()
EXPERIMENT_RESULTS_SCHEMA: pa.Schema = pa.schema(
    [("analysed_at", pa.timestamp("us", tz="UTC")), ("model", pa.string()),
     ("experiment", pa.string()), ("window_start", pa.timestamp("us", tz="UTC")),
     ("window_end", pa.timestamp("us", tz="UTC")), ("variant", pa.string()),
     ("version", _INT), ("is_control", pa.bool_()), ("weight", _FLOAT)]
    + [(n, _INT) for n in ("units", "anonymous", "requests", "server_errors", "labelled",
                           "correct")]
    + [(n, _FLOAT) for n in ("accuracy", "accuracy_ci_low", "accuracy_ci_high",
                             "accuracy_diff", "accuracy_p_value")]
    + [("rewards", _INT)]
    + [(n, _FLOAT) for n in ("reward_mean", "reward_ci_low", "reward_ci_high", "reward_diff",
                             "reward_p_value", "srm_chi2", "srm_p_value")]
    + [("srm_detected", pa.bool_())]
    + [(n, _INT) for n in ("labelled_needed_per_arm", "labelled_still_needed",
                           "rewards_needed_per_arm", "rewards_still_needed")]
)
"""One row per (analysis run, experiment, variant): the view ``experiment_results``."""

_DUCKDB_TYPES: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.bool_(): "BOOLEAN",
    pa.float64(): "DOUBLE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}

_PARTITION_TYPES = {"model": "VARCHAR", "date": "DATE"}

# Statement types run_query accepts: read-only queries (SELECT, DESCRIBE, SUMMARIZE, SHOW,
# VALUES, FROM-first queries, ...) and EXPLAIN.
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _columns() -> list[tuple[str, str]]:
    """(name, DuckDB type) of the view's columns: partition keys first, then the file schema."""
    columns = list(_PARTITION_TYPES.items())
    columns += [(f.name, _DUCKDB_TYPES[f.type]) for f in PREDICTION_SCHEMA]
    return columns


def _has_files(directory: Path) -> bool:
    return directory.is_dir() and next(directory.glob("**/*.parquet"), None) is not None


def _feedback_source(directory: Path) -> str:
    """Feedback (labels, rewards) by request id: ``model``, ``date`` and the file columns."""
    columns = [("model", "VARCHAR"), ("date", "DATE")] + [
        (f.name, _DUCKDB_TYPES[f.type]) for f in FEEDBACK_SCHEMA
    ]
    names = ", ".join(f'"{n}"' for n, _ in columns)
    if _has_files(directory):
        glob = _sql_string(f"{directory.as_posix()}/**/*.parquet")
        hive_types = ", ".join(f"'{k}': '{v}'" for k, v in _PARTITION_TYPES.items())
        return (
            f"SELECT {names} FROM read_parquet({glob}, hive_partitioning = true, "
            f"union_by_name = true, hive_types = {{{hive_types}}})"
        )
    nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in columns)
    return f"SELECT {nulls} WHERE false"


def _experiment_results_source(directory: Path) -> str:
    """Every experiment analysis written, or an empty relation with the same columns."""
    columns = [(f.name, _DUCKDB_TYPES[f.type]) for f in EXPERIMENT_RESULTS_SCHEMA]
    if _has_files(directory):
        names = ", ".join(f'"{n}"' for n, _ in columns)
        glob = _sql_string(f"{directory.as_posix()}/*.parquet")
        return f"SELECT {names} FROM read_parquet({glob}, union_by_name = true)"
    nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in columns)
    return f"SELECT {nulls} WHERE false"


def _alerts_source(path: Path) -> str:
    """Every alert event, one row each (labels and annotations also as JSON), or no rows."""
    if path.is_file() and path.stat().st_size > 0:
        columns = ("{'status': 'VARCHAR', 'labels': 'JSON', 'annotations': 'JSON', "
                   "'startsAt': 'VARCHAR', 'fingerprint': 'VARCHAR'}")
        return (
            "SELECT status, labels->>'alertname' AS alertname, labels->>'model' AS model, "
            "labels->>'version' AS version, labels->>'severity' AS severity, "
            "annotations->>'summary' AS summary, annotations->>'description' AS description, "
            'CAST("startsAt" AS TIMESTAMPTZ) AS starts_at, labels, annotations, fingerprint '
            f"FROM read_json({_sql_string(path.as_posix())}, format = 'newline_delimited', "
            f"columns = {columns})"
        )
    nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in _ALERT_COLUMNS)
    return f"SELECT {nulls} WHERE false"


def connect(logs_dir: Path, *, sandboxed: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views ``predictions`` and ``feedback``.

    ``sandboxed`` (the default) turns off DuckDB's access to files outside
    ``<logs_dir>/predictions``, to extensions and to the network, and locks the configuration,
    so the connection is safe to run user-supplied SQL on; pass ``False`` to join the log with
    other files.
    """
    directory = Path(logs_dir).absolute() / PREDICTIONS_DIR
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        names = ", ".join(f'"{name}"' for name, _ in _columns())
        if _has_files(directory):
            hive_types = ", ".join(f"'{k}': '{v}'" for k, v in _PARTITION_TYPES.items())
            glob = _sql_string(f"{directory.as_posix()}/**/*.parquet")
            source = (
                f"read_parquet({glob}, hive_partitioning = true, union_by_name = true, "
                f"hive_types = {{{hive_types}}})"
            )
        else:
            typed_nulls = ", ".join(
                f'CAST(NULL AS {sql_type}) AS "{name}"' for name, sql_type in _columns()
            )
            source = f"(SELECT {typed_nulls} WHERE false)"
        con.execute(f"CREATE VIEW {VIEW} AS SELECT {names} FROM {source}")
        feedback_dir = Path(logs_dir).absolute() / FEEDBACK_DIR
        con.execute(f"CREATE VIEW {FEEDBACK_VIEW} AS {_feedback_source(feedback_dir)}")
        results_dir = Path(logs_dir).absolute() / EXPERIMENT_RESULTS_DIR
        con.execute(
            f"CREATE VIEW {EXPERIMENT_RESULTS_VIEW} AS {_experiment_results_source(results_dir)}"
        )
        alerts_dir = Path(logs_dir).absolute() / ALERTS_DIR
        con.execute(f"CREATE VIEW {ALERTS_VIEW} AS {_alerts_source(alerts_dir / ALERTS_FILE)}")
        if sandboxed:
            allowed = ", ".join(
                _sql_string(d.as_posix() + "/")
                for d in (directory, feedback_dir, results_dir, alerts_dir)
            )
            con.execute(f"SET allowed_directories = [{allowed}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET autoinstall_known_extensions = false")
            con.execute("SET autoload_known_extensions = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def run_query(logs_dir: Path, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only SQL statement against the prediction log; return (columns, rows).

    The query sees the view ``predictions`` (see :func:`connect`, sandboxed). Raises
    :class:`~registry.errors.InvalidRequest` with DuckDB's message if the SQL is invalid, and if
    it is not exactly one read-only statement (``SELECT``/``WITH``/``FROM``/``DESCRIBE``/
    ``SUMMARIZE``/``EXPLAIN``...).
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise InvalidRequest(str(exc)) from exc
    if len(statements) != 1:
        raise InvalidRequest(f"query must be exactly one SQL statement, got {len(statements)}")
    if statements[0].type not in _READ_ONLY:
        raise InvalidRequest(
            f"query must be a read-only statement (SELECT), got {statements[0].type.name}"
        )
    con = connect(logs_dir)
    try:
        try:
            cursor = con.execute(query)
            columns = [d[0] for d in cursor.description or []]
            rows = cursor.fetchall()
        except (duckdb.IOException, duckdb.InternalException, duckdb.OutOfMemoryException):
            raise
        except duckdb.Error as exc:
            raise InvalidRequest(str(exc)) from exc
    finally:
        con.close()
    return columns, rows
