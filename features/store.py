"""Build Roost's Feast store from ``features/feature_store.yaml`` for a given Roost home.

:class:`FeatureSettings` says where the store lives (``ROOST_HOME``) and which online store it
uses (SQLite under the home, or Redis when ``ROOST_REDIS_URL`` is set). :func:`build_store`
turns them into a :class:`feast.FeatureStore` without touching the process environment, so
tests build stores in temporary directories; :func:`apply_definitions` registers the
declarative objects of :mod:`features.definitions`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # Feast takes seconds to import: only the functions that need it do
    from feast import FeatureStore, RepoConfig

FEATURE_STORE_YAML = Path(__file__).with_name("feature_store.yaml")

# Serving fails fast when Redis is away: no retries with back-off (redis-py's default waits
# seconds), short timeouts. Any of these given in ROOST_REDIS_URL wins.
REDIS_DEFAULTS: dict[str, str] = {
    "socket_connect_timeout": "0.5",
    "socket_timeout": "1.0",
    "retry": "null",
}


class FeatureSettings(BaseSettings):
    """Where the feature store keeps its state; read from ``ROOST_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore")

    home: Path = Field(default=Path(".roost"))
    """Roost's home; the feature repository's data lives in ``$ROOST_HOME/features``."""

    redis_url: str | None = None
    """Redis online store: ``redis://[:password@]host:port[/db]`` or Feast's own
    ``host:port[,db=0,password=...]``. Unset: SQLite at ``$ROOST_HOME/features/online_store.db``."""

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value and "://" in value and urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError(f"redis_url: expected redis:// or rediss://, got {value!r}")
        return value or None

    @property
    def repo_path(self) -> Path:
        return self.home / "features"

    @property
    def online_store_kind(self) -> str:
        return "redis" if self.redis_url else "sqlite"

    def describe_online_store(self) -> str:
        """The online store in words, for error messages (no password)."""
        if self.redis_url:
            startup, _ = _split_connection_string(redis_connection_string(self.redis_url))
            return f"Redis online store at {startup}"
        return f"SQLite online store at {self.repo_path / 'online_store.db'}"


def _split_connection_string(value: str) -> tuple[str, dict[str, str]]:
    parts = [p for p in value.split(",") if p]
    nodes = ",".join(p for p in parts if "=" not in p)
    params = dict(p.split("=", 1) for p in parts if "=" in p)
    return nodes, params


def redis_connection_string(url: str) -> str:
    """Feast's Redis connection string for a ``redis://`` URL (or a Feast string), with the
    fail-fast defaults of :data:`REDIS_DEFAULTS` where the URL does not set them."""
    if "://" in url:
        parts = urlsplit(url)
        nodes = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        params: dict[str, str] = {}
        db = parts.path.lstrip("/")
        if db:
            params["db"] = db
        if parts.username:
            params["username"] = unquote(parts.username)
        if parts.password:
            params["password"] = unquote(parts.password)
        if parts.scheme == "rediss":
            params["ssl"] = "true"
    else:
        nodes, params = _split_connection_string(url)
    params = {**REDIS_DEFAULTS, **params}
    return ",".join([nodes, *(f"{k}={v}" for k, v in params.items())])


def repo_config(settings: FeatureSettings) -> RepoConfig:
    """The repository's ``feature_store.yaml`` for ``settings``: ``${ROOST_HOME}`` is the
    settings' home (not the process environment) and Redis replaces SQLite when configured."""
    from feast import RepoConfig

    text = FEATURE_STORE_YAML.read_text(encoding="utf-8")
    raw: dict[str, Any] = yaml.safe_load(text.replace("${ROOST_HOME}", str(settings.home)))
    if settings.redis_url:
        raw["online_store"] = {
            "type": "redis",
            "connection_string": redis_connection_string(settings.redis_url),
        }
    config = RepoConfig(**raw)
    config.repo_path = settings.repo_path
    return config


def build_store(settings: FeatureSettings) -> FeatureStore:
    """A Feast store for ``settings``; creates ``$ROOST_HOME/features`` if needed."""
    from feast import FeatureStore

    settings.repo_path.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.repo_path), config=repo_config(settings))


@contextmanager
def quiet_feast() -> Iterator[None]:
    """Silence the RuntimeWarning Feast gives on every apply and offline retrieval that involves
    an on-demand feature view ("experimental ... does not scale well for offline retrieval")."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="On demand feature view is an experimental", category=RuntimeWarning
        )
        yield


def apply_definitions(store: FeatureStore) -> None:
    """Register every object of :mod:`features.definitions` (idempotent)."""
    from features.definitions import OBJECTS

    with quiet_feast():
        store.apply(OBJECTS)
