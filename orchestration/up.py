"""``roost up``: the whole platform on embedded defaults, with the demo models, in one command.

Materializes the demo pipeline (only what is missing), then starts the gateway, the Dagster
webserver and the Dagster daemon as child processes, prints where to look, and stops them all
on Ctrl-C or when any of them dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from registry import Registry, RoostSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DAGSTER_YAML = """telemetry:
  enabled: false
"""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


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
    handle = log_path.open("ab")
    process = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
    )
    handle.close()
    return Child(name, process, log_path)


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


def run_up(settings: RoostSettings, *, skip_pipeline: bool = False) -> int:
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
        print(f"roost: materializing the demo pipeline for {', '.join(missing)} ...", flush=True)
        if not materialize_demo(settings) or missing_demo_models(settings):
            print("error: the demo pipeline failed; see the run in the Dagster UI", file=sys.stderr)
            return 1
    elif not skip_pipeline:
        print("roost: demo models already deployed; reusing them", flush=True)

    env = dict(os.environ)
    bindir = Path(sys.executable).parent
    workspace = REPO_ROOT / "workspace.yaml"
    location = ["-w", str(workspace)] if workspace.exists() else ["-m", "orchestration.definitions"]
    children = [
        _spawn("gateway", [sys.executable, "-m", "orchestration", "serve"], env, logs),
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
        ),
        _spawn("dagster-daemon", [str(bindir / "dagster-daemon"), "run", *location], env, logs),
    ]

    stopping = False

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        gateway = f"http://{settings.host}:{settings.http_port}"
        dagster = f"http://{settings.host}:{settings.dagster_port}"
        ok = _wait_http(f"{gateway}/v2/health/ready", children, 180) and _wait_http(
            f"{dagster}/server_info", children, 180
        )
        if not ok:
            print(f"error: the platform did not start; logs are in {logs}", file=sys.stderr)
            return 1
        print(
            f"""
Roost is up (ROOST_HOME={settings.home}).

  Gateway (Open Inference Protocol v2, KServe v1)  {gateway}/v2
  gRPC (inference.GRPCInferenceService)            {settings.host}:{settings.grpc_port}
  API docs                                           {gateway}/docs
  Dagster UI (lineage, checks, runs)                 {dagster}
  Process logs                                       {logs}

Admin key (dev mode only): x-api-key: roost-dev-key   (create real ones: roost keys create)

Ask the breast-cancer model for a prediction:

  {sample_request(settings)}

SQL over the prediction logs (in another shell):

  ROOST_HOME={settings.home} .venv/bin/roost sql \\
    "select model, version, status, count(*) from predictions group by all"

Press Ctrl-C to stop.
""",
            flush=True,
        )
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
        print("roost: stopping ...", flush=True)
        return 0
    finally:
        _stop(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
