"""``roost db upgrade`` and ``roost db current``: the registry schema (registry/migrations).

The registry upgrades its database whenever it opens one, so ``upgrade`` is for doing it ahead
of a rollout (e.g. one job before the gateways of a new release start on a shared PostgreSQL);
``current`` reports the database's revision and the newest one, and never creates a database.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url

from registry import migrations
from registry.service import _make_engine
from registry.settings import RoostSettings


def _settings() -> RoostSettings:
    settings: RoostSettings = importlib.import_module("orchestration.cli")._settings()
    return settings


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_file(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def add_db_commands(main: click.Group) -> None:
    @main.group()
    def db() -> None:
        """The registry's database schema (Alembic migrations)."""

    @db.command("current")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def db_current(as_json: bool) -> None:
        """Print the database's schema revision and the newest one."""
        url = _settings().registry_url
        path = _sqlite_file(url)
        if path is not None and not path.is_file():
            click.echo(f"error: no registry database at {path}", err=True)
            sys.exit(1)
        engine = _make_engine(url, immediate=False)
        try:
            revision = migrations.current_of(engine)
        finally:
            engine.dispose()
        out: dict[str, Any] = {
            "database": _shown(url),
            "revision": revision,
            "head": migrations.head(),
            "up_to_date": revision == migrations.head(),
        }
        if as_json:
            click.echo(json.dumps(out, indent=2))
            return
        click.echo(f"database: {out['database']}")
        if revision is None:
            click.echo("revision: none (not migrated yet; `roost db upgrade` adopts it)")
        elif out["up_to_date"]:
            click.echo(f"revision: {revision} (head)")
        else:
            click.echo(f"revision: {revision} (head is {out['head']}: run `roost db upgrade`)")

    @db.command("upgrade")
    def db_upgrade() -> None:
        """Upgrade the database to the newest schema revision (creating it if need be)."""
        url = _settings().registry_url
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = _make_engine(url, immediate=True)
        try:
            result = migrations.upgrade(engine)
        finally:
            engine.dispose()
        where = _shown(url)
        if result.stamped:
            click.echo(f"{where}: created before migrations; recognised as {result.stamped}")
        if result.changed or result.stamped:
            since = result.stamped or result.before or "an empty database"
            click.echo(f"{where}: upgraded from {since} to {result.after}")
        else:
            click.echo(f"{where}: already at {result.after} (head)")
