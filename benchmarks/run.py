"""Roost's serving benchmark: single-row latency and throughput next to the floor, in one run.

    .venv/bin/python benchmarks/run.py [--duration 12] [--concurrency 1,64] [--out benchmarks/out]

One run does, on this machine, in this order:

1. materializes the demo pipeline's breast-cancer model into a fresh, temporary ROOST_HOME;
2. times raw in-process ONNX Runtime per call (one row), the same call with the OIP JSON
   parse and dump the floor does, and Roost's data plane in-process (decode, validate, run,
   encode, prediction-log append), each as the median over ``--calls`` calls;
3. starts the Roost gateway (``roost serve``, prediction logging on, as always) and the floor
   (``floor_app.py``: bare FastAPI endpoint calling one session) as uvicorn subprocesses;
4. warms each up, then runs ``wrk -t1 -c<C> -d<D>s --latency -s post.lua`` against each server
   for each concurrency (servers alternate, so drifting background load hits both alike) and
   reads req/s, p50, p99, non-2xx responses and socket errors from wrk's output; it also reads
   each server's CPU time per request and how busy the rest of the machine was meanwhile;
5. stops the servers (Roost flushes its prediction log on shutdown) and counts logged rows;
6. prints a markdown table and writes everything to ``<out>/results.json``.

Adding a server or a protocol: add a :class:`Target` in :func:`build_targets` (REST binary and
gRPC will need their own load driver next to :func:`run_wrk`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import importlib
import io
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
MODEL = "breast-cancer"
INFER_PATH = f"/v2/models/{MODEL}/infer"
READY_PATH = "/v2/health/ready"
LUA_SCRIPT = BENCH_DIR / "post.lua"
BODY_FILE = BENCH_DIR / "body.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_MISSING = """wrk is not installed (or not on PATH); the HTTP measurements need it.
Install it with:
  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y wrk
  Fedora:         sudo dnf install -y wrk
  macOS:          brew install wrk
or build it from https://github.com/wg/wrk. Then rerun this script."""


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
                 "httptools"):
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
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "wrk": wrk_version,
        "loadavg_start": _loadavg(),
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


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies summed over all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


def _proc_stat(pid: int | str) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` and its descendants (all threads; live ones), seconds."""
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
    total = 0
    for member in tree:
        with contextlib.suppress(OSError, IndexError):
            fields = _proc_stat(member)
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------
# model


def materialize_model(home: Path) -> bytes:
    """Run the demo pipeline for breast-cancer into ``home``; return the deployed ONNX bytes."""
    import logging

    from dagster import DagsterInstance, materialize

    from assets.demo import DEMO_MODELS
    from assets.pipeline import build_model_pipeline
    from assets.resources import RegistryResource
    from registry import Registry, RoostSettings

    logging.getLogger("dagster").setLevel(logging.WARNING)
    spec = next(s for s in DEMO_MODELS if s.served_name == MODEL)
    assets, checks = build_model_pipeline(spec)
    chatter = io.StringIO()  # Dagster's DEBUG event log: shown only if the run fails
    with contextlib.redirect_stderr(chatter):
        result = materialize(
            [*assets, *checks],
            resources={"registry": RegistryResource(home=str(home))},
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
    import inspect

    from registry import RoostSettings
    from serving import create_app, oip

    try:
        from serving.binary import decode_json_request as decode
    except ImportError:
        decode = oip.decode_infer_request
    settings = RoostSettings(home=home, grpc_port=0)
    app = create_app(settings)
    context_cls = importlib.import_module("serving.dataplane").CallContext
    context = context_cls(protocol="v2-rest")

    async def measure() -> dict[str, Any]:
        async with app.router.lifespan_context(app):
            plane = app.state.dataplane

            async def call() -> bytes:
                outcome = plane.infer(MODEL, None, body, decode, context)
                _, result = await outcome if inspect.isawaitable(outcome) else outcome
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
        print(f"warning: in-process Roost data plane not measured: {exc}", file=sys.stderr)
    return out


# ------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    """One server under test: how to start it and where it answers."""

    name: str
    description: str
    argv: list[str]
    env: dict[str, str]
    port: int
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


def build_targets(home: Path, model_path: Path, names: list[str], workers: int) -> list[Target]:
    python = sys.executable
    roost_bin = Path(python).with_name("roost")
    roost_argv = [str(roost_bin)] if roost_bin.exists() else [
        python, "-c", "from orchestration.cli import main; main()"
    ]
    roost_port, floor_port = free_port(), free_port()
    available = {
        "roost": Target(
            name="roost",
            description="Roost gateway (`roost serve`, prediction logging on)",
            argv=[*roost_argv, "serve", "--host", "127.0.0.1", "--port", str(roost_port)],
            env={
                "ROOST_HOME": str(home),
                "ROOST_HTTP_PORT": str(roost_port),
                "ROOST_WORKERS": str(workers),
                # gRPC stays on (as shipped), on its own free port; not measured yet.
                "ROOST_GRPC_PORT": str(free_port()),
            },
            port=roost_port,
        ),
        "floor": Target(
            name="floor",
            description="bare FastAPI endpoint calling one session (benchmarks/floor_app.py)",
            argv=[
                python, "-m", "uvicorn", "--factory", "--app-dir", str(BENCH_DIR),
                "floor_app:create_app", "--host", "127.0.0.1", "--port", str(floor_port),
                "--log-level", "warning", "--no-access-log", "--workers", str(workers),
            ],
            env={"FLOOR_MODEL_PATH": str(model_path), "FLOOR_MODEL_NAME": MODEL},
            port=floor_port,
        ),
    }
    unknown = set(names) - set(available)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    return [available[n] for n in names]


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start(target: Target, logs: Path) -> None:
    target.log_path = logs / f"{target.name}.log"
    log = target.log_path.open("wb")
    target.proc = subprocess.Popen(
        target.argv,
        cwd=REPO_ROOT,
        env={**os.environ, **target.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the servers ourselves
    )
    log.close()


def wait_ready(target: Target, timeout_s: float = 120) -> None:
    assert target.proc is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            break
        with contextlib.suppress(OSError):
            if _http("GET", target.base + target.ready_path)[0] == 200:
                return
        time.sleep(0.1)
    tail = target.log_path.read_text(errors="replace")[-3000:] if target.log_path else ""
    raise RuntimeError(f"{target.name} did not become ready; its log ends:\n{tail}")


def stop(target: Target, timeout_s: float = 30) -> None:
    proc = target.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully: Roost flushes its log
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def scan_log(target: Target, out_dir: Path) -> dict[str, Any]:
    """Error lines and tracebacks in the server's output; keeps its last 20 kB under out/logs."""
    if target.log_path is None or not target.log_path.exists():
        return {}
    text = target.log_path.read_text(errors="replace")
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{target.name}.log").write_text(text[-20000:])
    exceptions = re.findall(r"^(\w[\w.]*(?:Error|Exception|Disconnect)\b)", text, re.M)
    return {
        "bytes": len(text),
        "tracebacks": text.count("Traceback (most recent call last)"),
        "exception_types": dict(collections.Counter(exceptions).most_common(5)),
    }


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
    target: Target, concurrency: int, duration_s: float, body_file: Path
) -> dict[str, Any]:
    """One wrk run; also the server's CPU time and the machine's other load meanwhile."""
    assert target.proc is not None
    argv = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", "--latency",
        "-s", str(LUA_SCRIPT), target.url,
    ]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
    busy0, total0, steal0 = _cpu_ticks()
    server0, wrk0, t0 = _proc_cpu_s(target.proc.pid), _children_cpu_s(), time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=duration_s + 60, check=False
    )
    elapsed = time.monotonic() - t0
    server_s = _proc_cpu_s(target.proc.pid) - server0
    wrk_s = _children_cpu_s() - wrk0
    busy1, total1, steal1 = _cpu_ticks()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    other_s = (busy1 - busy0) / CLK_TCK - server_s - wrk_s
    requests = result.get("requests") or 1
    result.update(
        server=target.name,
        concurrency=concurrency,
        duration_s=duration_s,
        command=" ".join(argv),
        server_cpu_us_per_req=server_s / requests * 1e6,
        server_cpu_cores=server_s / elapsed,
        wrk_cpu_cores=wrk_s / elapsed,
        other_cpu_cores=max(0.0, other_s / elapsed),
        steal_pct=100.0 * (steal1 - steal0) / max(1, total1 - total0),
        wrk_stdout=done.stdout,
    )
    return result


# ------------------------------------------------------------------------------------------
# prediction log


def count_logged_rows(home: Path) -> int:
    import pyarrow.parquet as pq

    root = home / "logs" / "predictions"
    return sum(pq.read_metadata(p).num_rows for p in root.rglob("*.parquet"))


# ------------------------------------------------------------------------------------------
# report


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} µs" if value < 1 else f"{value:.2f} ms"


def render_table(report: dict[str, Any]) -> str:
    lines = [
        "| server | concurrency | req/s | p50 | p99 | p99.9 | non-2xx | socket errors "
        "| server CPU µs/req | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report.get("runs", []):
        lat = run["latency_ms"]
        errors = sum(run["socket_errors"].values())
        lines.append(
            f"| {run['server']} | {run['concurrency']} | {run['rps']:,.0f} "
            f"| {_fmt_ms(lat.get('p50'))} | {_fmt_ms(lat.get('p99'))} "
            f"| {_fmt_ms(lat.get('p99.9'))} | {run['non_2xx']} | {errors} "
            f"| {run['server_cpu_us_per_req']:.0f} | {run['other_cpu_cores']:.2f} |"
        )
    ratios = report.get("roost_vs_floor", [])
    if ratios:
        lines += [
            "",
            "| concurrency | Roost / floor req/s | Roost / floor p99 |",
            "|---:|---:|---:|",
        ]
        lines += [
            f"| {r['concurrency']} | {r['rps_ratio']:.2f} | {r['p99_ratio']:.2f} |" for r in ratios
        ]
    ip = report.get("in_process_us")
    if ip:
        lines += [
            "",
            "| in-process, one row (no HTTP) | median µs | p99 µs |",
            "|---|---:|---:|",
        ]
        labels = {
            "onnxruntime_run": "ONNX Runtime `session.run`",
            "onnxruntime_run_oip_json": "... with OIP JSON parse and dump (the floor's handler)",
            "roost_dataplane": "Roost data plane (`DataPlane.infer` + response encoding)",
        }
        for key, label in labels.items():
            if key in ip:
                lines.append(f"| {label} | {ip[key]['median_us']:.1f} | {ip[key]['p99_us']:.1f} |")
        if "roost_dataplane_error" in ip:
            lines.append(f"| Roost data plane: not measured ({ip['roost_dataplane_error']}) | | |")
    logs = report.get("server_logs", {})
    if logs:
        lines.append("")
        lines += [
            f"- {name} log: {info.get('tracebacks', 0)} tracebacks "
            f"{info.get('exception_types') or ''}".rstrip()
            for name, info in logs.items()
        ]
    plog = report.get("roost_prediction_log")
    if plog:
        lines.append(
            f"- Roost prediction log: {plog['rows_logged']:,} rows written for "
            f"{plog['requests_counted_by_wrk']:,} requests wrk counted"
        )
    return "\n".join(lines)


def _ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in sorted({r["concurrency"] for r in runs}):
        by = {r["server"]: r for r in runs if r["concurrency"] == c}
        if "roost" in by and "floor" in by:
            roost, floor = by["roost"], by["floor"]
            out.append({
                "concurrency": c,
                "rps_ratio": roost["rps"] / floor["rps"],
                "p99_ratio": roost["latency_ms"]["p99"] / floor["latency_ms"]["p99"],
            })
    return out


# ------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per wrk run")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated connections")
    parser.add_argument("--servers", default="floor,roost", help="comma-separated: floor,roost")
    parser.add_argument("--workers", type=int, default=1, help="server processes (both)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk per server")
    parser.add_argument("--calls", type=int, default=20000, help="in-process calls to time")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="output directory")
    parser.add_argument("--keep-home", action="store_true", help="keep the temp ROOST_HOME")
    return parser.parse_args(argv)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so the cleanup below runs either way."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def roost_settings_info(home: Path) -> dict[str, Any]:
    """The gateway settings and the version's serving config the run used (defaults)."""
    from registry import Registry, RoostSettings

    settings = RoostSettings(home=home)
    info: dict[str, Any] = {
        "prediction_logging": "on (always on in Roost: Parquet, zstd, fsync)",
        "log_flush_rows": settings.log_flush_rows,
        "log_flush_interval_s": settings.log_flush_interval_s,
        "intra_op_threads": settings.intra_op_threads,
    }
    registry = Registry.from_settings(settings)
    try:
        version = next(v for v in registry.served_versions() if v.model == MODEL)
        info["version"] = version.version
        info["version_config"] = getattr(version, "config", None)
    finally:
        registry.close()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    sys.path.insert(0, str(REPO_ROOT))

    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "source": source_fingerprint(),
        "model": MODEL,
        "body_file": str(BODY_FILE.relative_to(REPO_ROOT)),
        "settings": {
            "duration_s": args.duration,
            "concurrency": concurrencies,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "wrk": "wrk -t1 -c<C> -d<D>s --latency -s benchmarks/post.lua <url>",
            "onnxruntime_intra_op_threads": 1,
        },
    }
    home = Path(tempfile.mkdtemp(prefix="roost-bench-"))
    targets: list[Target] = []
    logged_before = 0
    with _terminate_as_interrupt():
        try:
            print(f"materializing {MODEL} into {home} ...", file=sys.stderr)
            model = materialize_model(home)
            model_path = home / "bench" / "model.onnx"
            model_path.parent.mkdir(parents=True)
            model_path.write_bytes(model)
            body = BODY_FILE.read_bytes().strip()
            report["roost"] = roost_settings_info(home)

            print(f"timing in-process calls ({args.calls} each) ...", file=sys.stderr)
            report["in_process_us"] = measure_in_process(home, model, body, args.calls)
            logged_before = count_logged_rows(home)

            targets = build_targets(home, model_path, server_names, args.workers)
            for target in targets:
                start(target, model_path.parent)
            for target in targets:
                wait_ready(target)
                status, answer = _http("POST", target.url, body)
                if status != 200:
                    raise RuntimeError(f"{target.name} answered {status}: {answer[:500]!r}")
                report.setdefault("sample_responses", {})[target.name] = json.loads(answer)
            report["targets"] = [
                {"name": t.name, "description": t.description, "argv": t.argv, "env": t.env}
                for t in targets
            ]
            warmups: list[dict[str, Any]] = []
            report["warmups"] = warmups
            if args.warmup > 0:
                for target in targets:
                    print(f"warming up {target.name} ...", file=sys.stderr)
                    warmups.append(run_wrk(target, max(concurrencies), args.warmup, BODY_FILE))

            runs: list[dict[str, Any]] = []
            report["runs"] = runs
            for concurrency in concurrencies:
                for target in targets:  # alternate servers: drifting load hits both alike
                    print(
                        f"wrk {target.name} -c{concurrency} -d{args.duration:g}s ...",
                        file=sys.stderr,
                    )
                    runs.append(run_wrk(target, concurrency, args.duration, BODY_FILE))
            report["roost_vs_floor"] = _ratios(runs)
        finally:
            for target in targets:
                stop(target)
            report["machine"]["loadavg_end"] = _loadavg()
            report["server_logs"] = {t.name: scan_log(t, args.out) for t in targets}
            if any(t.name == "roost" for t in targets) and report.get("runs"):
                sent = [*report.get("warmups", []), *report["runs"]]
                report["roost_prediction_log"] = {
                    "rows_logged": count_logged_rows(home) - logged_before,
                    "requests_counted_by_wrk": 1 + sum(
                        r.get("requests", 0) for r in sent if r["server"] == "roost"
                    ),
                    "note": "both include warm-up and the one sanity request; wrk does not "
                    "count requests still in flight when a run ends (up to C per run), so "
                    "slightly more rows than counted requests are expected",
                }
            if not args.keep_home:
                shutil.rmtree(home, ignore_errors=True)
            else:
                print(f"kept ROOST_HOME at {home}", file=sys.stderr)

    table = render_table(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (args.out / "results.json", args.out / f"results-{stamp}.json"):
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(table + "\n")
    print(f"\nwrote {args.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
