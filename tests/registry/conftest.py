"""The registry tests run against BOTH backends: every test that takes ``settings`` (and so
``registry``) runs once on a SQLite file and once on a PostgreSQL database of its own (from
the session's server, tests/support/postgres.py; emptied and reused between tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import RoostSettings

# These tamper with the SQLite file through sqlite3; test_postgres_race.py tampers on PostgreSQL.
SQLITE_FILE_TESTS = {"test_audit_chain_detects_tampering", "test_audit_verify_reports_mangled_json"}
# Nothing in these depends on the database: once (on SQLite) is enough.
BACKEND_INDEPENDENT = {"test_onnx_rewrite.py"}


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> RoostSettings:
    if request.param == "sqlite":
        return RoostSettings(home=tmp_path / "roost")
    if getattr(request.node, "originalname", "") in SQLITE_FILE_TESTS:
        pytest.skip("edits registry.db with sqlite3 (the PostgreSQL twin: test_postgres_race)")
    if request.path.name in BACKEND_INDEPENDENT:
        pytest.skip("does not depend on the registry database: runs on SQLite only")
    url: str = request.getfixturevalue("postgres_url")
    return RoostSettings(home=tmp_path / "roost", database_url=url)
