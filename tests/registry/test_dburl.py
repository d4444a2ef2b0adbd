"""Registry URLs with several PostgreSQL hosts, and the 503 of an unreachable registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway_process import free_port
from sqlalchemy import create_engine

from registry import Registry, RoostSettings
from registry.dburl import RegistryUnavailable, libpq_conninfo, sqlalchemy_url

MULTI = "postgresql+psycopg://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u@/db?host=h1:5432,h2:5433&target_session_attrs=read-write",
        "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgres://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
    ],
)
def test_host_lists_become_the_dialects_form(url: str) -> None:
    assert sqlalchemy_url(url) == MULTI
    args = create_engine(sqlalchemy_url(url)).dialect.create_connect_args(
        create_engine(sqlalchemy_url(url)).url
    )[1]
    assert (args["host"], args["port"], args["target_session_attrs"]) == (
        "h1,h2", "5432,5433", "read-write",
    )  # fmt: skip
    conninfo = libpq_conninfo(url)
    for part in ("host=h1,h2", "port=5432,5433", "target_session_attrs=read-write", "dbname=db"):
        assert part in conninfo


def test_other_urls_are_left_alone() -> None:
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"
    single = "postgresql+psycopg://postgres@127.0.0.1:5432/roost"
    assert sqlalchemy_url(single) == single
    assert sqlalchemy_url("postgresql+psycopg://u@/db?host=h1,h2&port=1,2").endswith(
        "host=h1,h2&port=1,2"
    )


def test_settings_read_url_and_region(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RoostSettings(home=tmp_path).region == "local"
    monkeypatch.setenv("ROOST_REGION", "eu")
    monkeypatch.setenv("ROOST_DATABASE_READ_URL", "postgresql://u@standby/db")
    settings = RoostSettings(home=tmp_path)
    assert settings.region == "eu"
    assert settings.database_read_url == "postgresql://u@standby/db"


def test_unreachable_registry_is_a_503(postgres_url: str, tmp_path: Path) -> None:
    """Reads and writes against servers that do not answer: RegistryUnavailable, not a trace."""
    registry = Registry(postgres_url, tmp_path / "artifacts")  # schema is there
    registry.close()
    dead = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    nowhere = postgres_url.split("@")[0] + f"@/{postgres_url.rsplit('/', 1)[1]}?host={dead}"
    # the schema check reads through the (reachable) read URL, the writes go nowhere
    registry = Registry(nowhere, tmp_path / "artifacts", read_url=postgres_url)
    try:
        assert registry.generation() == 0
        with pytest.raises(RegistryUnavailable, match="read-only or unreachable") as caught:
            registry.record_event("probe")
        assert caught.value.to_http()[0] == 503
    finally:
        registry.close()
    with pytest.raises(RegistryUnavailable, match="checking the schema failed"):
        Registry(postgres_url, tmp_path / "artifacts", read_url=nowhere)
