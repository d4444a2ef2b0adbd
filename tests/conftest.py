"""Shared fixtures: a real registry in a temporary ROOST_HOME and small real ONNX models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

# prometheus_client picks its value storage when first imported; Feast sets
# PROMETHEUS_MULTIPROC_DIR when *it* is imported, which would make every gateway in this test
# process share metric values. Importing prometheus_client first keeps them separate, as in a
# gateway process (which imports its metrics long before Feast).
import prometheus_client  # noqa: F401  (import order matters, see above)
import pytest
from postgres import PostgresServer, RegistryDatabases
from postgres import start_server as start_postgres

from registry import Registry, RoostSettings

E2E_DIR = Path(__file__).parent / "e2e"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``make test`` runs on two pytest-xdist workers: the end-to-end tests (each starts a process
    tree: gateways, Dagster, load generators; several measure outages and drain times) share one
    group, so they run one after another on one worker, never beside each other."""
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("e2e"))


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
