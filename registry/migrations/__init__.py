"""The registry schema, managed by Alembic on SQLite and PostgreSQL alike.

:func:`upgrade` brings a database to the newest revision; the registry calls it when it opens
(``roost db upgrade`` does it explicitly, ``roost db current`` reports). It runs in ONE
transaction that first serialises migrators (PostgreSQL: an advisory transaction lock; SQLite:
the ``BEGIN IMMEDIATE`` of the registry's write engine), so processes opening a fresh database
at once do not race. A database created by the ``create_all`` of earlier releases has no
``alembic_version`` table: it is stamped at the newest revision whose tables it has (see
``LEGACY_STAMPS``) and upgraded from there. The generation counter row is created here too.

The environment is configured in code (``env.py``); revisions live in ``versions/``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, insert, inspect, select

from registry.tables import CounterRow

HERE = Path(__file__).resolve().parent
BASELINE = "0001_baseline"
# Databases made by create_all: (revision, a table that revision added), newest first.
LEGACY_STAMPS: tuple[tuple[str, str], ...] = (("0002_rollouts", "rollouts"), (BASELINE, "models"))
ADVISORY_LOCK = 0x526F6F7374  # "Roost": one migrator at a time per PostgreSQL database


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None  # None: an empty database (or one made by create_all, see ``stamped``)
    after: str
    stamped: str | None = None  # the revision a create_all database was recognised as

    @property
    def changed(self) -> bool:
        return self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this package; ``connection`` is the one env.py uses."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head() -> str:
    """The newest revision."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision (None: not managed by Alembic yet)."""
    return MigrationContext.configure(connection).get_current_revision()


def current_of(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return current(conn)


def upgrade(engine: Engine, *, check: Engine | None = None) -> UpgradeResult:
    """Bring the database of ``engine`` to :func:`head` (``check``: an engine for the cheap
    read that skips everything when it is there already)."""
    before = current_of(check or engine)
    if before == head():
        return UpgradeResult(before, before)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")
        before = current(conn)  # again, now that no other migrator runs
        stamped = None
        if before is None:
            tables = set(inspect(conn).get_table_names())
            stamped = next((rev for rev, table in LEGACY_STAMPS if table in tables), None)
            if stamped is not None:
                command.stamp(alembic_config(conn), stamped)
        if current(conn) != head():
            command.upgrade(alembic_config(conn), "head")
        counter = select(CounterRow.name).where(CounterRow.name == "generation")
        if conn.execute(counter).first() is None:
            conn.execute(insert(CounterRow).values(name="generation", value=0))
        return UpgradeResult(before, head(), stamped)
