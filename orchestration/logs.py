"""Logging for ``roost up``: one readable log file per process, no ANSI escape codes in files.

- :class:`LogPump` copies a child process's output into its log file line by line with ANSI
  escape codes (Dagster's coloured logs, Feast's colorama prints) removed;
- :func:`quiet_output` sends everything the in-process demo pipeline prints (Dagster's DEBUG
  event log, Feast's materialization progress, warnings) to ``pipeline.log`` the same way;
- ``python -m orchestration.logs serve ...`` runs ``roost serve`` with plain-text INFO logging
  and the access log on (``roost serve`` itself logs warnings only, so ``gateway.log`` would
  stay empty).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
ANSI_ESCAPE_BYTES = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


class LogPump:
    """A daemon thread that copies ``source`` (a child's stdout) into ``log_path``, without ANSI
    escape codes, until the child closes it."""

    def __init__(self, source: IO[bytes], log_path: Path) -> None:
        self._source = source
        self._target = log_path.open("ab")
        self._thread = threading.Thread(target=self._run, name=f"log-{log_path.stem}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in iter(self._source.readline, b""):
                self._target.write(ANSI_ESCAPE_BYTES.sub(b"", line))
                self._target.flush()
        finally:
            self._target.close()

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)


class _PlainTextFile(io.TextIOBase):
    """A text stream that writes into ``handle`` without ANSI escape codes, showing each
    complete line to ``on_line``."""

    def __init__(self, handle: IO[str], on_line: Callable[[str], None] | None = None) -> None:
        self._handle = handle
        self._on_line = on_line
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        plain = strip_ansi(text)
        self._handle.write(plain)
        if self._on_line is not None:
            *lines, self._partial = (self._partial + plain).split("\n")
            for line in lines:
                self._on_line(line)
        return len(text)

    def flush(self) -> None:
        self._handle.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def quiet_output(
    log_path: Path, on_line: Callable[[str], None] | None = None
) -> Iterator[io.TextIOBase]:
    """Within the block, ``sys.stdout``, ``sys.stderr``, warnings and the root logger write to
    ``log_path`` (plain text) instead of the terminal; ``on_line`` sees every line."""
    with log_path.open("a", encoding="utf-8") as handle:
        stream = _PlainTextFile(handle, on_line)
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        saved_handlers, saved_level = root.handlers[:], root.level
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        try:
            with (
                contextlib.redirect_stdout(stream),
                contextlib.redirect_stderr(stream),
                warnings.catch_warnings(),
            ):
                logging.captureWarnings(True)
                warnings.simplefilter("default")
                yield stream
        finally:
            logging.captureWarnings(False)
            root.handlers, root.level = saved_handlers, saved_level
            stream.flush()


def gateway_log_config() -> dict[str, Any]:
    """uvicorn's ``log_config`` for a gateway whose output goes to a file: plain text, INFO,
    Roost's own loggers and the access log included."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": LOG_FORMAT},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": (
                    '%(asctime)s INFO access: %(client_addr)s "%(request_line)s" %(status_code)s'
                ),
                "use_colors": False,
            },
        },
        "handlers": {
            "plain": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stdout",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
            },
        },
        "root": {"handlers": ["plain"], "level": "INFO"},
        "loggers": {
            "uvicorn": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def serve_with_file_logging(argv: list[str]) -> None:
    """``roost serve`` (``argv`` are its options) with :func:`gateway_log_config` and the access
    log on: ``roost serve`` asks uvicorn for warnings only and no access log."""
    import uvicorn

    from orchestration.cli import main

    original: Callable[..., None] = uvicorn.run

    def run(*args: Any, **kwargs: Any) -> None:
        kwargs.update(log_config=gateway_log_config(), log_level="info", access_log=True)
        original(*args, **kwargs)

    uvicorn.run = run
    main(["serve", *argv])


if __name__ == "__main__":  # python -m orchestration.logs serve [options]
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: python -m orchestration.logs serve [roost serve options]")
    serve_with_file_logging(sys.argv[2:])
