"""Querying the warehouse with DuckDB: stable views over the logs (``roost sql``).

:func:`connect` opens an in-memory DuckDB connection (never a ``.duckdb`` file: several processes
share the logs). Parquet views read their file list on every query, so new files show up without
reconnecting; but a view whose directory held no file when the connection was opened is an empty
relation with the same columns, so open a fresh connection to see data written since.
Timestamps are returned in UTC (the connection's ``TimeZone`` is UTC).

Views (columns are stable; new ones are only ever added):

``predictions``
    Every prediction-log row under ``<logs_dir>/predictions`` (hive keys ``model`` VARCHAR and
    ``date`` DATE restored, then :data:`~warehouse.records.PREDICTION_SCHEMA`). Shadow answers
    are rows with ``shadow = true`` under the primary's ``request_id``. ``user_id`` is stored
    pseudonymised when ``ROOST_USER_ID_KEY`` is set (:mod:`warehouse.minimise`)::

        SELECT model, version, count(*), quantile_cont(latency_ms, 0.99) AS p99_ms
        FROM predictions WHERE NOT shadow AND date >= current_date - 7 GROUP BY ALL;

``feedback``
    Labels and rewards (``model``, ``date``, :data:`~warehouse.feedback.FEEDBACK_SCHEMA`); a
    request may have several feedback rows (e.g. a label, later a reward).

``predictions_with_feedback`` / ``shadow_predictions_with_feedback``
    The served (``NOT shadow``) predictions, resp. the shadow answers, each once, LEFT JOINed on
    (``model``, ``request_id``) to that request's feedback folded into one row: ``label`` and
    ``reward`` (the latest non-null of each), ``feedback_ts`` (latest) and ``feedback_rows``
    (0: no feedback). Shadows are kept apart so accuracy over ``predictions_with_feedback`` is
    the callers' accuracy; a shadow answer is scored against the same label::

        SELECT version, avg((outputs->>'$[0].data[0]')::DOUBLE = label) AS accuracy
        FROM shadow_predictions_with_feedback WHERE label IS NOT NULL GROUP BY version;

``audit``
    The registry's hash-chained audit records (``id``, ``ts``, ``actor``, ``action``,
    ``model``, ``version``, ``details`` JSON, ``prev_hash``, ``hash``), materialized from the
    Registry API when :func:`connect` is given one (``roost sql`` does); empty otherwise::

        SELECT ts, details->>'rows_removed' FROM audit WHERE action = 'erase_user';

``drift_scores``
    Parquet files under ``<logs_dir>/monitoring/drift_scores`` in :data:`DRIFT_SCORES_SCHEMA`,
    one row per (model, date, feature, test) evaluation::

        SELECT model, date, share_drifted FROM drift_scores WHERE drifted GROUP BY ALL;

``alerts``
    Alert events (Alertmanager-like JSON lines) in ``<logs_dir>/alerts/events.jsonl`` (see
    :mod:`orchestration.alert_events`); ``ends_at`` is the resolve time (NULL while firing)::

        SELECT alertname, model, starts_at, ends_at FROM alerts WHERE status = 'resolved';

``fairness``
    Fairness of logged decisions (``assets/fairness.py``), Parquet files under
    ``<logs_dir>/monitoring/fairness`` in :data:`FAIRNESS_SCHEMA`, one row per (model, day,
    protected attribute); ``passed = false`` names the violated bars::

        SELECT model, date, attribute, di_ratio FROM fairness WHERE NOT passed;

``experiment_results``
    Experiment analyses under ``<logs_dir>/analysis/experiment_results``
    (:data:`EXPERIMENT_RESULTS_SCHEMA`).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from registry.errors import InvalidRequest
from registry.storage import Location, local_path
from warehouse.feedback import FEEDBACK_DIR, FEEDBACK_SCHEMA
from warehouse.records import PREDICTION_SCHEMA
from warehouse.writer import PREDICTIONS_DIR

if TYPE_CHECKING:
    from registry.service import Registry

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
    ("annotations", "JSON"), ("fingerprint", "VARCHAR"), ("ends_at", "TIMESTAMPTZ"),
)
WITH_FEEDBACK_VIEW = "predictions_with_feedback"
SHADOW_WITH_FEEDBACK_VIEW = "shadow_predictions_with_feedback"
AUDIT_VIEW = "audit"
DRIFT_SCORES_VIEW = "drift_scores"
DRIFT_SCORES_DIR = "monitoring/drift_scores"
"""Under the logs root: Parquet files in :data:`DRIFT_SCORES_SCHEMA` (any names)."""
FAIRNESS_VIEW = "fairness"
FAIRNESS_DIR = "monitoring/fairness"
"""Under the logs root: Parquet files in :data:`FAIRNESS_SCHEMA` (``<model>-<date>.parquet``)."""

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

DRIFT_SCORES_SCHEMA: pa.Schema = pa.schema(
    [("model", pa.string()), ("date", pa.date32()), ("feature", pa.string()),
     ("test", pa.string()), ("statistic", _FLOAT), ("p_value", _FLOAT), ("score", _FLOAT),
     ("threshold", _FLOAT), ("drifted", pa.bool_()), ("share_drifted", _FLOAT),
     ("reference_rows", _INT), ("current_rows", _INT),
     ("computed_at", pa.timestamp("us", tz="UTC"))]
)
"""One row per (model, day of traffic, feature, test): the view ``drift_scores``.

``statistic`` is the test's statistic (KS D, chi-squared, PSI, ...); ``p_value`` its p-value
(NULL for a distance without one); ``score`` the number compared with ``threshold`` (the p-value
for a hypothesis test, drifted when below; the distance otherwise, drifted when above);
``share_drifted`` the share of the model's features drifted that day (the same on each of its
rows); ``reference_rows``/``current_rows`` the sample sizes."""

FAIRNESS_SCHEMA: pa.Schema = pa.schema(
    [("model", pa.string()), ("date", pa.date32()), ("attribute", pa.string()), ("n", _INT),
     ("labelled", _INT), ("groups", _INT), ("favorable_label", _INT), ("di_ratio", _FLOAT),
     ("dp_difference", _FLOAT), ("eo_difference", _FLOAT), ("eop_difference", _FLOAT),
     ("judged", pa.bool_()), ("passed", pa.bool_()), ("violations", pa.string()),
     ("selection_rates", pa.string()), ("computed_at", pa.timestamp("us", tz="UTC"))]
)
"""One row per (model, day, protected attribute): the view ``fairness`` (monitoring/fairness.py
defines the metrics; ``selection_rates`` is a JSON object of favorable rates by group)."""

AUDIT_SCHEMA: pa.Schema = pa.schema(
    [("id", _INT), ("ts", pa.timestamp("us", tz="UTC")), ("actor", pa.string()),
     ("action", pa.string()), ("model", pa.string()), ("version", _INT),
     ("details", pa.string()), ("prev_hash", pa.string()), ("hash", pa.string())]
)
"""The ``audit`` view's columns (``details`` is JSON in the view)."""

_DUCKDB_TYPES: dict[pa.DataType, str] = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.bool_(): "BOOLEAN",
    pa.float64(): "DOUBLE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.date32(): "DATE",
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
        nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in columns)
        return (  # UNION BY NAME: files older than a column (region) read it as NULL
            f"SELECT {names} FROM (FROM (SELECT {nulls} WHERE false) UNION ALL BY NAME "
            f"FROM read_parquet({glob}, hive_partitioning = true, "
            f"union_by_name = true, hive_types = {{{hive_types}}}))"
        )
    nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in columns)
    return f"SELECT {nulls} WHERE false"


def _experiment_results_source(
    directory: Path, schema: pa.Schema = EXPERIMENT_RESULTS_SCHEMA
) -> str:
    """Every Parquet file of ``directory`` in ``schema``, or an empty relation with its columns."""
    columns = [(f.name, _DUCKDB_TYPES[f.type]) for f in schema]
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
                   "'startsAt': 'VARCHAR', 'endsAt': 'VARCHAR', 'fingerprint': 'VARCHAR'}")
        return (
            "SELECT status, labels->>'alertname' AS alertname, labels->>'model' AS model, "
            "labels->>'version' AS version, labels->>'severity' AS severity, "
            "annotations->>'summary' AS summary, annotations->>'description' AS description, "
            'CAST("startsAt" AS TIMESTAMPTZ) AS starts_at, labels, annotations, fingerprint, '
            # Alertmanager's zero time (0001-01-01) means "not resolved"
            "CASE WHEN \"endsAt\" IS NULL OR \"endsAt\" LIKE '0001-%' THEN NULL "
            'ELSE CAST("endsAt" AS TIMESTAMPTZ) END AS ends_at '
            f"FROM read_json({_sql_string(path.as_posix())}, format = 'newline_delimited', "
            f"columns = {columns})"
        )
    nulls = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in _ALERT_COLUMNS)
    return f"SELECT {nulls} WHERE false"


def _with_feedback_source(shadow: bool) -> str:
    """Served (or shadow) predictions, each once, with their feedback folded into one row."""
    return (
        "WITH f AS (SELECT model, request_id, "
        "arg_max(label, ts) FILTER (WHERE label IS NOT NULL) AS label, "
        "arg_max(reward, ts) FILTER (WHERE reward IS NOT NULL) AS reward, "
        f"max(ts) AS feedback_ts, count(*) AS feedback_rows FROM {FEEDBACK_VIEW} "
        "GROUP BY model, request_id) "
        "SELECT p.*, f.label, f.reward, f.feedback_ts, "
        "coalesce(f.feedback_rows, 0) AS feedback_rows "
        f"FROM {VIEW} AS p LEFT JOIN f ON p.model = f.model AND p.request_id = f.request_id "
        f"WHERE {'' if shadow else 'NOT '}p.shadow"
    )


def audit_table(registry: Registry | None) -> pa.Table:
    """The registry's audit records in :data:`AUDIT_SCHEMA` (no rows without a registry)."""
    records = registry.audit_records() if registry is not None else []
    return pa.Table.from_pydict(
        {
            "id": [r.id for r in records],
            "ts": [datetime.fromisoformat(r.ts) for r in records],
            "actor": [r.actor for r in records],
            "action": [r.action for r in records],
            "model": [r.model for r in records],
            "version": [r.version for r in records],
            "details": [json.dumps(r.details, sort_keys=True, default=str) for r in records],
            "prev_hash": [r.prev_hash for r in records],
            "hash": [r.hash for r in records],
        },
        schema=AUDIT_SCHEMA,
    )


def _empty_predictions() -> str:
    typed_nulls = ", ".join(
        f'CAST(NULL AS {sql_type}) AS "{name}"' for name, sql_type in _columns()
    )
    return f"(SELECT {typed_nulls} WHERE false)"


def _object_store_source(con: duckdb.DuckDBPyConnection, location: Location) -> str:
    """The sealed files under ``<location>/predictions`` as an Arrow dataset registered on
    ``con`` (hive keys restored), or an empty relation when there are none."""
    import pyarrow.dataset as ds

    files = location.glob(f"{PREDICTIONS_DIR}/**/*.parquet")
    if not files:
        return _empty_predictions()
    keys = pa.schema([("model", pa.string()), ("date", pa.date32())])
    dataset = ds.dataset(
        files, schema=pa.schema([*PREDICTION_SCHEMA, *keys]), format="parquet",
        filesystem=location.fs, partitioning=ds.partitioning(keys, flavor="hive"),
        partition_base_dir=location.path(PREDICTIONS_DIR),
    )
    con.register("_predictions_files", dataset)
    return "_predictions_files"


def connect(
    logs_dir: Path,
    *,
    sandboxed: bool = True,
    registry: Registry | None = None,
    logs_location: Location | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views listed in this module's docstring.

    ``registry``: the audit records are read from it once, now, into the ``audit`` view (an
    in-memory Arrow table: the registry's SQLite file is never opened by DuckDB); without it,
    ``audit`` is empty.

    ``logs_location`` (:func:`registry.storage.logs_location`): where the sealed prediction
    log lives when it is not ``<logs_dir>/predictions`` (``ROOST_LOGS_URL``). On object storage
    the ``predictions`` view reads the Parquet files through pyarrow and fsspec (DuckDB's own
    S3 support needs an extension download), listed once, when the connection is opened.

    ``sandboxed`` (the default) turns off DuckDB's access to files outside the views'
    directories, to extensions and to the network, and locks the configuration, so the
    connection is safe to run user-supplied SQL on; pass ``False`` to join the log with
    other files.
    """
    directory = Path(logs_dir).absolute() / PREDICTIONS_DIR
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        names = ", ".join(f'"{name}"' for name, _ in _columns())
        if logs_location is not None and logs_location.local:
            directory = local_path(logs_location.url) / PREDICTIONS_DIR
        if logs_location is not None and not logs_location.local:
            source = _object_store_source(con, logs_location)
        elif _has_files(directory):
            hive_types = ", ".join(f"'{k}': '{v}'" for k, v in _PARTITION_TYPES.items())
            glob = _sql_string(f"{directory.as_posix()}/**/*.parquet")
            source = (  # UNION BY NAME: files older than a column (region) read it as NULL
                f"(FROM {_empty_predictions()} UNION ALL BY NAME "
                f"FROM read_parquet({glob}, hive_partitioning = true, union_by_name = true, "
                f"hive_types = {{{hive_types}}}))"
            )
        else:
            source = _empty_predictions()
        con.execute(f"CREATE VIEW {VIEW} AS SELECT {names} FROM {source}")
        feedback_dir = Path(logs_dir).absolute() / FEEDBACK_DIR
        con.execute(f"CREATE VIEW {FEEDBACK_VIEW} AS {_feedback_source(feedback_dir)}")
        results_dir = Path(logs_dir).absolute() / EXPERIMENT_RESULTS_DIR
        con.execute(
            f"CREATE VIEW {EXPERIMENT_RESULTS_VIEW} AS {_experiment_results_source(results_dir)}"
        )
        alerts_dir = Path(logs_dir).absolute() / ALERTS_DIR
        con.execute(f"CREATE VIEW {ALERTS_VIEW} AS {_alerts_source(alerts_dir / ALERTS_FILE)}")
        drift_dir = Path(logs_dir).absolute() / DRIFT_SCORES_DIR
        drift = _experiment_results_source(drift_dir, DRIFT_SCORES_SCHEMA)
        con.execute(f"CREATE VIEW {DRIFT_SCORES_VIEW} AS {drift}")
        fairness_dir = Path(logs_dir).absolute() / FAIRNESS_DIR
        fairness = _experiment_results_source(fairness_dir, FAIRNESS_SCHEMA)
        con.execute(f"CREATE VIEW {FAIRNESS_VIEW} AS {fairness}")
        con.execute(f"CREATE VIEW {WITH_FEEDBACK_VIEW} AS {_with_feedback_source(False)}")
        con.execute(f"CREATE VIEW {SHADOW_WITH_FEEDBACK_VIEW} AS {_with_feedback_source(True)}")
        con.register("_audit_records", audit_table(registry))
        audit_columns = ", ".join(
            f'CAST("{n}" AS JSON) AS "{n}"' if n == "details" else f'"{n}"'
            for n in AUDIT_SCHEMA.names
        )
        con.execute(f"CREATE VIEW {AUDIT_VIEW} AS SELECT {audit_columns} FROM _audit_records")
        if sandboxed:
            allowed = ", ".join(
                _sql_string(d.as_posix() + "/")
                for d in (directory, feedback_dir, results_dir, alerts_dir, drift_dir,
                          fairness_dir)
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


def _check_read_only(query: str) -> None:
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


def run_query(
    logs_dir: Path,
    query: str,
    *,
    registry: Registry | None = None,
    logs_location: Location | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only SQL statement against the prediction log; return (columns, rows).

    The query sees the views of :func:`connect` (sandboxed; ``audit`` from ``registry``). Raises
    :class:`~registry.errors.InvalidRequest` with DuckDB's message if the SQL is invalid, and if
    it is not exactly one read-only statement (``SELECT``/``WITH``/``FROM``/``DESCRIBE``/
    ``SUMMARIZE``/``EXPLAIN``...).
    """
    _check_read_only(query)
    con = connect(logs_dir, registry=registry, logs_location=logs_location)
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


def query_table(
    logs_dir: Path,
    query: str,
    *,
    registry: Registry | None = None,
    logs_location: Location | None = None,
) -> pa.Table:
    """:func:`run_query`'s result as an Arrow table (for ``roost sql --out``)."""
    _check_read_only(query)
    con = connect(logs_dir, registry=registry, logs_location=logs_location)
    try:
        try:
            return con.execute(query).to_arrow_table()
        except (duckdb.IOException, duckdb.InternalException, duckdb.OutOfMemoryException):
            raise
        except duckdb.Error as exc:
            raise InvalidRequest(str(exc)) from exc
    finally:
        con.close()
