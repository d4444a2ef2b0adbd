"""Running the ``roost`` command line as a user would: a subprocess with its own ROOST_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def roost_executable() -> str:
    """The ``roost`` next to this interpreter (never another one on PATH), else PATH's."""
    sibling = Path(sys.executable).parent / "roost"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("roost")
    if found is None:
        pytest.skip("the roost entry point is not installed")
    return found


def roost(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env["ROOST_HOME"] = str(home)
    return subprocess.run(
        [roost_executable(), *args],
        capture_output=True, text=True, env=env, cwd=home.parent, timeout=120,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def failed_cleanly(done: subprocess.CompletedProcess[str]) -> str:
    """A handled error: exit 1, one ``error:`` line on stderr, nothing on stdout, no traceback."""
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    return done.stderr


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(done))
