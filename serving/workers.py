"""``roost serve --workers N``: N uvicorn worker processes, each with its own listening socket.

uvicorn's own multi-process mode binds one socket in the supervisor and lets every worker accept
from it. uvloop accepts every pending connection per wake-up, so a burst of connects (a load
balancer's pool, ``wrk``'s 64 at once) can land on one worker, which then keeps them for as long
as they stay open (keep-alive): one worker busy, the other idle (seen in 2 of 14 benchmark runs).

Here every worker binds its own socket on the same address with ``SO_REUSEPORT`` and starts
listening once its lifespan has run (models loaded): the kernel hashes each new connection over
the listening sockets of the group, so connections are spread evenly, and a worker that is still
loading (or is being replaced) gets none. A killed worker's socket closes with it and leaves the
group; new connections go to the others at once.

The supervisor is uvicorn's :class:`~uvicorn.supervisors.Multiprocess` (health checks over a
pipe, a killed or hung worker replaced, SIGTERM/SIGINT passed to every worker and awaited, each
draining as :mod:`serving.drain` describes, SIGHUP replaces the workers one by one,
SIGTTIN/SIGTTOU add or remove one); only the socket each worker gets differs
(:class:`ReusePortSupervisor`). The supervisor itself holds a bound, never listening, socket on the
address: it resolves port 0 and keeps another program from taking the port between restarts.

``SO_REUSEPORT`` lets any process of the same user join the group, so before binding the
supervisor checks the port with an ordinary bind (``SO_REUSEADDR`` only, as uvicorn does): a
second ``roost serve`` on a port already served fails with :class:`AddressInUse` instead of
silently taking half the connections.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

log = logging.getLogger("roost.serving")

__all__ = ["AddressInUse", "ReusePortSupervisor", "run_workers"]


class AddressInUse(OSError):
    """The address ``roost serve`` was asked to bind is taken by another program."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with ``SO_REUSEPORT``, not yet listening."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_address(host: str, port: int) -> socket.socket:
    """Check that nobody serves ``(host, port)`` and reserve it for the workers.

    Returns a bound, never listening, ``SO_REUSEPORT`` socket (its port is the one chosen when
    ``port`` is 0); raises :class:`AddressInUse` if an ordinary bind fails.
    """
    probe = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    except OSError as exc:
        raise AddressInUse(exc.errno, f"cannot serve on {host}:{port}: {exc.strerror}") from None
    finally:
        probe.close()
    try:
        return reuseport_socket(host, port)
    except OSError as exc:  # taken in the instant between the probe and the reservation
        raise AddressInUse(exc.errno, f"cannot serve on {host}:{port}: {exc.strerror}") from None


class ReusePortSupervisor(Multiprocess):
    """uvicorn's supervisor, giving every worker a socket of its own.

    :meth:`start_worker` binds a fresh ``SO_REUSEPORT`` socket, starts uvicorn's worker
    process with it (the child receives its own copy of the descriptor) and closes the
    supervisor's copy, so the socket lives and dies with the worker. uvicorn's server listens on
    it only after the app's lifespan startup has finished: the worker joins the kernel's group
    when it can answer. The four methods below are uvicorn 0.54's with ``Process(...)`` +
    ``start()`` replaced by :meth:`start_worker`; the rest (the run loop, signals, health
    checks over a pipe) is inherited.
    """

    def start_worker(self) -> Process:
        sock = reuseport_socket(self.config.host, self.config.port)
        try:
            process = Process(self.config, [sock])
            process.start()
        finally:
            sock.close()  # the worker holds its own copy
        return process

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            self.processes.append(self.start_worker())

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it; dead: reap it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                # the app (models, settings) or the bind failed before serving and would fail
                # the same way on every restart
                log.error("worker [%s] failed to start; stopping the gateway", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.warning("worker [%s] died (exit %s); starting another", process.pid,
                        process.exitcode)
            self.processes[idx] = self.start_worker()

    def restart_all(self) -> None:
        """SIGHUP: replace each worker, its replacement serving before the old one stops."""
        for idx, old_process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new_process = self.start_worker()
            if not new_process.wait_until_ready(
                self.config.timeout_worker_healthcheck, self.should_exit
            ):
                new_process.kill()
                new_process.join()
                if not self.should_exit.is_set():
                    log.error("worker [%s] was not ready in time; keeping [%s]",
                              new_process.pid, old_process.pid)
                return
            old_process.terminate()
            old_process.join()
            self.processes[idx] = new_process

    def handle_ttin(self) -> None:
        self.processes_num += 1
        self.processes.append(self.start_worker())


def run_workers(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """Serve the ASGI app factory ``app`` with ``workers`` processes on ``host:port``.

    ``options`` go to :class:`uvicorn.Config` (``log_level``, ``access_log``, ``http``, ...).
    With one worker this is ``uvicorn.run``: one process, no supervisor.
    """
    if workers <= 1:
        uvicorn.run(app, factory=True, host=host, port=port, **options)
        return
    reserved = reserve_address(host, port)
    try:
        config = uvicorn.Config(
            app, factory=True, host=host, port=reserved.getsockname()[1], workers=workers,
            **options,
        )
        ReusePortSupervisor(config, sockets=[]).run()
    finally:
        reserved.close()
