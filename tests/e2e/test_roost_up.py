"""`roost up` as a user runs it: a real process tree on loopback ports, stopped with Ctrl-C."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from roost_testing import free_port

pytestmark = pytest.mark.slow


def start_up(home: Path, http_port: int, dagster_port: int) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "ROOST_HOME": str(home),
        "ROOST_HTTP_PORT": str(http_port),
        "ROOST_DAGSTER_PORT": str(dagster_port),
        "ROOST_GRPC_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until_up(proc: subprocess.Popen[str], timeout_s: float = 300) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("roost up exited early:\n" + "".join(lines))
        lines.append(line)
        if "Press Ctrl-C to stop." in line:
            return "".join(lines)
    raise AssertionError("roost up did not come up:\n" + "".join(lines))


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


def test_make_up_flow_runs_stops_and_reuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    http_port, dagster_port = free_port(), free_port()
    proc = start_up(home, http_port, dagster_port)
    try:
        banner = read_until_up(proc)
        assert "materializing the demo pipeline" in banner
        assert f"http://127.0.0.1:{dagster_port}" in banner
        assert f"http://127.0.0.1:{http_port}/v2" in banner
        # short and plain: one line per step, the URLs, nothing else (ROOST_VERBOSE shows more)
        assert len(banner.splitlines()) <= 15, banner
        assert "DEBUG" not in banner and "Warning" not in banner, banner
        assert "\x1b" not in banner, banner
        curl = next(line.strip() for line in banner.splitlines() if line.strip().startswith("curl"))
        result = subprocess.run(shlex.split(curl), capture_output=True, text=True, check=True)
        assert '"model_name":"breast-cancer"' in result.stdout
        assert '"name":"probabilities"' in result.stdout
        fraud = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/fraud")
        assert fraud.status_code == 200
        assert "customer_age_days" in fraud.json()["parameters"]["feature_names"]
        ui = httpx.get(f"http://127.0.0.1:{dagster_port}/server_info").json()
        assert ui["dagster_version"] == "1.13.27"
        # every process logs to its own plain-text file; the gateway's shows the request
        logs = home / "process-logs"
        deadline = time.monotonic() + 10
        while "/v2/models/fraud" not in (logs / "gateway.log").read_text():
            assert time.monotonic() < deadline, (logs / "gateway.log").read_text()
            time.sleep(0.2)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert out.strip() == "roost: stopping ...", out  # nothing printed at exit (nanobind)
    for name in (
        "pipeline",
        "gateway",
        "dagster-code-server",
        "dagster-webserver",
        "dagster-daemon",
    ):
        text = (logs / f"{name}.log").read_text()
        assert text.strip(), name
        assert "\x1b" not in text, name
    assert "No heartbeat received" not in (logs / "dagster-code-server.log").read_text()
    children = subprocess.run(
        ["pgrep", "-f", f"dagster.* -p {dagster_port}"], capture_output=True, text=True
    )
    assert children.stdout.strip() == ""
    for port in (http_port, dagster_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)

    # a second run reuses the deployed versions: no new version, no error
    proc = start_up(home, http_port, dagster_port)
    try:
        banner = read_until_up(proc)
        assert "reusing" in banner
    finally:
        stop(proc)
    assert proc.returncode == 0
    listing = subprocess.run(
        [sys.executable, "-m", "orchestration", "versions", "breast-cancer", "--json"],
        env={**os.environ, "ROOST_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(re.findall(r'"version": \d+', listing.stdout)) == 1
