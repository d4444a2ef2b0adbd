"""gRPC in processes of its own: ``ROOST_GRPC_PROCESSES=N`` gRPC-only processes sharing the port.

Python's ``grpc.aio`` spends most of a small request's CPU in its own machinery (measured in
``benchmarks/grpc_compare.py``: about 60 % of the event loop's time for the demo model), so one
event loop serving both REST and gRPC tops out at one core. With ``ROOST_GRPC_PROCESSES=N`` the
gateway does not serve gRPC on its loop; it starts N child processes instead
(``python -m serving.grpc_processes``), each a :class:`~serving.gateway.Gateway` of its own with
no HTTP edge: the same settings (sent on stdin, secrets included), the same registry, the same
model repository code path loading the same scope's versions, its own data plane, its own
prediction-log writer (the write-ahead log takes several writers, as with ``--workers``), and
the same :class:`~serving.grpc_server.InferenceServicer`, listening on ``ROOST_GRPC_PORT`` with
``SO_REUSEPORT`` so that the kernel spreads connections over them.

Lifecycle, as seen from the parent (:class:`GrpcProcesses`; it has the ``stop(grace)`` of a
``grpc.aio`` server, so :class:`~serving.drain.Drain` and :meth:`Gateway.stop` treat both alike):

- start: refuse a port something else listens on (``GrpcBindError``), start the children and
  wait until each prints ``ready`` (its versions loaded, its server listening);
- a child that exits on its own is logged and started again;
- stop: SIGTERM to every child, which stops taking calls (UNAVAILABLE), gives in-flight ones
  ``drain_delay_s + drain_grace_s``, then stops its gateway (sealing its log); a child still
  alive ``grace`` + :data:`SEAL_MARGIN_S` seconds later is killed;
- a child whose parent dies gets SIGTERM (Linux ``PR_SET_PDEATHSIG``) and stops the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from pydantic import SecretStr

from registry import RoostSettings

__all__ = ["GrpcProcesses", "main"]

log = logging.getLogger("roost.serving")

READY = b"ready\n"
SEAL_MARGIN_S = 30.0
"""How long past the gRPC grace a child may take to stop its gateway (seal its log)."""
START_TIMEOUT_S = 600.0
RESTART_DELAY_S = 1.0


def settings_payload(settings: RoostSettings) -> bytes:
    """The settings as JSON for a child (secrets in clear: they travel on a pipe)."""
    data = settings.model_dump(mode="json")
    for name, value in settings:
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return json.dumps(data).encode()


def check_port_free(host: str, port: int) -> None:
    """Raise GrpcBindError when something listens on ``host:port`` (the children share the
    port with SO_REUSEPORT, which would otherwise share it with a stranger too)."""
    from serving.grpc_server import GrpcBindError, grpc_address

    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bare, port))
        except OSError as exc:
            raise GrpcBindError(
                f"the gRPC server cannot listen on {grpc_address(host, port)}: is the port in "
                f"use? ({exc.strerror}; set ROOST_GRPC_PORT to another port, or to 0 to disable "
                "gRPC)"
            ) from None


class GrpcProcesses:
    """The gateway's gRPC-only child processes (see the module docstring)."""

    def __init__(self, settings: RoostSettings) -> None:
        self.settings = settings
        self.count = settings.grpc_processes
        self.children: list[asyncio.subprocess.Process] = []
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        if settings.workers <= 1:  # several gateway workers each start children on the port
            check_port_free(settings.host, settings.grpc_port)
        try:
            await asyncio.gather(*(self._spawn() for _ in range(self.count)))
        except BaseException:
            await self.stop(0)
            raise
        self._watch = asyncio.create_task(self._keep_running(), name="grpc-processes")
        log.info(
            "gRPC (Open Inference Protocol v2): %d processes on port %d (pids %s)",
            self.count, settings.grpc_port, ", ".join(str(c.pid) for c in self.children),
        )

    async def _spawn(self) -> asyncio.subprocess.Process:
        """One child, once it reports ready; raises with the reason when it exits first."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "serving.grpc_processes", str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        self.children.append(proc)  # stop() reaches it even while it starts
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(settings_payload(self.settings))
        await proc.stdin.drain()
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if line != READY:
            from serving.grpc_server import GrpcBindError

            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            status = await proc.wait()
            raise GrpcBindError(
                f"a gRPC process did not start (exit status {status}; its log is above)"
            )
        return proc

    async def _keep_running(self) -> None:
        """Start a child again when one exits on its own."""
        while not self.stopping:
            waits = {asyncio.ensure_future(c.wait()): c for c in self.children}
            try:
                done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in waits:
                    future.cancel()
            if self.stopping:
                return
            for future in done:
                dead = waits[future]
                log.error("gRPC process %d exited with %s; starting another", dead.pid,
                          dead.returncode)
                self.children.remove(dead)
            await asyncio.sleep(RESTART_DELAY_S)
            for _ in done:
                try:
                    await self._spawn()
                except Exception as exc:
                    log.error("gRPC process did not start again: %s", exc)

    async def stop(self, grace: float | None) -> None:
        """SIGTERM every child; kill those still running ``grace`` + SEAL_MARGIN_S later."""
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        children = [c for c in self.children if c.returncode is None]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        if not children:
            return
        waits = [asyncio.ensure_future(c.wait()) for c in children]
        _done, late = await asyncio.wait(waits, timeout=(grace or 0.0) + SEAL_MARGIN_S)
        for child in children:
            if child.returncode is None:
                log.error("gRPC process %d did not stop in time: killed", child.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        if late:
            await asyncio.wait(late)


# --------------------------------------------------------------------------------------------
# the child


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the gateway that started it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl
        sys.exit(0)


async def serve(settings: RoostSettings, ready: Any = None) -> None:
    """One gRPC-only gateway until SIGTERM or SIGINT; ``ready()`` once it listens."""
    from serving.gateway import Gateway
    from serving.governance import install as install_governance
    from serving.grpc_server import start_grpc_server

    own = settings.model_copy(update={"grpc_port": 0, "grpc_processes": 0})
    gateway = Gateway(own)
    await gateway.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after Gateway.start: replaces its Drain
        loop.add_signal_handler(sig, stop.set)
    try:
        install_governance(gateway.plane, own, gateway.registry)
        served = settings.model_copy(update={"grpc_processes": 0})
        server = await start_grpc_server(gateway.plane, served, reuse_port=True)
        assert server is not None
        if ready is not None:
            ready()
        await stop.wait()
        gateway.state.draining = True
        await server.stop(settings.drain_delay_s + settings.drain_grace_s)
    finally:
        await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.grpc_processes PARENT_PID`` with the settings' JSON on stdin."""
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent(int(args[0]))
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s grpc[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    settings = RoostSettings(**json.loads(sys.stdin.buffer.read()))
    os.environ.pop("ROOST_AUTOSCALE_INSTANCES", None)  # the gateway process runs that task

    def ready() -> None:
        sys.stdout.buffer.write(READY)
        sys.stdout.flush()

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop  # the loop uvicorn gives the gateway
    except ImportError:  # pragma: no cover
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings, ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
