"""Roost settings, read from ``ROOST_*`` environment variables.

Every tier takes a :class:`RoostSettings` instance; nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RoostSettings(BaseSettings):
    """Where Roost keeps its state and which ports it listens on."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore")

    home: Path = Field(default=Path(".roost"))
    """Root of all embedded state: registry database, artifacts, prediction logs, Dagster."""

    database_url: str | None = None
    """SQLAlchemy URL of the registry; default is SQLite (WAL) at ``$ROOST_HOME/registry.db``."""

    host: str = "127.0.0.1"
    """Address the gateway and the Dagster webserver bind to."""

    http_port: int = 8000
    """Port of the serving gateway's REST API."""

    grpc_port: int = 8001
    """Port of the serving gateway's gRPC API (Open Inference Protocol v2); 0 disables it."""

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

    warmup_runs: int = 3
    """Warm-up inferences each version runs before the gateway reports it ready."""

    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads per session."""

    execution_provider: str = "auto"
    """ONNX Runtime execution provider: auto (CUDA when the gpu extra finds a GPU), cpu, cuda."""

    actor: str = "roost"
    """Name recorded in audit records for actions that do not say who performed them."""

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"
