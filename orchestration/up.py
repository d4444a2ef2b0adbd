"""``roost up``: the whole platform on embedded defaults, with the demo models, in one command.

Materializes the demo pipeline (only what is missing), then starts the gateway, a Dagster code
server, the Dagster webserver and the Dagster daemon as child processes, prints where to look,
and stops them all on Ctrl-C or when any of them dies.

Output: one line per step, the URLs, nothing else; ``verbose`` (``ROOST_VERBOSE=1``) shows the
pipeline's own output too. Every process logs to its own plain-text file under
``$ROOST_HOME/process-logs`` (``pipeline.log`` for the demo pipeline run in this process).

The webserver and the daemon share one code server (``dagster code-server start``, named in a
generated workspace): left to itself the daemon starts its own code servers, replaces them every
minute and each old one logs "No heartbeat received in 20 seconds, shutting down".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import httpx

from orchestration.logs import LogPump, quiet_output
from registry import Registry, RoostSettings
from registry.settings import cli_home_line

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_LOCATION = "orchestration.definitions"
DEFAULT_DAGSTER_YAML = """telemetry:
  enabled: false
"""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    pump: LogPump


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def prepare_dagster_home(settings: RoostSettings) -> Path:
    """Create DAGSTER_HOME under ROOST_HOME with the repository's dagster.yaml."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if source.exists():
        shutil.copyfile(source, target)
    elif not target.exists():
        target.write_text(DEFAULT_DAGSTER_YAML)
    return home


def missing_demo_models(settings: RoostSettings) -> list[str]:
    from assets.demo import DEMO_MODELS

    registry = Registry.from_settings(settings)
    try:
        deployed = {
            d.model for d in registry.list_deployments() if d.production_version is not None
        }
    finally:
        registry.close()
    return [spec.served_name for spec in DEMO_MODELS if spec.served_name not in deployed]


STEP_DONE = re.compile(r'(STEP_SUCCESS|STEP_FAILURE) - .*?step "([^"]+)"')


class PipelineProgress:
    """Watches the pipeline's event log lines; on a terminal keeps one line up to date."""

    def __init__(self, total: int, terminal: TextIO) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.terminal = terminal
        self.started = time.monotonic()
        self.live = terminal.isatty()

    def __call__(self, line: str) -> None:
        match = STEP_DONE.search(line)
        if match is None:
            return
        self.done += 1
        self.failed += match.group(1) == "STEP_FAILURE"
        if self.live:
            self.terminal.write(f"\rroost:   [{self.done}/{self.total}] {match.group(2)[:60]:<60}")
            self.terminal.flush()

    def finish(self, ok: bool) -> None:
        if self.live:
            self.terminal.write("\r" + " " * 80 + "\r")
        outcome = "done" if ok else f"FAILED ({self.failed} failed)"
        self.terminal.write(
            f"roost: demo pipeline {outcome}: {self.done} steps in "
            f"{time.monotonic() - self.started:.0f} s\n"
        )
        self.terminal.flush()


def demo_step_count() -> int:
    from assets.demo import demo_assets

    assets, checks = demo_assets()
    return len(assets) + len(checks)


def materialize_demo(settings: RoostSettings) -> bool:
    """Run the demo pipeline in the Dagster instance under ROOST_HOME (visible in the UI)."""
    from dagster import DagsterInstance, materialize

    from assets.demo import demo_assets
    from assets.resources import FeatureStoreResource, RegistryResource

    assets, checks = demo_assets()
    with DagsterInstance.get() as instance:
        result = materialize(
            [*assets, *checks],
            instance=instance,
            resources={
                "registry": RegistryResource(home=str(settings.home)),
                "features": FeatureStoreResource(home=str(settings.home)),
            },
            raise_on_error=False,
        )
    return bool(result.success)


def _spawn(name: str, args: list[str], env: dict[str, str], logs: Path) -> Child:
    log_path = logs / f"{name}.log"
    process = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,  # copied into log_path without ANSI escape codes
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
    )
    assert process.stdout is not None
    return Child(name, process, log_path, LogPump(process.stdout, log_path))


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def code_server_workspace(dagster_home: Path, host: str, port: int) -> Path:
    """A workspace naming the shared code server, for the webserver and the daemon."""
    path = dagster_home / "workspace.yaml"
    path.write_text(
        "# Written by `roost up`: the webserver and the daemon share one code server.\n"
        "load_from:\n"
        "  - grpc_server:\n"
        f"      host: {host}\n"
        f"      port: {port}\n"
        f"      location_name: {CODE_LOCATION}\n"
    )
    return path


def _wait_tcp(host: str, port: int, children: list[Child], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(c.process.poll() is not None for c in children):
            return False
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.2)
    return False


def _stop(children: list[Child], grace_s: float = 15.0) -> None:
    for child in children:
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            child.process.wait(remaining)
        except subprocess.TimeoutExpired:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
    for child in children:
        child.pump.join()


def _wait_http(url: str, children: list[Child], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(c.process.poll() is not None for c in children):
            return False
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def sample_request(settings: RoostSettings) -> str:
    """A ready-to-paste curl that asks the breast-cancer model for one prediction."""
    from assets.demo_data import load_breast_cancer_dataset

    dataset = load_breast_cancer_dataset()
    row = [float(v) for v in dataset.frame[dataset.feature_names].iloc[0]]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, len(row)], "data": row}]}
    url = f"http://{settings.host}:{settings.http_port}/v2/models/breast-cancer/infer"
    return (
        f"curl -s -X POST {url} -H 'content-type: application/json' "
        f"-H 'roost-user: demo-user' -d '{json.dumps(body)}'"
    )


def _say(message: str) -> None:
    print(f"roost: {message}", flush=True)


def run_pipeline(settings: RoostSettings, missing: list[str], logs: Path, verbose: bool) -> bool:
    """Materialize the demo pipeline; its own output goes to pipeline.log unless ``verbose``."""
    log_path = logs / "pipeline.log"
    _say(f"materializing the demo pipeline for {', '.join(missing)} (log: {log_path}) ...")
    if verbose:
        return materialize_demo(settings) and not missing_demo_models(settings)
    progress = PipelineProgress(demo_step_count(), sys.stdout)
    ok = False
    try:
        with quiet_output(log_path, on_line=progress):
            ok = materialize_demo(settings) and not missing_demo_models(settings)
    finally:
        progress.finish(ok)
    return ok


def run_up(settings: RoostSettings, *, skip_pipeline: bool = False, verbose: bool = False) -> int:
    verbose = verbose or os.environ.get("ROOST_VERBOSE", "").lower() in ("1", "true", "yes")
    settings.home.mkdir(parents=True, exist_ok=True)
    logs = settings.home / "process-logs"
    logs.mkdir(exist_ok=True)
    dagster_home = prepare_dagster_home(settings)
    os.environ["ROOST_HOME"] = str(settings.home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    # `roost up` is the laptop experience: the well-known dev admin key works unless the
    # environment says otherwise. Production deployments never set ROOST_DEV_MODE.
    os.environ.setdefault("ROOST_DEV_MODE", "true")

    busy = [
        f"{what} port {port}"
        for what, port in (
            ("gateway (ROOST_HTTP_PORT)", settings.http_port),
            ("Dagster (ROOST_DAGSTER_PORT)", settings.dagster_port),
            ("gRPC (ROOST_GRPC_PORT)", settings.grpc_port),
        )
        if not _port_free(settings.host, port)
    ]
    if busy:
        print(
            f"error: in use on {settings.host}: {', '.join(busy)}; set other ports", file=sys.stderr
        )
        return 1

    missing = [] if skip_pipeline else missing_demo_models(settings)
    if missing:
        if not run_pipeline(settings, missing, logs, verbose):
            print(
                f"error: the demo pipeline failed; see {logs / 'pipeline.log'} and the run in "
                "the Dagster UI",
                file=sys.stderr,
            )
            return 1
    elif not skip_pipeline:
        _say("demo models already deployed; reusing them")
    if not skip_pipeline:  # roost-lm, when ROOST_LLM_DEMO=1 (make up sets it)
        from orchestration.cli_llm import run_llm_demo_for_up  # JAX only when it runs

        run_llm_demo_for_up(settings, logs, verbose)

    env = dict(os.environ)
    bindir = Path(sys.executable).parent
    code_port = _free_port(settings.host)
    workspace = code_server_workspace(dagster_home, settings.host, code_port)
    _say(f"starting the gateway and Dagster (logs: {logs}) ...")
    children = [
        _spawn("gateway", [sys.executable, "-m", "orchestration.logs", "serve"], env, logs),
        _spawn(
            "dagster-code-server",
            [
                str(bindir / "dagster"),
                "code-server",
                "start",
                "-h",
                settings.host,
                "-p",
                str(code_port),
                "-m",
                CODE_LOCATION,
                "--location-name",
                CODE_LOCATION,
            ],
            env,
            logs,
        ),
    ]

    stopping = False

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not _wait_tcp(settings.host, code_port, children, 120):
            print(f"error: the Dagster code server did not start; see {logs}", file=sys.stderr)
            return 1
        location = ["-w", str(workspace)]
        children.append(
            _spawn(
                "dagster-webserver",
                [
                    str(bindir / "dagster-webserver"),
                    "-h",
                    settings.host,
                    "-p",
                    str(settings.dagster_port),
                    *location,
                ],
                env,
                logs,
            )
        )
        children.append(
            _spawn("dagster-daemon", [str(bindir / "dagster-daemon"), "run", *location], env, logs)
        )
        gateway = f"http://{settings.host}:{settings.http_port}"
        dagster = f"http://{settings.host}:{settings.dagster_port}"
        ok = _wait_http(f"{gateway}/v2/health/ready", children, 180) and _wait_http(
            f"{dagster}/server_info", children, 180
        )
        if not ok:
            print(f"error: the platform did not start; logs are in {logs}", file=sys.stderr)
            return 1
        lines = [
            "",
            f"Roost is up (ROOST_HOME={settings.home}).",
            "  " + cli_home_line(settings),
            f"  Gateway (OIP v2, KServe v1)  {gateway}/v2   API docs {gateway}/docs",
            f"  gRPC inference               {settings.host}:{settings.grpc_port}",
            f"  Dagster UI                   {dagster}",
            "  Admin key (dev mode only)    x-api-key: roost-dev-key",
            "  A prediction:",
            f"  {sample_request(settings)}",
        ]
        if verbose:
            lines += [
                "  SQL over the prediction logs (in another shell):",
                f"  ROOST_HOME={settings.home} .venv/bin/roost sql "
                '"select model, version, status, count(*) from predictions group by all"',
            ]
        lines.append("Press Ctrl-C to stop.")
        print("\n".join(lines), flush=True)
        while not stopping:
            dead = [c for c in children if c.process.poll() is not None]
            if dead:
                print(
                    f"error: {dead[0].name} exited with {dead[0].process.returncode}; "
                    f"see {dead[0].log_path}",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
        _say("stopping ...")
        return 0
    finally:
        _stop(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not verbose:
            _exit_noise_to(logs / "roost-up.log")


def _exit_noise_to(log_path: Path) -> None:
    """What the interpreter prints while it exits (duckdb's nanobind bindings report objects
    still referenced by daemon threads) goes to ``log_path``, not the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
