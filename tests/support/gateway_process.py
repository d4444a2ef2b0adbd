"""The one way tests and benchmarks start a gateway *process*: :class:`GatewayProcess`.

Standard library only, so the benchmarks' load-driving processes can use it without importing
the gateway (or httpx) into themselves: tests import it through pytest's ``pythonpath``
(``tests/support``), benchmark scripts put ``tests/support`` on ``sys.path``. It lives with the
tests rather than in the ``serving`` package because it is test tooling (nothing a deployment
needs) and importing ``serving`` would load the whole gateway into the load drivers. In-process
gateways (uvicorn in a thread) are :func:`roost_testing.running_gateway`.

A :class:`GatewayProcess` runs ``roost serve`` (``python -m orchestration serve``) or uvicorn on
the app factory, with ``ROOST_HOME`` and free loopback ports in its environment, its output in a
log file; :meth:`~GatewayProcess.wait_ready` polls readiness and fails with the log's tail,
:meth:`~GatewayProcess.stop` sends SIGTERM (the gateway drains, seals its log and exits 0) and
SIGKILLs the process group if it does not exit in time. :func:`gateway_process` wraps that in a
context manager that adds the log's tail to any failure inside the ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PATH = "/v2/health/ready"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


def wait_until_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    *,
    log_path: Path | None = None,
    timeout_s: float = 120.0,
    name: str = "gateway",
) -> None:
    """Poll ``url`` until it answers 200; raise with the log's tail if the process exits or
    ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
    raise RuntimeError(f"{name} did not become ready ({why}); its log ends:\n{tail(log_path)}")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30.0
) -> int | None:
    """Send ``sig`` and wait; SIGKILL the process group (``start_new_session``) past the time.

    Returns the exit status (negative: killed by that signal).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
    return proc.returncode


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its children (it runs in a session of its own)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class GatewayProcess:
    """A gateway process on free loopback ports; can be stopped, killed and started again."""

    def __init__(
        self,
        home: Path,
        *,
        env: Mapping[str, str] | None = None,
        launcher: Literal["serve", "uvicorn"] = "serve",
        workers: int | None = None,
        grpc: bool = True,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        unset_env: Sequence[str] = (),
        name: str = "gateway",
    ) -> None:
        self.home = Path(home)
        self.name = name
        self.launcher = launcher
        self.workers = workers
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.grpc_port = free_port() if grpc else 0
        if log_path is None:
            handle, path = tempfile.mkstemp(prefix=f"roost-{name}-", suffix=".log")
            os.close(handle)
            log_path = Path(path)
        self.log_path = log_path
        self.env = {
            **os.environ,
            "ROOST_HOME": str(self.home),
            "ROOST_HOST": "127.0.0.1",
            "ROOST_HTTP_PORT": str(self.port),
            "ROOST_GRPC_PORT": str(self.grpc_port),
            **(env or {}),
        }
        # Feast sets it when imported; a gateway that inherits it shares metric files
        for key in ("PROMETHEUS_MULTIPROC_DIR", *unset_env):
            self.env.pop(key, None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str | None:
        return f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None

    def argv(self) -> list[str]:
        if self.launcher == "uvicorn":
            argv = [
                sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app_from_env",
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                "--no-access-log",
            ]
            if self.workers:
                argv += ["--workers", str(self.workers)]
        else:
            argv = [sys.executable, "-m", "orchestration", "serve"]
            if self.workers:
                argv += ["--workers", str(self.workers)]
        return argv + self.extra_args

    def start(self) -> GatewayProcess:
        """Start the process (output appended to ``log_path``); does not wait."""
        self.starts += 1
        out: IO[bytes]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the test only; we stop it ourselves
            )
        return self

    def wait_ready(self, timeout_s: float = 120.0, path: str = READY_PATH) -> None:
        assert self.proc is not None, "start() first"
        wait_until_ready(
            self.url + path, self.proc, log_path=self.log_path, timeout_s=timeout_s,
            name=self.name,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (drain, seal the log, exit 0), SIGKILL after ``timeout_s``; the exit status."""
        return None if self.proc is None else stop_process(self.proc, sig, timeout_s)

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def output(self) -> str:
        """Everything the process (all its starts) wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return tail(self.log_path, chars)


@contextlib.contextmanager
def gateway_process(
    home: Path, *, ready_timeout_s: float = 120.0, **options: object
) -> Iterator[GatewayProcess]:
    """A started, ready :class:`GatewayProcess` (options as its constructor's); stopped with
    SIGTERM (then SIGKILL) on the way out. A failure inside the block gets the log's tail."""
    gateway = GatewayProcess(home, **options)  # type: ignore[arg-type]
    gateway.start()
    try:
        gateway.wait_ready(ready_timeout_s)
        yield gateway
    except Exception as exc:
        if "log ends" not in str(exc):
            exc.add_note(f"{gateway.name} log ends:\n{gateway.tail()}")
        raise
    finally:
        gateway.stop()
