"""Shared fixtures: a real registry in a temporary ROOST_HOME and small real ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

# prometheus_client picks its value storage when first imported; Feast sets
# PROMETHEUS_MULTIPROC_DIR when *it* is imported, which would make every gateway in this test
# process share metric values. Importing prometheus_client first keeps them separate, as in a
# gateway process (which imports its metrics long before Feast).
import prometheus_client  # noqa: F401  (import order matters, see above)
import pytest
from postgres import PostgresServer, RegistryDatabases
from postgres import start_server as start_postgres

from registry import Registry, RoostSettings


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test`` runs on two pytest-xdist workers with ``--dist loadgroup``; the work units
    handed to a worker are whole test files (a file's module fixtures are built once and its
    tests run in order, as in one process), and all of tests/e2e is ONE unit: those tests run one
    after another on one worker, never beside each other (each starts a process tree: gateways,
    Dagster, load generators; several measure outages and drain times). tests/e2e goes out first,
    then the other files, most tests first. (pytest-xdist 3.8's own ``xdist_group`` marks do nothing
    on pytest 9: it renames ``item._nodeid``, which pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileAndE2EScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return "tests/e2e" if nodeid.startswith("tests/e2e/") else nodeid.split("::")[0]

        def _assign_work_unit(self, node: Any) -> None:
            if "tests/e2e" in self.workqueue:  # the longest unit: first, or it ends the run
                self.workqueue.move_to_end("tests/e2e", last=False)
            super()._assign_work_unit(node)

    return FileAndE2EScheduling(config, log)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """ONE real PostgreSQL server per test session, on a loopback port (tests/support/postgres)."""
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_databases(postgres_server: PostgresServer) -> RegistryDatabases:
    return RegistryDatabases(postgres_server)


@pytest.fixture
def postgres_url(postgres_databases: RegistryDatabases) -> Iterator[str]:
    """The URL of an empty PostgreSQL database (registry schema at head) for one test."""
    name = postgres_databases.checkout()
    yield postgres_databases.server.url(name)
    postgres_databases.checkin(name)


@pytest.fixture
def settings(tmp_path: Path) -> RoostSettings:
    return RoostSettings(home=tmp_path / "roost")


@pytest.fixture
def registry(settings: RoostSettings) -> Iterator[Registry]:
    reg = Registry.from_settings(settings)
    yield reg
    reg.close()
