"""A real PostgreSQL server for the tests: one per test session, on a loopback port.

:func:`start_server` runs ``initdb`` into a temporary directory and ``pg_ctl start`` on a free
127.0.0.1 port (as the ``postgres`` OS user when the tests run as root: PostgreSQL refuses to
run as root), with durability switched off (``fsync=off``: a test cluster is thrown away).
:meth:`PostgresServer.create_database` copies a template database (fast) so every test gets an
empty database of its own; :meth:`PostgresServer.stop` stops the server and deletes the
directory. Without the binaries (``/usr/lib/postgresql/*/bin`` or ``ROOST_PG_BIN``) the
session fixture skips with the reason; ``.ci/run`` installs them on a fresh CI machine.

Replication (tests/e2e/test_region_failover.py): ``start_server(replication=True)`` makes a
primary that streams its WAL (``wal_level=replica``, WAL senders, a ``REPLICATION`` role; the
default pg_hba of ``initdb --auth=trust`` already lets 127.0.0.1 connect for replication, and
commits are flushed locally so they ship at once); :meth:`PostgresServer.create_standby` runs
``pg_basebackup -R`` and starts a hot standby on another port; :meth:`PostgresServer.crash`
stops a server with ``-m immediate`` and keeps its directory; :meth:`PostgresServer.promote`
makes a standby the primary.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"


def find_bin_dir() -> Path | None:
    """The directory holding initdb/pg_ctl: ``ROOST_PG_BIN``, the newest Debian install, PATH."""
    if env := os.environ.get("ROOST_PG_BIN"):
        return Path(env) if (Path(env) / "initdb").exists() else None
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if installed:
        return installed[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> list[str]:
    """The prefix that runs a command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


REPLICATOR = "replicator"
"""The role standbys stream WAL as (``start_server(replication=True)``)."""


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # data directory, socket and log live under it
    port: int
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    options: tuple[str, ...] = ()
    """Extra ``-c name=value`` settings this server starts with."""

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3 driver, trust auth over loopback)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [*_run_as(), str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=32MB",
                *(f"-c {option}" for option in self.options),
            ]
        )
        try:
            self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_path), "-o", options)
        except subprocess.CalledProcessError as exc:
            log = (
                self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            )
            raise RuntimeError(f"pg_ctl start failed: {exc.stderr!r}\n{log}") from None

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("stop", "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)

    def crash(self) -> None:
        """``pg_ctl stop -m immediate`` (no shutdown checkpoint, like a lost machine); the data
        directory stays."""
        self._pg_ctl("stop", "-m", "immediate", "-w")

    def promote(self, timeout_s: int = 60) -> None:
        """``pg_ctl promote``: a standby leaves recovery and takes writes (waits until it has)."""
        self._pg_ctl("promote", "-w", "-t", str(timeout_s))

    def in_recovery(self) -> bool:
        """Whether the server is a standby (``pg_is_in_recovery()``)."""
        return bool(self.query("SELECT pg_is_in_recovery()")[0][0])

    def query(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """The rows of one statement, as the superuser."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database, autocommit=True,
            connect_timeout=5,
        ) as conn:  # fmt: skip
            return list(conn.execute(sql.encode()).fetchall())

    def create_standby(self, *, options: tuple[str, ...] = ()) -> PostgresServer:
        """A hot standby of this primary (``start_server(replication=True)``), started on a free
        loopback port: ``pg_basebackup -R`` (streams WAL while copying, writes
        ``standby.signal`` and ``primary_conninfo``) into a new temporary directory."""
        root = _owned_tempdir("roost-pg-standby-")
        subprocess.run(
            [
                *_run_as(), str(self.bin_dir / "pg_basebackup"), "-h", "127.0.0.1",
                "-p", str(self.port), "-U", REPLICATOR, "-D", str(root / "data"), "-R",
                "-X", "stream", "-c", "fast", "--no-sync",
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        return _start_on_free_port(self.bin_dir, root, ("hot_standby=on", *options))

    def execute(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) as the superuser."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self, template: str = "template1", prefix: str = "t") -> str:
        """A new empty database copied from ``template``; returns its name."""
        name = f"{prefix}{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _owned_tempdir(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        _run_as()  # creates the postgres user if missing
        shutil.chown(root, user="postgres")
    return root


def _start_on_free_port(bin_dir: Path, root: Path, options: tuple[str, ...]) -> PostgresServer:
    last: Exception | None = None
    for _ in range(3):  # the free port may be taken between choosing and binding it
        server = PostgresServer(bin_dir, root, _free_port(), options=options)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            last = exc
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"could not start PostgreSQL: {last}")


REPLICATION_OPTIONS = (
    "wal_level=replica",
    "max_wal_senders=5",
    "wal_keep_size=64MB",
    "synchronous_commit=local",  # a commit's WAL is flushed (and so shipped) at once
    "full_page_writes=on",
    "hot_standby_feedback=on",
)


def start_server(*, replication: bool = False) -> PostgresServer:
    """initdb + pg_ctl start on a free loopback port; raises FileNotFoundError without binaries.

    ``replication``: a primary standbys can stream from (:data:`REPLICATION_OPTIONS`, the
    :data:`REPLICATOR` role); see :meth:`PostgresServer.create_standby`.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(
            "PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql "
            "(apt-get install postgresql) or set ROOST_PG_BIN"
        )
    root = _owned_tempdir("roost-pg-")
    prefix = _run_as()
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = _start_on_free_port(bin_dir, root, REPLICATION_OPTIONS if replication else ())
    if replication:
        server.execute(f"CREATE ROLE {REPLICATOR} WITH REPLICATION LOGIN")
    return server


TEMPLATE = "roost_registry_template"


def make_registry_template(server: PostgresServer) -> str:
    """A database with the registry schema at head, to copy for each test (then unused)."""
    from sqlalchemy import create_engine

    from registry import migrations

    server.execute(f'CREATE DATABASE "{TEMPLATE}"')
    engine = create_engine(server.url(TEMPLATE))
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()
    return TEMPLATE


class RegistryDatabases:
    """Databases with the registry schema, reused across tests: a returned database is emptied
    (TRUNCATE ... RESTART IDENTITY, generation counter back to 0), which is much cheaper than
    copying the template again (CREATE DATABASE checkpoints)."""

    def __init__(self, server: PostgresServer) -> None:
        from registry.tables import Base

        self.server = server
        self.template = make_registry_template(server)
        self._free: list[str] = []
        self._tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)

    def checkout(self) -> str:
        return self._free.pop() if self._free else self.server.create_database(self.template)

    def checkin(self, name: str) -> None:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=self.server.port,
                user=SUPERUSER,
                dbname=name,
                autocommit=True,
            ) as conn:
                conn.execute(b"SET lock_timeout = '5s'")
                conn.execute(f"TRUNCATE {self._tables} RESTART IDENTITY CASCADE".encode())
                conn.execute(b"INSERT INTO counters (name, value) VALUES ('generation', 0)")
        except psycopg.Error:  # something still holds it: start the next test afresh
            self.server.drop_database(name)
        else:
            self._free.append(name)
