"""Alembic environment of the registry, configured in code (no alembic.ini).

:func:`registry.migrations.upgrade` (the registry's open path, ``roost db upgrade``) passes the
connection it holds, inside a transaction that already serialises migrators, as
``config.attributes["connection"]``; without one (a developer running ``alembic`` by hand) the
database is ``ROOST_DATABASE_URL`` or the default SQLite file of ``ROOST_HOME``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from registry.settings import RoostSettings
from registry.tables import Base


def run(connection: object) -> None:
    from sqlalchemy.engine import Connection

    assert isinstance(connection, Connection)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs copy the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    engine = create_engine(RoostSettings().registry_url)
    try:
        with engine.begin() as conn:
            run(conn)
    finally:
        engine.dispose()
