"""Registry database URLs: PostgreSQL with several hosts, and what an unreachable one raises.

A registry URL may name several PostgreSQL servers (a primary and its streaming replicas) and
say which kind of server it wants; libpq tries them in order and keeps the first that fits::

    postgresql+psycopg://roost@/roost?host=pg-a:5432,pg-b:5432&target_session_attrs=read-write

``target_session_attrs`` (libpq >= 14; psycopg 3 hands it to libpq): ``read-write`` for writers
(the CLI, Dagster, the admin API: after a failover they find the promoted standby by
themselves), ``prefer-standby`` / ``any`` for a gateway's reads (``ROOST_DATABASE_READ_URL``).
Three spellings of the host list are accepted and rewritten (:func:`sqlalchemy_url`) into the
one SQLAlchemy's psycopg dialect parses (``host=h1:p1&host=h2:p2``): ``?host=h1:p1,h2:p2``,
``?host=h1,h2&port=p1,p2``, and libpq's own ``postgresql://u@h1:p1,h2:p2/db``.

:func:`unavailable` recognises the errors of a registry that cannot take the statement: no
server reachable, the connection lost (an immediate shutdown), or a write reaching a hot standby
(``read_only_sql_transaction``); the registry raises :class:`RegistryUnavailable` (503) for
them instead of a driver stack trace.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from registry.errors import ServiceUnavailable

CONNECT_TIMEOUT_S = 5
"""libpq ``connect_timeout`` per host when the URL does not set one: a host that drops packets
(a region cut off) must not hold a poll or an admin request for minutes."""

# SQLSTATEs of "this server cannot take it now": connection exceptions (class 08), admin /
# crash shutdown, cannot connect now (starting up, in recovery), and a write on a hot standby.
_UNAVAILABLE_STATES = ("57P01", "57P02", "57P03", "25006")


class RegistryUnavailable(ServiceUnavailable):
    """The registry database cannot be reached, or only read (a hot standby, a failover in
    progress): 503 with ``Retry-After``; reads of the gateways keep serving their last table."""

    retry_after_s = 5.0


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _netloc_hosts(url: str) -> str:
    """libpq's ``scheme://user@h1:p1,h2:p2/db?...``: the host list moved into the query."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    query = [("host", h) for h in hosts.split(",") if h] + parse_qsl(parts.query)
    netloc = f"{userinfo}@" if userinfo else ""
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe=":/,"), ""))


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL of a registry URL: ``postgresql://`` / ``postgres://`` use psycopg 3
    (the driver Roost installs) and a host list becomes repeated ``host=h:p`` parameters."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url.removeprefix(prefix)
    if not _is_postgres(url):
        return url
    url = _netloc_hosts(url)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    keys = [k for k, _ in query]
    if keys.count("host") == 1 and "port" not in keys:
        hosts = dict(query)["host"]
        if "," in hosts:
            query = [("host", h) for h in hosts.split(",") if h] + [
                (k, v) for k, v in query if k != "host"
            ]
            url = urlunsplit(parts._replace(query=urlencode(query, safe=":/,")))
    return url


def _query_pairs(query: object) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in dict(query).items():  # type: ignore[call-overload]
        for item in value if isinstance(value, tuple | list) else (value,):
            pairs.append((str(key), str(item)))
    return pairs


def libpq_conninfo(url: str) -> str:
    """The libpq keyword conninfo of a PostgreSQL registry URL (for a psycopg connection of
    its own, e.g. the LISTEN of :mod:`registry.notify`): every host and port, the database,
    the user and password, and the other query parameters (``target_session_attrs`` ...)."""
    from psycopg.conninfo import make_conninfo

    parsed = make_url(sqlalchemy_url(url))
    params: dict[str, str] = {}
    hosts: list[str] = []
    ports: list[str] = []
    for key, value in _query_pairs(parsed.query):
        if key == "host":
            host, _, port = value.partition(":")
            hosts.append(host)
            ports.append(port)
        else:
            params[key] = value
    if parsed.host:
        hosts.insert(0, parsed.host)
        ports.insert(0, str(parsed.port or ""))
    if hosts:
        params["host"] = ",".join(hosts)
        if any(ports):
            params["port"] = ",".join(p or "5432" for p in ports)
    if parsed.database:
        params["dbname"] = parsed.database
    if parsed.username:
        params["user"] = parsed.username
    if parsed.password:
        params["password"] = str(parsed.password)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    return make_conninfo("", **params)


def connect_args(url: str) -> dict[str, object]:
    """Extra psycopg connect arguments: a ``connect_timeout`` unless the URL sets one."""
    if "connect_timeout" in make_url(sqlalchemy_url(url)).query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (from SQLAlchemy) means the server is unreachable or read-only."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    state = getattr(exc.orig, "sqlstate", None)
    if state is None:  # raised by libpq before any server answered: connection refused ...
        import psycopg

        return isinstance(exc.orig, psycopg.OperationalError)
    return str(state).startswith("08") or state in _UNAVAILABLE_STATES


def describe(exc: BaseException) -> str:
    """The first line of the driver's message (no SQL, no parameters)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0][:300] if text else type(orig).__name__


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    if not _is_postgres(url):
        return url
    try:
        return make_url(sqlalchemy_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message must not fail
        return quote(url.split("@")[-1], safe=":/?=&,")
