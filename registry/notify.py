"""Change notifications: gateways learn of a registry change at once on PostgreSQL.

Every write transaction that bumps the generation sends ``NOTIFY roost_registry,
'<generation>'`` (:func:`send`, called by ``Registry._write``); PostgreSQL delivers it when the
transaction commits, and not at all when it rolls back. A :class:`RegistryWatcher` is what the
gateway's poller (:mod:`serving.poller`) awaits between polls: on PostgreSQL it keeps a
dedicated psycopg async connection that ``LISTEN``s on the channel and wakes the poller the
moment a notification arrives; elsewhere (SQLite), or while that connection is down, waiting
just times out after the poll interval, which is the generation poll as before. A notification
only wakes the poller: the poll itself still reads the generation, so a lost or duplicated
notification costs nothing but latency.

On a hot standby (a region's local replica, ``ROOST_DATABASE_READ_URL``) ``LISTEN`` is not
allowed and the primary's NOTIFY is not replayed there: the watcher sees the server is in
recovery, says so once (``standby`` is True) and checks again every ``standby_recheck_s``
(it starts listening once the standby is promoted); meanwhile the poll every
``ROOST_POLL_INTERVAL_S`` is what finds changes, which then arrive with the replication lag
plus up to one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.orm import Session

from registry.dburl import libpq_conninfo, sqlalchemy_url
from registry.tasks import cancel_and_wait

__all__ = ["CHANNEL", "RegistryWatcher", "is_postgres", "libpq_conninfo", "send", "sqlalchemy_url"]

CHANNEL = "roost_registry"
log = logging.getLogger("roost.registry.notify")


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def send(session: Session, generation: int) -> None:
    """Queue the notification of ``generation`` in the session's transaction."""
    session.execute(
        text("SELECT pg_notify(:channel, :payload)"),
        {"channel": CHANNEL, "payload": str(generation)},
    )


class RegistryWatcher:
    """Wakes whoever awaits :meth:`wait` when the registry changes (PostgreSQL LISTEN).

    ``start`` (inside a running event loop) begins listening when ``url`` is PostgreSQL; the
    listener reconnects with backoff and wakes the waiter after every (re)connection, since
    changes may have been missed meanwhile. ``notifications`` counts what arrived.
    """

    def __init__(
        self, url: str | None, *, max_backoff_s: float = 30.0, standby_recheck_s: float = 30.0
    ) -> None:
        self.url = url
        self.enabled = is_postgres(url)
        self.listening = False
        self.standby = False  # the server is a hot standby: no LISTEN there, the poll covers
        self.standby_recheck_s = standby_recheck_s
        self.notifications = 0
        self.last_payload: str | None = None
        self.max_backoff_s = max_backoff_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening_event = asyncio.Event()

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="roost-registry-listen")

    async def wait(self, timeout_s: float) -> bool:
        """Return after a notification (True) or after ``timeout_s`` (False)."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except TimeoutError:
            return False
        self._wake.clear()
        return True

    async def wait_listening(self, timeout_s: float) -> bool:
        """Until the LISTEN is in place (tests; False on timeout or when not PostgreSQL)."""
        if not self.enabled:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening_event.wait(), timeout_s)
        return self.listening

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.listening = False

    async def _listen(self) -> None:
        import psycopg

        assert self.url is not None
        conninfo = libpq_conninfo(self.url)
        backoff = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                async with conn:
                    cursor = await conn.execute(b"SELECT pg_is_in_recovery()")
                    row = await cursor.fetchone()
                    if row is not None and row[0]:
                        if not self.standby:
                            log.info(
                                "registry read server is a hot standby: no LISTEN there, "
                                "changes are found by the poll (rechecked every %.0f s)",
                                self.standby_recheck_s,
                            )
                        self.standby = True
                        await conn.close()
                        await asyncio.sleep(self.standby_recheck_s)
                        continue
                    self.standby = False
                    await conn.execute(f"LISTEN {CHANNEL}".encode())
                    self.listening = True
                    self._listening_event.set()
                    backoff = 0.5
                    self._wake.set()  # anything missed while not listening
                    async for note in conn.notifies():
                        self.notifications += 1
                        self.last_payload = note.payload
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server down or restarted: the poll covers meanwhile
                log.warning(
                    "registry LISTEN connection lost (%s); retrying in %.1f s",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    backoff,
                )
            self.listening = False
            self._listening_event.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
