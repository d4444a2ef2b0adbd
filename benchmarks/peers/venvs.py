"""A peer's own virtualenv, created once and cached outside the repository.

The cache is ``$ROOST_PEERS_CACHE`` or ``~/.cache/roost-bench-peers``; each virtualenv is a
directory named after the peer, with a ``.requirements`` marker holding what was installed,
so a changed pin rebuilds it. Installation uses ``pip`` (the machine's configured index),
with the virtualenv created from the Python running the benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import log


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "roost-bench-peers"
    return Path(os.environ.get("ROOST_PEERS_CACHE", default))


class VenvError(RuntimeError):
    """A peer's virtualenv could not be created or its packages not installed."""


def ensure_venv(name: str, requirements: list[str], timeout_s: float = 900) -> Path:
    """The ``bin/`` directory of the virtualenv ``name`` with ``requirements`` installed."""
    root = cache_dir() / name
    marker = root / ".requirements"
    wanted = "\n".join(requirements) + "\n"
    if marker.exists() and marker.read_text() == wanted and (root / "bin" / "python").exists():
        return root / "bin"
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log(f"creating {root} and installing {' '.join(requirements)} (once; cached) ...")
    started = time.monotonic()
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(root)], check=True, timeout=120)
    done = subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise VenvError(
            f"pip install {' '.join(requirements)} failed ({done.returncode}):\n"
            + (done.stdout + done.stderr)[-3000:]
        )
    marker.write_text(wanted)
    log(f"  installed in {time.monotonic() - started:.0f} s")
    return root / "bin"
