"""What ``run.py`` is built from: the machine, the servers, the load drivers, the prediction log.

- machine facts and CPU accounting from ``/proc`` (server CPU, client CPU, everything else);
- the demo breast-cancer model materialized by the demo pipeline, and in-process timings;
- servers under test (:class:`Target`): started as subprocesses on free loopback ports, checked,
  stopped with SIGINT (Roost flushes its prediction log), their output scanned for tracebacks;
- load drivers: :func:`run_wrk` (REST, JSON or binary bodies through ``post.lua``),
  :func:`run_grpc` (``grpc_load.py``) and :func:`run_burst` (``burst_load.py``), each returning
  one row with req/s, latency percentiles, errors and CPU;
- the prediction log: rows counted, and a tagged run's rows read back (status, latency).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))

# One free_port and one way to wait for / stop a server process, shared with the tests.
from gateway_process import free_port, stop_process, wait_until_ready  # noqa: E402

MODEL = "breast-cancer"
INFER_PATH = f"/v2/models/{MODEL}/infer"
READY_PATH = "/v2/health/ready"
LUA_SCRIPT = BENCH_DIR / "post.lua"
BODY_FILE = BENCH_DIR / "body.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADER_LENGTH = "Inference-Header-Content-Length"

WRK_MISSING = """wrk is not installed (or not on PATH); the HTTP measurements need it.
Install it with:
  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y wrk
  Fedora:         sudo dnf install -y wrk
  macOS:          brew install wrk
or build it from https://github.com/wg/wrk. Then rerun this script."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# machine


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("onnxruntime", "numpy", "orjson", "fastapi", "starlette", "uvicorn", "uvloop",
                 "httptools", "grpcio", "tritonclient", "scikit-learn", "skl2onnx"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    wrk = shutil.which("wrk")
    wrk_version = None
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        lines = (out.stdout + out.stderr).strip().splitlines()
        wrk_version = lines[0].strip() if lines else None
    mem_total = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "mem_total_mib": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "wrk": wrk_version,
        "loadavg_start": loadavg(),
    }


def source_fingerprint() -> dict[str, Any]:
    """sha256 over the gateway's source (registry, serving, warehouse): which code was measured."""
    digest = hashlib.sha256()
    files = sorted(
        p for pkg in ("registry", "serving", "warehouse") for p in (REPO_ROOT / pkg).rglob("*.py")
    )
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return {"sha256_12": digest.hexdigest()[:12], "files": len(files)}


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies summed over all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


def _proc_stat(pid: int | str) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def proc_tree(pid: int) -> set[int]:
    """``pid`` and its live descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                parents[int(entry.name)] = int(_proc_stat(entry.name)[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    return tree


def proc_cpu_s(pid: int, tree: set[int] | None = None) -> float:
    """utime + stime of process ``pid`` and its descendants (all threads; live ones), seconds."""
    total = 0
    for member in tree if tree is not None else proc_tree(pid):
        with contextlib.suppress(OSError, IndexError):
            fields = _proc_stat(member)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mib(tree: set[int]) -> float:
    """Resident memory (VmRSS) of the processes in ``tree``, summed, MiB."""
    total_kib = 0
    for member in tree:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    break
    return total_kib / 1024


def fdatasync_us(directory: Path, syncs: int = 400) -> dict[str, float]:
    """Median and p90 (µs) of one 1.6 kB append + ``fdatasync`` in ``directory``: what one
    durable prediction-log record costs on that disk at the least."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".fdatasync-probe"
    record = b"r" * 1600
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(syncs):
            started = time.perf_counter_ns()
            os.write(fd, record)
            os.fdatasync(fd)
            samples.append(time.perf_counter_ns() - started)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    samples.sort()
    return {"median_us": samples[len(samples) // 2] / 1000,
            "p90_us": samples[int(len(samples) * 0.9)] / 1000, "syncs": syncs}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used over a window: by the server (process tree), by our finished children (the
    load generator), and by everything else on the machine ("other load")."""

    def __init__(self, server_pid: int) -> None:
        self.tree = proc_tree(server_pid)
        self.server_pid = server_pid

    def begin(self) -> None:
        self.ticks0 = cpu_ticks()
        self.each0 = {pid: proc_cpu_s(pid, {pid}) for pid in self.tree}
        self.server0 = sum(self.each0.values())
        self.children0 = children_cpu_s()
        self.t0 = time.monotonic()

    def end(self) -> None:
        self.elapsed = time.monotonic() - self.t0
        each1 = {pid: proc_cpu_s(pid, {pid}) for pid in self.tree}
        self.server_s = sum(each1.values()) - self.server0
        # per process of the server (workers): how evenly the kernel spread the connections
        self.per_process = {
            pid: round(each1[pid] - self.each0.get(pid, 0.0), 3) for pid in each1
            if each1[pid] - self.each0.get(pid, 0.0) >= 0.05
        }
        self.ticks1 = cpu_ticks()

    def result(self, requests: int, client_s: float | None = None) -> dict[str, Any]:
        """Call after the client process has been waited for (its CPU is then counted)."""
        if client_s is None:
            client_s = children_cpu_s() - self.children0
        busy = (self.ticks1[0] - self.ticks0[0]) / CLK_TCK
        total = max(1, self.ticks1[1] - self.ticks0[1])
        elapsed = max(self.elapsed, 1e-9)
        return {
            "server_cpu_us_per_req": self.server_s / max(1, requests) * 1e6,
            "server_cpu_cores": self.server_s / elapsed,
            "client_cpu_cores": client_s / elapsed,
            "other_cpu_cores": max(0.0, (busy - self.server_s - client_s) / elapsed),
            "steal_pct": 100.0 * (self.ticks1[2] - self.ticks0[2]) / total,
            "server_cpu_s_per_process": self.per_process,
        }


# ------------------------------------------------------------------------------------------
# the demo model


def materialize_model(home: Path) -> bytes:
    """Run the demo pipeline for breast-cancer into ``home``; return the deployed ONNX bytes."""
    import logging

    from dagster import DagsterInstance, materialize

    from assets.demo import DEMO_SPECS
    from assets.lineage import build_lineage
    from assets.resources import FeatureStoreResource, RegistryResource
    from registry import Registry, RoostSettings

    logging.getLogger("dagster").setLevel(logging.WARNING)
    spec = next(s for s in DEMO_SPECS if s.name == MODEL)
    lineage = build_lineage(spec)  # candidate -> validation -> staging -> canary -> production
    assets, checks = lineage.assets, lineage.checks
    chatter = io.StringIO()  # Dagster's DEBUG event log: shown only if the run fails
    with contextlib.redirect_stderr(chatter):
        result = materialize(
            [*assets, *checks],
            resources={
                "registry": RegistryResource(home=str(home)),
                "features": FeatureStoreResource(home=str(home)),
            },
            instance=DagsterInstance.ephemeral(),
            raise_on_error=False,
        )
    if not result.success:
        print(chatter.getvalue()[-5000:], file=sys.stderr)
        raise RuntimeError("materializing the breast-cancer pipeline failed")
    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        versions = [v for v in registry.served_versions() if v.model == MODEL]
        if not versions:
            raise RuntimeError("the pipeline ran but breast-cancer has no production version")
        return registry.load_artifact(MODEL, versions[0].version)
    finally:
        registry.close()


def binary_body(json_body: bytes) -> tuple[bytes, int]:
    """The same request in Triton's binary tensor extension, asking for binary outputs.

    Returns (body, JSON header length): every input's data as raw little-endian bytes after the
    JSON, and ``parameters.binary_data_output: true`` so every output comes back raw too.
    """
    import numpy as np
    import orjson

    request = orjson.loads(json_body)
    dtypes = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    raw: list[bytes] = []
    for tensor in request["inputs"]:
        data = np.asarray(tensor["data"], dtype=dtypes[tensor["datatype"]]).tobytes()
        header["inputs"].append({
            "name": tensor["name"],
            "datatype": tensor["datatype"],
            "shape": tensor["shape"],
            "parameters": {"binary_data_size": len(data)},
        })
        raw.append(data)
    head = orjson.dumps(header)
    return head + b"".join(raw), len(head)


def decode_binary_response(body: bytes, header_length: int) -> dict[str, Any]:
    """{output name: list of values} of a binary-extension response (FP32/INT64 outputs)."""
    import numpy as np
    import orjson

    head = orjson.loads(body[:header_length])
    dtypes = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
    offset, out = header_length, {}
    for tensor in head["outputs"]:
        if "data" in tensor:
            out[tensor["name"]] = tensor["data"]
            continue
        size = tensor["parameters"]["binary_data_size"]
        values = np.frombuffer(body[offset : offset + size], dtype=dtypes[tensor["datatype"]])
        out[tensor["name"]] = values.tolist()
        offset += size
    return out


# ------------------------------------------------------------------------------------------
# in-process timings


def _median_us(call: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(min(1000, calls)):
        call()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        start = clock()
        call()
        samples.append(clock() - start)
    return _summary(samples)


async def _median_us_async(call: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    for _ in range(min(1000, calls)):
        await call()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        start = clock()
        await call()
        samples.append(clock() - start)
    return _summary(samples)


def _summary(samples: list[int]) -> dict[str, float]:
    samples.sort()
    return {
        "median_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "mean_us": statistics.fmean(samples) / 1000,
        "calls": len(samples),
    }


def _roost_dataplane_us(home: Path, body: bytes, calls: int) -> dict[str, Any]:
    """Roost's data plane in-process, as the REST route calls it: no HTTP, no FastAPI routing.

    The gateway app's own lifespan builds the data plane (repository, batcher, prediction log
    writer, metrics), so this follows the code as it is; gRPC is off for this measurement.
    """
    import asyncio

    from registry import RoostSettings
    from serving import create_app, oip
    from serving.dataplane import CallContext

    settings = RoostSettings(home=home, grpc_port=0)
    app = create_app(settings)
    context = CallContext(protocol="v2-rest", user_id="in-process")
    limits = oip.DecodeLimits.from_settings(settings)

    async def measure() -> dict[str, Any]:
        async with app.router.lifespan_context(app):
            plane = app.state.dataplane

            async def call() -> bytes:
                request = oip.decode_infer_request(body, limits)  # the transport's decode
                result = await plane.infer(MODEL, None, request, context)
                return oip.encode_infer_response(
                    result.model, str(result.version), result.request_id, result.outputs
                )

            return await _median_us_async(call, calls)

    return asyncio.run(measure())


def measure_in_process(home: Path, model: bytes, body: bytes, calls: int) -> dict[str, Any]:
    """Per-call µs: raw session.run, the floor's handler, Roost's data plane (no HTTP)."""
    import numpy as np
    import orjson

    sys.path.insert(0, str(BENCH_DIR))
    from floor_app import make_handler, make_session

    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    tensor = orjson.loads(body)["inputs"][0]
    feeds = {tensor["name"]: np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])}
    handle = make_handler(session, MODEL)
    out: dict[str, Any] = {
        "onnxruntime_run": _median_us(lambda: session.run(names, feeds), calls),
        "onnxruntime_run_oip_json": _median_us(lambda: handle(body), calls),
    }
    try:
        out["roost_dataplane"] = _roost_dataplane_us(home, body, calls)
    except Exception as exc:  # the data plane's API moves; the HTTP figures still stand
        out["roost_dataplane_error"] = f"{type(exc).__name__}: {exc}"
        log(f"warning: in-process Roost data plane not measured: {exc}")
    return out


# ------------------------------------------------------------------------------------------
# servers


@dataclass
class Target:
    """One server under test: how to start it and where it answers."""

    name: str
    description: str
    argv: list[str]
    env: dict[str, str]
    port: int
    workers: int = 1
    grpc_port: int | None = None
    infer_path: str = INFER_PATH
    ready_path: str = READY_PATH
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.infer_path

    @property
    def label(self) -> str:
        return f"{self.name}-w{self.workers}"

    def infer_url(self, model: str) -> str:
        return f"{self.base}/v2/models/{model}/infer"


def roost_argv() -> list[str]:
    python = sys.executable
    roost_bin = Path(python).with_name("roost")
    if roost_bin.exists():
        return [str(roost_bin)]
    return [python, "-c", "from orchestration.cli import main; main()"]


def roost_target(home: Path, workers: int = 1, *, name: str = "roost",
                 env: dict[str, str] | None = None, description: str | None = None) -> Target:
    """``roost serve`` on free REST and gRPC ports over ``home``; ``env`` adds ROOST_* settings."""
    roost_port, grpc_port = free_port(), free_port()
    return Target(
        name=name,
        description=description
        or "Roost gateway (`roost serve`: prediction logging, metrics and gRPC on)",
        argv=[
            *roost_argv(), "serve", "--host", "127.0.0.1", "--port", str(roost_port),
            "--workers", str(workers),
        ],
        env={
            "ROOST_HOME": str(home),
            "ROOST_HTTP_PORT": str(roost_port),
            "ROOST_WORKERS": str(workers),
            "ROOST_GRPC_PORT": str(grpc_port),
            **(env or {}),
        },
        port=roost_port,
        workers=workers,
        grpc_port=grpc_port,
    )


def floor_target(model_path: Path, workers: int = 1, *, name: str = "floor") -> Target:
    """The floor (``floor_app.py``) under uvicorn, configured as ``roost serve`` runs uvicorn."""
    port = free_port()
    return Target(
        name=name,
        description="bare FastAPI endpoint calling one session (benchmarks/floor_app.py)",
        argv=[
            sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(BENCH_DIR),
            "floor_app:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--workers", str(workers),
        ],
        env={"FLOOR_MODEL_PATH": str(model_path), "FLOOR_MODEL_NAME": MODEL},
        port=port,
        workers=workers,
    )


def build_targets(home: Path, model_path: Path, names: list[str], workers: int) -> list[Target]:
    makers = {
        "roost": lambda: roost_target(home, workers),
        "floor": lambda: floor_target(model_path, workers),
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    return [makers[n]() for n in names]


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def start(target: Target, logs: Path) -> None:
    target.log_path = logs / f"{target.label}.log"
    with target.log_path.open("wb") as out:
        target.proc = subprocess.Popen(
            target.argv,
            cwd=REPO_ROOT,
            env={**os.environ, **target.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the servers ourselves
        )


def wait_ready(target: Target, timeout_s: float = 180) -> None:
    assert target.proc is not None
    wait_until_ready(
        target.base + target.ready_path, target.proc, log_path=target.log_path,
        timeout_s=timeout_s, name=target.label,
    )


def stop(target: Target, timeout_s: float = 30) -> None:
    """SIGINT: uvicorn shuts down gracefully, Roost flushes its log; SIGKILL past the time."""
    if target.proc is not None:
        stop_process(target.proc, signal.SIGINT, timeout_s)


def scan_log(target: Target, out_dir: Path) -> dict[str, Any]:
    """Error lines and tracebacks in the server's output; keeps its last 20 kB under out/logs."""
    if target.log_path is None or not target.log_path.exists():
        return {}
    text = target.log_path.read_text(errors="replace")
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{target.label}.log").write_text(text[-20000:])
    exceptions = re.findall(r"^(\w[\w.]*(?:Error|Exception|Disconnect)\b)", text, re.M)
    return {
        "bytes": len(text),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "exception_types": dict(collections.Counter(exceptions).most_common(5)),
    }


def metrics_text(target: Target) -> str:
    status, _, body = http("GET", target.base + "/metrics")
    return body.decode() if status == 200 else ""


def metric_value(text: str, name: str, model: str) -> float | None:
    """The value of ``name{model="<model>",...}`` in a Prometheus exposition (first match)."""
    pattern = re.compile(
        r"^" + re.escape(name) + r"\{[^}]*model=\"" + re.escape(model) + r"\"[^}]*\}\s+(\S+)$",
        re.M,
    )
    match = pattern.search(text)
    return float(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------
# wrk

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)\b"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """req/s, latency percentiles (ms), request count, non-2xx/3xx and socket errors."""
    out: dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not match:
        raise ValueError(f"cannot read Requests/sec from wrk output:\n{text}")
    out["rps"] = float(match.group(1))
    percentiles = {}
    for pct, value, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+" + _TIME, text, re.M):
        key = pct.rstrip("0").rstrip(".") if "." in pct else pct
        percentiles[f"p{key}"] = _ms(value, unit)
    out["latency_ms"] = percentiles
    match = re.search(r"Latency\s+" + _TIME + r"\s+" + _TIME, text)
    if match:
        out["latency_ms"]["avg"] = _ms(match.group(1), match.group(2))
        out["latency_ms"]["stdev"] = _ms(match.group(3), match.group(4))
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if match:
        out["requests"] = int(match.group(1))
        out["elapsed_s"] = _ms(match.group(2), match.group(3)) / 1000
    match = re.search(r"bench-tail: p99\.9=([\d.]+)us max=([\d.]+)us", text)
    if match:
        out["latency_ms"]["p99.9"] = float(match.group(1)) / 1000
        out["latency_ms"]["max"] = float(match.group(2)) / 1000
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    keys = ("connect", "read", "write", "timeout")
    out["socket_errors"] = dict(zip(keys, map(int, match.groups()), strict=True)) if match else {}
    return out


def run_wrk(
    target: Target,
    concurrency: int,
    duration_s: float,
    body_file: Path,
    *,
    protocol: str = "REST JSON",
    header_length: int | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """One wrk run; also the server's CPU time, wrk's, and the machine's other load meanwhile."""
    assert target.proc is not None
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", "--latency",
        "-s", str(LUA_SCRIPT), url or target.url,
    ]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
    if header_length is not None:
        env["BENCH_HEADER_LENGTH"] = str(header_length)
    window = CpuWindow(target.proc.pid)
    window.begin()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=duration_s + 60, check=False
    )
    window.end()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    result.update(window.result(result.get("requests") or 1))
    result.update(
        server=target.name,
        workers=target.workers,
        protocol=protocol,
        concurrency=concurrency,
        duration_s=duration_s,
        client="wrk",
        errors=sum(result["socket_errors"].values()),
        command=("BENCH_BODY_FILE=" + str(body_file) + " "
                 + (f"BENCH_HEADER_LENGTH={header_length} " if header_length else "")
                 + " ".join(argv)),
        raw=done.stdout,
    )
    return result


# ------------------------------------------------------------------------------------------
# gRPC and burst load generators (our own Python scripts, run as child processes)


def _run_marked(argv: list[str], timeout_s: float,
                on_mark: Callable[[str], None]) -> dict[str, Any]:
    """Run a load generator that prints marks on stderr and one JSON object on stdout."""
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    errors: list[str] = []

    def read_marks() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("mark: "):
                on_mark(line[6:].strip())
            else:
                errors.append(line)

    chunks: list[str] = []

    def read_out() -> None:
        assert proc.stdout is not None
        chunks.append(proc.stdout.read())

    readers = [threading.Thread(target=f, daemon=True) for f in (read_marks, read_out)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    for reader in readers:
        reader.join(10)
    stdout = "".join(chunks)
    if proc.returncode != 0 or not stdout.strip():
        raise RuntimeError(f"{argv[1]} failed ({proc.returncode}):\n{''.join(errors)[-3000:]}")
    return dict(json.loads(stdout))


def run_grpc(target: Target, concurrency: int, duration_s: float, body_file: Path,
             model: str = MODEL, warmup_s: float = 1.0) -> dict[str, Any]:
    """Closed-loop ModelInfer calls from ``grpc_load.py`` at ``concurrency`` (one process)."""
    assert target.proc is not None and target.grpc_port
    argv = [
        sys.executable, str(BENCH_DIR / "grpc_load.py"),
        "--address", f"127.0.0.1:{target.grpc_port}", "--model", model,
        "--body", str(body_file), "--concurrency", str(concurrency),
        "--duration", f"{duration_s:g}", "--warmup", f"{warmup_s:g}",
    ]
    window = CpuWindow(target.proc.pid)

    def on_mark(mark: str) -> None:
        if mark == "recording":
            window.begin()
        elif mark == "done":
            window.end()

    result = _run_marked(argv, duration_s + warmup_s + 60, on_mark)
    result.update(window.result(result["requests"] or 1, client_s=result["client_cpu_s"]))
    result.update(
        server=target.name,
        workers=target.workers,
        protocol="gRPC",
        concurrency=concurrency,
        duration_s=duration_s,
        client="grpc_load.py (Python, 1 process)",
        non_2xx=sum(result["errors"].values()),
        errors=0,
        command=" ".join(argv[1:]).replace(str(REPO_ROOT) + "/", ""),
    )
    return result


class RssSampler:
    """Samples the server's resident memory every ``every_s`` seconds on a thread."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.tree = proc_tree(pid)
        self.every_s = every_s
        self.samples: list[tuple[float, float, str]] = []  # (t, MiB, phase)
        self.phase = "before"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self.t0, rss_mib(self.tree), self.phase))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        by_phase: dict[str, list[float]] = collections.defaultdict(list)
        for _, mib, phase in self.samples:
            by_phase[phase].append(mib)
        burst = by_phase.get("burst", [])
        half = len(burst) // 2
        return {
            "idle_mib": max(by_phase.get("before", [0.0]) or [0.0]),
            "max_burst_mib": max(burst) if burst else None,
            "max_first_half_mib": max(burst[:half]) if half else None,
            "max_second_half_mib": max(burst[half:]) if burst else None,
            "max_drain_mib": max(by_phase.get("drain", [0.0]) or [0.0]),
            "after_mib": by_phase.get("after", [None])[-1] if by_phase.get("after") else None,
            "samples": len(self.samples),
            "series": [(round(t, 2), round(m, 1), p) for t, m, p in self.samples[::4]],
        }


def run_burst(target: Target, url: str, body_file: Path, rate: float, duration_s: float,
              connections: int, drain_s: float, tag: str) -> dict[str, Any]:
    """An open-loop burst from ``burst_load.py``; the server's RSS sampled throughout."""
    assert target.proc is not None
    argv = [
        sys.executable, str(BENCH_DIR / "burst_load.py"), "--url", url,
        "--body", str(body_file), "--rate", f"{rate:.0f}", "--duration", f"{duration_s:g}",
        "--connections", str(connections), "--preopen", str(connections),
        "--drain", f"{drain_s:g}", "--tag", tag,
    ]
    window = CpuWindow(target.proc.pid)
    with RssSampler(target.proc.pid) as sampler:
        time.sleep(0.5)

        def on_mark(mark: str) -> None:
            if mark == "burst":
                window.begin()
                sampler.phase = "burst"
            elif mark == "drain":
                window.end()
                sampler.phase = "drain"
            elif mark == "done":
                sampler.phase = "after"

        result = _run_marked(argv, duration_s + drain_s + 120, on_mark)
        time.sleep(0.5)
    result.update(window.result(result["answered"] or 1, client_s=result["client_cpu_s"]))
    result["rss"] = sampler.summary()
    result["command"] = " ".join(argv[1:]).replace(str(REPO_ROOT) + "/", "")
    return result


# ------------------------------------------------------------------------------------------
# prediction log


def count_logged_rows(home: Path) -> int:
    import pyarrow.parquet as pq

    root = home / "logs" / "predictions"
    return sum(pq.read_metadata(p).num_rows for p in root.rglob("*.parquet"))


def logged_rows(home: Path, user_id: str) -> dict[str, Any]:
    """Status counts and server-side latency (ms) of the logged rows tagged ``user_id``."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(home / "logs" / "predictions", format="parquet", partitioning="hive")
    table = dataset.to_table(
        columns=["status", "latency_ms"], filter=pc.field("user_id") == user_id
    )
    statuses = table["status"].to_numpy()
    latency = table["latency_ms"].to_numpy()
    out: dict[str, Any] = {"rows": int(table.num_rows), "statuses": {}, "latency_ms": {}}
    for status in sorted(set(statuses.tolist())):
        values = latency[statuses == status]
        out["statuses"][str(status)] = int(values.size)
        out["latency_ms"][str(status)] = {
            f"p{p:g}": float(np.percentile(values, p)) for p in (50, 99, 99.9)
        } | {"max": float(values.max())}
    return out
