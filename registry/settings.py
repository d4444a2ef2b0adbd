"""Roost settings, read from ``ROOST_*`` environment variables.

Every tier takes a :class:`RoostSettings` instance; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class RoostSettings(BaseSettings):
    """Where Roost keeps its state and which ports it listens on."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore")

    home: Path = Field(default=Path(".roost"))
    """Root of all embedded state: registry database, artifacts, prediction logs, Dagster."""

    database_url: str | None = None
    """SQLAlchemy URL of the registry; default is SQLite (WAL) at ``$ROOST_HOME/registry.db``.

    Every registry write goes here. For a PostgreSQL primary with standbys, name every server
    and let libpq find the writable one (after a failover too)::

        postgresql+psycopg://roost@/roost?host=pg-a:5432,pg-b:5432&target_session_attrs=read-write

    (``host=h1:p1&host=h2:p2`` and the libpq form ``postgresql://u@h1:p1,h2:p2/db`` work too;
    see :mod:`registry.dburl`)."""

    database_read_url: str | None = None
    """Where this process *reads* the registry (``ROOST_DATABASE_READ_URL``); unset: the
    ``database_url``. Meant for gateways outside the primary region: their polls and routing
    table snapshots read a local streaming replica (hot standby), e.g.
    ``...?host=standby:5432,primary:5432&target_session_attrs=prefer-standby``, while their
    writes (admin API, bandit rewards) still go to ``database_url``. Reads from a replica lag
    the primary by the replication lag (docs/architecture.md, "Multi-region")."""

    region: str = "local"
    """The region this process runs in (``ROOST_REGION``; the Kubernetes overlays set it):
    stamped on every prediction-log and feedback row (the ``region`` column). Each region
    keeps its own prediction log (its own ``ROOST_HOME`` / ``ROOST_LOGS_URL`` bucket)."""

    residency_policy: Path | None = None
    """``ROOST_RESIDENCY_POLICY``: a YAML file pinning models and users to regions (``models:
    {fraud: [eu]}``, ``users: {<id>: [eu]}``) and naming object-store log locations' regions
    (``storage_regions: {"s3://logs-eu/": eu}``); see serving/governance.py."""

    consent_refresh_s: float = Field(default=5.0, ge=0.0)
    """``ROOST_CONSENT_REFRESH_S``: how stale a gateway's view of logging-consent withdrawals
    may be (registry/consent.py); 0 reads the registry on every request of a known user."""

    host: str = "127.0.0.1"
    """Address the gateway and the Dagster webserver bind to."""

    http_port: int = 8000
    """Port of the serving gateway's REST API."""

    grpc_port: int = 8001
    """Port of the serving gateway's gRPC API (Open Inference Protocol v2); 0 disables it."""

    grpc_processes: int = Field(default=0, ge=0, le=64)
    """``ROOST_GRPC_PROCESSES``: serve gRPC from this many processes of its own, sharing
    ``grpc_port`` (each loads the same models and logs its own predictions), instead of on each
    gateway worker's event loop (0). Per gateway worker (see serving/grpc_processes.py)."""

    grpc_server: Literal["grpcio", "grpclib"] = "grpcio"
    """``ROOST_GRPC_SERVER``: the gRPC implementation on the event loop: ``grpcio``
    (``grpc.aio``) or ``grpclib`` (pure asyncio, no poller thread: less CPU per call and more
    calls per second with many in flight, fewer with a few; serving/grpc_grpclib.py, and
    docs/grpc.md for the measured difference)."""

    dagster_port: int = 3000
    """Port of the Dagster webserver that ``roost up`` starts."""

    workers: int = 1
    """Gateway processes sharing the ports (``roost serve --workers``)."""

    poll_interval_s: float = 1.0
    """How often the gateway polls the registry's generation counter for deployment changes."""

    log_flush_rows: int = 5000
    """The prediction log writes a Parquet file once this many rows are buffered."""

    log_flush_interval_s: float = 2.0
    """... or once the oldest buffered row is this old."""

    log_durability: Literal["fsync", "write", "buffered"] = "fsync"
    """When the gateway answers relative to its prediction-log record (``ROOST_LOG_DURABILITY``;
    the trio of MySQL's ``innodb_flush_log_at_trx_commit`` 1 / 2 / 0, see docs/durability.md).

    ``fsync`` (default, RPO 0): the record is written to the write-ahead log and the response is
    sent only after the fdatasync covering it; concurrent requests share one sync (group
    commit). ``write``: the response is sent once the record is written to the log file
    (``write(2)``): a killed or crashed process loses nothing, a power loss or kernel crash at
    most the last ``log_sync_interval_ms`` (a background fdatasync follows within it).
    ``buffered``: the record is written to the log without waiting and without any fsync; a
    crash of the process loses the records of the last moments, a crash of the machine whatever
    the kernel had not written back yet. Costs: benchmarks/durability.py.
    """

    log_sync_interval_ms: float = Field(default=5.0, gt=0, le=1000)
    """``log_durability: write``: the longest a written record waits for its background
    fdatasync (``ROOST_LOG_SYNC_INTERVAL_MS``); what a power loss can take."""

    log_segment_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    """A write-ahead-log segment is sealed into Parquet at this size (or at ``log_flush_rows``
    rows, or when its first row is ``log_flush_interval_s`` old)."""

    drain_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long in-flight requests (REST and gRPC) may take to finish before they
    are cancelled; then the prediction log is sealed and the process exits 0. REST takes it in
    whole seconds (uvicorn's ``timeout_graceful_shutdown``, rounded up, at least 1)."""

    drain_delay_s: float = Field(default=0.0, ge=0)
    """On SIGTERM, how long the gateway keeps listening (readiness and new inference requests
    answered 503 ``draining``) before it stops accepting connections, so load balancers see
    it leave; the grace period for in-flight requests starts after this."""

    warmup_runs: int = 3
    """Warm-up inferences each version runs before the gateway reports it ready."""

    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads per session."""

    execution_provider: str = "auto"
    """ONNX Runtime execution provider: auto (CUDA when the gpu extra finds a GPU), cpu, cuda."""

    shadow_queue_size: int = 1000
    """Mirrored requests that may wait for their shadow version; more are dropped and counted."""

    shadow_concurrency: int = 64
    """Mirrored copies in flight at once (their shadow version's batcher merges them)."""

    auth_required: bool = False
    """Require an API key for predictions and reads too (admin actions always need one)."""

    dev_mode: bool = False
    """Accept the well-known dev key (``roost-dev-key``) as an admin key. Never in production."""

    actor: str = "roost"
    """Name recorded in audit records for actions that do not say who performed them."""

    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body the gateway reads, on every REST route (``Content-Length`` or the
    bytes actually sent; more gets 413) and per gRPC message (more gets RESOURCE_EXHAUSTED)."""

    gil_switch_interval_ms: float = Field(default=0.0, ge=0, le=100)
    """``sys.setswitchinterval`` while a gateway serves (``ROOST_GIL_SWITCH_INTERVAL_MS``); 0
    (the default) leaves the interpreter's own, 5 ms. A shorter interval bounds how long a
    background thread running Python (a WAL seal, a registry poll) keeps the event loop
    waiting, but every hand-off costs: measured side by side (benchmarks/peers.py, RESULTS
    S4.1) 0.25 ms cost 6 % of the req/s at 1 and 8 connections and 22 % at 64, for no better
    p99, so it is not the default (docs/latency.md)."""

    max_inflight_requests: int = Field(default=128, ge=0)
    """REST inference requests one gateway process works on at once, from admission to the
    last byte of the answer (``ROOST_MAX_INFLIGHT_REQUESTS``); one more is answered 503
    ``overloaded`` with Retry-After at once, before its body is read (serving/shedding.py).
    0: no limit (each version's ``max_queue_size`` still bounds its queue). The default comes
    from a 10x burst on 1,000 connections (docs/load-shedding.md): against no limit it answered
    1.8x the 200s with a third of the 504s. Raise it for slow or remote backends, where
    throughput per process is this many requests per answer time."""

    max_tensor_elements: int = Field(default=16 * 1024 * 1024, ge=1)
    """Most elements one input tensor may have (the product of its shape), and the largest
    single dimension; a request over it gets 400 naming the input before anything is
    allocated."""

    max_json_depth: int = Field(default=64, ge=8, le=200)
    """How deeply a request's JSON may nest (objects and arrays, counted from the document's
    root); deeper gets 400. The JSON serializer that writes the prediction log stops at 254."""

    explain_max_rows: int = Field(default=20, ge=1)
    """Rows one ``:explain`` / ``/explain`` request may ask for (``ROOST_EXPLAIN_MAX_ROWS``);
    more is answered 413 naming this setting."""

    explain_max_evals: int = Field(default=2000, ge=3)
    """Model evaluations per explained row at most (``ROOST_EXPLAIN_MAX_EVALS``; each runs the
    background sample); a request's ``max_evals`` above it is answered 400."""

    explain_timeout_s: float = Field(default=10.0, gt=0)
    """Wall-clock budget of one explanation (``ROOST_EXPLAIN_TIMEOUT_S``); past it: 504."""

    explain_background_rows: int = Field(default=100, ge=1)
    """Rows of the background sample stored with a version for its explanations."""

    scope: Literal["production", "staging"] = "production"
    """Which versions the gateway serves (``ROOST_SCOPE``). ``production``: the deployment table
    (production, canary, experiments, shadows). ``staging``: per model, the versions in STAGING
    or STAGING_TESTED, the highest answering unpinned requests, so a candidate can be exercised
    by a second gateway beside production (see :mod:`serving.scope`). A staging gateway keeps its
    prediction log apart, in ``$ROOST_HOME/logs-staging`` (see :attr:`logs_dir`)."""

    serve_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Serve only these models (``ROOST_SERVE_MODELS``, comma-separated); empty: every model."""

    canary_tick_s: int = Field(default=30, ge=1)
    """How often the canary sensor looks at every running canary (``ROOST_CANARY_TICK_S``,
    seconds; the sensor's ``minimum_interval_seconds``)."""

    alert_tick_s: int = Field(default=60, ge=1)
    """How often the alert sensor evaluates the alert rules and delivers to webhooks
    (``ROOST_ALERT_TICK_S``, seconds; the sensor's ``minimum_interval_seconds``)."""

    alert_rules: Path | None = None
    """The alert rules and receivers (``ROOST_ALERT_RULES``, a YAML file); unset:
    ``$ROOST_HOME/alerts.yaml`` when it exists, else the shipped defaults (see
    :mod:`monitoring.alerts.config`)."""

    experiment_schedule: str = "0 * * * *"
    """Cron schedule of the experiment analysis asset (``ROOST_EXPERIMENT_SCHEDULE``; hourly)."""

    experiment_window_days: float = Field(default=30.0, gt=0)
    """How far back the experiment analysis reads each running experiment's requests."""

    prediction_retention_days: int = Field(default=30, ge=1)
    """Days the prediction log and feedback are kept (``ROOST_PREDICTION_RETENTION_DAYS``): the
    retention asset deletes a ``date=`` partition once it is more than this many days before
    today (UTC); see :mod:`warehouse.retention`."""

    feature_retention_days: int = Field(default=7, ge=1)
    """Days dated feature data is kept (``ROOST_FEATURE_RETENTION_DAYS``): ``date=`` partitions
    under ``$ROOST_HOME/features`` (see :mod:`warehouse.retention`)."""

    retention_schedule: str = "30 3 * * *"
    """Cron schedule of the retention asset (``ROOST_RETENTION_SCHEDULE``; daily, 03:30 UTC)."""

    user_id_key: SecretStr | None = None
    """Secret key user ids are stored under (``ROOST_USER_ID_KEY``): the prediction log keeps
    ``HMAC-SHA256(key, user_id)``, never the id (see :mod:`warehouse.minimise`). Unset: ids are
    stored as given and the gateway warns; set it in production."""

    artifacts_url: str | None = None
    """Where the artifact store lives (``ROOST_ARTIFACTS_URL``), an fsspec URL: default
    ``file://$ROOST_HOME/artifacts``; ``s3://bucket/prefix`` for a cluster (the ``s3`` extra).
    See :attr:`artifacts_location` and docs/architecture.md, "Object storage"."""

    logs_url: str | None = None
    """Where sealed prediction-log Parquet files go (``ROOST_LOGS_URL``), an fsspec URL: default
    ``file://$ROOST_HOME/logs``; ``s3://bucket/prefix`` for a cluster. The write-ahead log,
    feedback, alerts and analyses stay on local disk in :attr:`logs_dir`."""

    s3_endpoint_url: str | None = None
    """S3 endpoint for ``s3://`` URLs (``ROOST_S3_ENDPOINT_URL``), e.g. MinIO or the test
    suite's moto server; unset: AWS. Credentials come from the usual ``AWS_*`` variables."""

    deprecated_retention_days: float = Field(default=30.0, ge=0)
    """Days a DEPRECATED version is kept before the registry GC archives it and deletes its
    artifact (``ROOST_DEPRECATED_RETENTION_DAYS``; see :mod:`assets.registry_gc`)."""

    registry_gc_schedule: str = "15 4 * * *"
    """Cron schedule of the registry GC asset (``ROOST_REGISTRY_GC_SCHEDULE``; daily 04:15)."""

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("serve_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def logs_dir(self) -> Path:
        """The prediction log (and feedback) of this scope's gateways: ``$ROOST_HOME/logs`` for
        production, ``$ROOST_HOME/logs-<scope>`` for any other scope, so staging traffic never
        mixes with production's in monitoring, drift and training data."""
        if self.scope == "production":
            return self.home / "logs"
        return self.home / f"logs-{self.scope}"

    @property
    def artifacts_location(self) -> str:
        """The artifact store's URL: ``artifacts_url`` or ``file://<artifacts_dir>``."""
        return self.artifacts_url or self.artifacts_dir.as_uri()

    @property
    def logs_location(self) -> str:
        """Where this scope's sealed prediction log goes: ``logs_url`` (``<logs_url>-<scope>``
        for a scope other than production) or ``file://<logs_dir>``."""
        if not self.logs_url:
            return self.logs_dir.as_uri()
        if self.scope == "production":
            return self.logs_url
        return f"{self.logs_url.rstrip('/')}-{self.scope}"

    @property
    def artifact_cache_dir(self) -> Path:
        """Local copies of artifacts fetched from object storage, by sha256."""
        return self.home / "cache" / "artifacts"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


# -- where the command line finds its home ------------------------------------------------------

HOME_DIR = ".roost"
"""Name of the folder that holds a project's embedded state (``roost up`` creates it)."""

REGISTRY_FILE = "registry.db"


@dataclass(frozen=True)
class HomeLookup:
    """Which home the ``roost`` CLI uses and why (:func:`find_home`)."""

    path: Path
    source: Literal["ROOST_HOME", "found", "default"]
    """``ROOST_HOME``: the variable is set; ``found``: a ``.roost/`` holding a ``registry.db`` at
    or above the start directory; ``default``: neither, so ``./.roost`` (maybe not created yet)."""
    start: Path
    """The directory the search started from."""

    def describe(self) -> str:
        """One phrase saying where the home came from, for messages."""
        if self.source == "ROOST_HOME":
            return f"ROOST_HOME={self.path}"
        if self.source == "found":
            return f"found {self.path} above {self.start}"
        return (
            f"ROOST_HOME is not set and no {HOME_DIR}/{REGISTRY_FILE} exists in {self.start} "
            "or its parents"
        )


def find_home(
    start: Path | None = None, environ: Mapping[str, str] | None = None
) -> HomeLookup:
    """The home the CLI uses, found like git finds its repository.

    1. ``ROOST_HOME`` when set (a relative path is taken from the start directory);
    2. else the nearest ``.roost/`` folder that holds a ``registry.db``, in the start directory
       (default: the current one) or any of its parents;
    3. else ``.roost`` in the start directory (``roost up`` / ``roost register`` create it there).
    """
    env = os.environ if environ is None else environ
    here = (start or Path.cwd()).resolve()
    explicit = env.get("ROOST_HOME")
    if explicit:
        return HomeLookup((here / Path(explicit).expanduser()).resolve(), "ROOST_HOME", here)
    for folder in (here, *here.parents):
        candidate = folder / HOME_DIR
        if (candidate / REGISTRY_FILE).is_file():
            return HomeLookup(candidate, "found", here)
    return HomeLookup(here / HOME_DIR, "default", here)


def cli_home_line(settings: RoostSettings) -> str:
    """The line ``make up``'s banner prints about how the ``roost`` CLI finds this home."""
    return (
        f"The roost CLI uses $ROOST_HOME, else the nearest {HOME_DIR}/ with a {REGISTRY_FILE} at "
        f"or above the current directory; elsewhere: export ROOST_HOME={settings.home}"
    )
