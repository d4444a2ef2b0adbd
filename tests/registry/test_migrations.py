"""The registry schema is Alembic's, on SQLite and PostgreSQL alike.

A fresh database is migrated to head and matches registry/tables.py exactly; a database made by
the ``create_all`` of commit 6e9d884 (before the rollouts table, before Alembic) is stamped at
the baseline and upgraded when the current registry opens it, its data and audit chain intact;
one made by a later ``create_all`` (with rollouts) is recognised as such; processes opening an
empty database at once migrate it once; ``roost db current`` / ``roost db upgrade`` report and
do the same.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cli_testing import roost
from postgres import PostgresServer
from roost_testing import make_linear_onnx
from sqlalchemy import MetaData, create_engine, inspect
from sqlalchemy.orm import Session

from registry import Registry, audit, migrations
from registry.artifacts import ArtifactStore, sha256_bytes
from registry.tables import Base, ModelRow, VersionRow

OLD_COMMIT = "6e9d884"
REPO = Path(__file__).resolve().parents[2]


def old_metadata() -> MetaData:
    """The tables of registry/tables.py at 6e9d884 (from git; without history: today's tables
    minus the rollouts table, which is the only difference)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:registry/tables.py"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        old = MetaData()
        for table in Base.metadata.sorted_tables:
            if table.name != "rollouts":
                table.to_metadata(old)
        return old
    module = types.ModuleType("roost_tables_6e9d884")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "tables_6e9d884.py", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    metadata: MetaData = module.Base.metadata
    return metadata


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables at all)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


def schema_diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_fresh_database_is_migrated_to_head_matching_the_tables(
    empty_url: str, tmp_path: Path
) -> None:
    registry = Registry(empty_url, tmp_path / "artifacts")
    try:
        assert migrations.current_of(registry.engine) == migrations.head()
        assert registry.generation() == 0
    finally:
        registry.close()
    assert schema_diff(empty_url) == []


def test_old_create_all_database_is_stamped_upgraded_and_intact(
    empty_url: str, tmp_path: Path
) -> None:
    old = old_metadata()
    assert "rollouts" not in old.tables and "versions" in old.tables
    engine = create_engine(empty_url)
    data = make_linear_onnx(seed=3)
    ArtifactStore(tmp_path / "artifacts").put(data)
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(old.tables["counters"].insert().values(name="generation", value=7))
    with Session(engine) as session, session.begin():  # rows as the old registry wrote them
        session.add(ModelRow(name="m", description="old"))
        session.flush()
        session.add(
            VersionRow(
                model="m",
                version=1,
                sha256=sha256_bytes(data),
                size_bytes=len(data),
                state="registered",
                signature={"inputs": [], "outputs": []},
                registered_by="old",
            )
        )
        audit.append(session, actor="old", action="register", model="m", version=1)
    with engine.connect() as conn:
        assert not inspect(conn).has_table("alembic_version")
    engine.dispose()

    registry = Registry(empty_url, tmp_path / "artifacts")
    try:
        assert migrations.current_of(registry.engine) == migrations.head()
        assert registry.generation() == 7
        assert [m.name for m in registry.list_models()] == ["m"]
        records = registry.audit_records()
        assert [(r.actor, r.action) for r in records] == [("old", "register")]
        assert registry.audit_verify().ok
        # the new table works and the chain keeps verifying across the upgrade
        registry.register_version("m", make_linear_onnx(seed=4), registered_by="new")
        assert registry.get_rollout("m") is None
        assert registry.audit_verify().ok
        assert registry.generation() == 7
    finally:
        registry.close()
    assert schema_diff(empty_url) == []


def test_rollouts_era_create_all_database_is_recognised(empty_url: str, tmp_path: Path) -> None:
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
    result = migrations.upgrade(engine)
    engine.dispose()
    assert result.stamped == "0002_rollouts" and result.after == migrations.head()
    assert schema_diff(empty_url) == []


def test_concurrent_opens_of_an_empty_database_migrate_it_once(
    empty_url: str, tmp_path: Path
) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_one() -> None:
        try:
            barrier.wait()
            Registry(empty_url, tmp_path / "artifacts").close()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    registry = Registry(empty_url, tmp_path / "artifacts")
    try:
        assert registry.generation() == 0
        assert migrations.current_of(registry.engine) == migrations.head()
    finally:
        registry.close()


def test_roost_db_current_and_upgrade(tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = roost(home, "db", "current")
    assert missing.returncode == 1 and "no registry database" in missing.stderr
    first = roost(home, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert f"upgraded from an empty database to {migrations.head()}" in first.stdout
    again = roost(home, "db", "upgrade")
    assert "already at" in again.stdout
    current = roost(home, "db", "current")
    assert current.returncode == 0 and f"revision: {migrations.head()} (head)" in current.stdout
