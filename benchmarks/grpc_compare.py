"""gRPC servers side by side: Roost's alternatives and MLServer, one client, one run.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/grpc_compare.py \\
        [--duration 8] [--rounds 2] [--concurrency 8 64] [--clients 1]

The demo breast-cancer model (one row per request) is materialized into a temporary
``ROOST_HOME`` and served by every target at once, each on its own port:

- ``aio (shipped)``: ``roost serve`` as shipped (gRPC on the gateway's event loop);
- the alternatives of ``grpc_variants.py``: grpcio's threaded server, ``grpclib`` on the loop,
  and ``grpc.aio`` in N processes sharing the port (``--processes``);
- ``roost serve`` with each ``--grpc-servers`` (``ROOST_GRPC_SERVER``) and each
  ``--grpc-processes`` (``ROOST_GRPC_PROCESSES``; 0: on the gateway's loop);
- ``--baseline-tree``: ``roost serve`` from another checkout (the code before a change), with
  each ``--baseline-servers``;
- MLServer 1.7.1 (``parallel_workers: 0``) as ``benchmarks/peers.py`` runs it
  (``benchmarks/peers/mlserver``: its own cached virtualenv, a small ONNX Runtime model class).

Each round loads every target at each concurrency with ``grpc_load.py`` (``--clients``
processes splitting the concurrency), interleaved; the table shows medians over rounds of req/s,
p50/p99 and the server's CPU µs per request (its process tree, psutil), and the clients' CPU.
Writes ``<out>/grpc_compare.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    BODY_FILE,
    MODEL,
    REPO_ROOT,
    log,
    machine_info,
    materialize_model,
    roost_argv,
)

sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
from gateway_process import free_port, stop_process  # noqa: E402


@dataclass
class Server:
    label: str
    argv: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (psutil)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return total


def wait_grpc_ready(server: Server, timeout_s: float = 240) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    assert server.proc is not None
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{server.label} did not become ready ({server.proc.poll()})")


def run_clients(server: Server, concurrency: int, clients: int, duration: float,
                body: Path, samples_dir: Path, channels: int = 1) -> dict[str, Any]:
    """``clients`` grpc_load.py processes splitting ``concurrency``; the server's CPU between
    the first client starting to record and the last one finishing."""
    assert server.proc is not None
    shares = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    procs = []
    for i, share in enumerate(shares):
        argv = [
            sys.executable, str(BENCH_DIR / "grpc_load.py"),
            "--address", f"127.0.0.1:{server.port}", "--model", MODEL, "--body", str(body),
            "--concurrency", str(share), "--duration", f"{duration:g}", "--warmup", "1",
            "--samples", str(samples_dir / f"c{i}.npy"), "--channels", str(channels),
        ]
        procs.append(subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    marks: dict[str, list[float]] = {"recording": [], "done": []}
    cpu: dict[str, float] = {}
    lock = threading.Lock()
    pid = server.proc.pid

    def watch(proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not line.startswith("mark: "):
                continue
            name = line[6:].strip()
            with lock:
                marks[name].append(time.monotonic())
                if name == "recording" and len(marks[name]) == 1:
                    cpu["begin"] = tree_cpu_s(pid)
                if name == "done" and len(marks[name]) == len(procs):
                    cpu["end"] = tree_cpu_s(pid)

    watchers = [threading.Thread(target=watch, args=(p,), daemon=True) for p in procs]
    for w in watchers:
        w.start()
    texts = []
    for proc in procs:
        assert proc.stdout is not None
        texts.append(proc.stdout.read())
        proc.wait(timeout=60)
    for w in watchers:
        w.join(5)
    if any(p.returncode for p in procs) or not all(t.strip() for t in texts):
        raise RuntimeError(f"grpc_load.py failed against {server.label}")
    outputs = [json.loads(t) for t in texts]
    latencies = np.concatenate([np.load(samples_dir / f"c{i}.npy") for i in range(clients)])
    window = max(marks["done"]) - min(marks["recording"])
    requests = int(latencies.size)
    server_s = cpu["end"] - cpu["begin"]
    return {
        "rps": sum(o["rps"] for o in outputs),
        "requests": requests,
        "errors": sum(sum(o["errors"].values()) for o in outputs),
        "p50_ms": float(np.percentile(latencies, 50)) / 1e6,
        "p99_ms": float(np.percentile(latencies, 99)) / 1e6,
        "server_cpu_us_per_req": server_s / max(1, requests) * 1e6,
        "server_cpu_cores": server_s / window,
        "client_cpu_cores": sum(o["client_cpu_s"] for o in outputs) / window,
        "client_cpu_us_per_req": sum(o["client_cpu_s"] for o in outputs) / max(1, requests) * 1e6,
    }


def build_servers(args: argparse.Namespace, home: Path, work: Path) -> list[Server]:
    env = {"ROOST_HOME": str(home), "ROOST_LOG_LEVEL": "warning"}
    variants = [sys.executable, str(BENCH_DIR / "grpc_variants.py")]
    servers: list[Server] = []
    wanted = set(args.servers)
    if "aio" in wanted:
        s = Server("aio (shipped, 1 process)", [], env)
        http = free_port()
        s.argv = [*roost_argv(), "serve", "--host", "127.0.0.1", "--port", str(http)]
        s.env = {**env, "ROOST_GRPC_PORT": str(s.port), "ROOST_HTTP_PORT": str(http)}
        servers.append(s)
    if "threaded" in wanted:
        s = Server("grpcio threaded", [], env)
        s.argv = [*variants, "--variant", "threaded", "--port", str(s.port)]
        servers.append(s)
    if "grpclib" in wanted:
        s = Server("grpclib (on the loop)", [], env)
        s.argv = [*variants, "--variant", "grpclib", "--port", str(s.port)]
        servers.append(s)
    if "aio-asyncio" in wanted:
        s = Server("aio on asyncio's own loop (no uvloop)", [], env)
        s.argv = [*variants, "--variant", "aio", "--port", str(s.port), "--loop", "asyncio"]
        servers.append(s)
    for variant in ("aio", "threaded", "grpclib", "grpclib-plain"):
        if f"{variant}-null" in wanted:
            s = Server(f"{variant} transport only (fixed answer)", [], env)
            s.argv = [*variants, "--variant", variant, "--port", str(s.port), "--null"]
            servers.append(s)
    for n in args.processes:
        if f"aio-x{n}" in wanted or "aio-xN" in wanted:
            s = Server(f"aio, {n} gRPC-only processes", [], env)
            s.argv = [*variants, "--variant", "aio", "--port", str(s.port),
                      "--processes", str(n)]
            servers.append(s)
    for impl in args.grpc_servers:
        for n in args.grpc_processes:
            where = "on the loop" if n == 0 else f"{n} gRPC processes"
            extra = dict(item.split("=", 1) for item in args.roost_env)
            note = "".join(f", {k}={v}" for k, v in extra.items())
            s = Server(f"roost serve, {impl}, {where}{note}", [], env)
            http = free_port()
            s.argv = [*roost_argv(), "serve", "--host", "127.0.0.1", "--port", str(http)]
            s.env = {**env, "ROOST_GRPC_PORT": str(s.port), "ROOST_HTTP_PORT": str(http),
                     "ROOST_GRPC_PROCESSES": str(n), "ROOST_GRPC_SERVER": impl, **extra}
            servers.append(s)
    if args.baseline_tree:  # `roost serve` from another checkout (e.g. `git archive <ref>`)
        tree = Path(args.baseline_tree).resolve()
        for impl in args.baseline_servers:
            s = Server(f"baseline ({args.baseline_label}), {impl}, on the loop", [], env)
            http = free_port()
            s.argv = [sys.executable, "-c", "from orchestration.cli import main; main()",
                      "serve", "--host", "127.0.0.1", "--port", str(http)]
            s.env = {**env, "ROOST_GRPC_PORT": str(s.port), "ROOST_HTTP_PORT": str(http),
                     "ROOST_GRPC_SERVER": impl, "PYTHONPATH": str(tree)}
            s.cwd = tree
            servers.append(s)
    if "mlserver" in wanted:  # the bench helper's setup: benchmarks/peers/mlserver
        from peers.mlserver import mlserver_bin, write_model_folder

        folder = work / "mlserver"
        s = Server("MLServer 1.7.1 (parallel_workers 0)", [], {})
        write_model_folder(folder, work / "model.onnx", MODEL, free_port(), s.port, free_port())
        s.argv = [str(mlserver_bin() / "mlserver"), "start", str(folder)]
        servers.append(s)
    return servers


def start(server: Server, work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROOST_", "MLSERVER_"))}
    env.update(server.env)
    out = (work / f"{server.label.split()[0]}-{server.port}.log").open("wb")
    server.proc = subprocess.Popen(server.argv, env=env, cwd=server.cwd or REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)


def table(results: dict[str, dict[int, list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    keys = [("rps", "req/s", "{:,.0f}"), ("p50_ms", "p50 ms", "{:.2f}"),
            ("p99_ms", "p99 ms", "{:.2f}"), ("server_cpu_us_per_req", "server CPU µs/req",
                                              "{:.0f}"),
            ("server_cpu_cores", "server cores", "{:.2f}"),
            ("client_cpu_cores", "client cores", "{:.2f}")]
    lines = []
    for c in args.concurrency:
        lines.append(f"\n**c={c}** (medians of {args.rounds} rounds; rounds: req/s)\n")
        lines.append("| server | " + " | ".join(k[1] for k in keys) + " | rounds req/s |")
        lines.append("|---|" + "---:|" * (len(keys) + 1))
        for label, by_c in results.items():
            runs = by_c.get(c, [])
            if not runs:
                continue
            cells = [fmt.format(statistics.median(r[k] for r in runs)) for k, _, fmt in keys]
            per_round = ", ".join(f"{r['rps']:,.0f}" for r in runs)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {per_round} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--clients", type=int, default=1, help="client processes per load")
    parser.add_argument("--channels", type=int, default=1,
                        help="connections per client process (grpc_load.py --channels)")
    parser.add_argument("--servers", nargs="*",
                        default=["aio", "threaded", "grpclib", "aio-xN", "mlserver"])
    parser.add_argument("--processes", type=int, nargs="+", default=[2],
                        help="process counts for the aio-xN variant")
    parser.add_argument("--grpc-processes", type=int, nargs="*", default=[],
                        help="ROOST_GRPC_PROCESSES values to run `roost serve` with")
    parser.add_argument("--grpc-servers", nargs="*", default=["grpcio"],
                        help="ROOST_GRPC_SERVER values for --grpc-processes")
    parser.add_argument("--roost-env", nargs="*", default=[],
                        help="KEY=VALUE settings for every `roost serve` target")
    parser.add_argument("--baseline-tree",
                        help="a checkout to run `roost serve` from as well (the code before a "
                        "change: `git archive <ref> | tar -x -C <dir>`)")
    parser.add_argument("--baseline-label", default="as shipped", help="its label")
    parser.add_argument("--baseline-servers", nargs="*", default=["grpcio"],
                        help="ROOST_GRPC_SERVER values to run the baseline tree with")
    parser.add_argument("--home", help="a ROOST_HOME with breast-cancer deployed (reused)")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "out"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="roost-grpc-compare-"))
    home = Path(args.home) if args.home else work / "home"
    kept = home / "breast-cancer.onnx"  # the deployed bytes, for MLServer on a reused home
    if kept.exists():
        model = kept.read_bytes()
    else:
        log(f"materializing {MODEL} into {home} ...")
        model = materialize_model(home)
        kept.write_bytes(model)
    (work / "model.onnx").write_bytes(model)
    servers = build_servers(args, home, work)
    results: dict[str, dict[int, list[dict[str, Any]]]] = {s.label: {} for s in servers}
    try:
        for server in servers:
            start(server, work)
        for server in servers:
            wait_grpc_ready(server)
            log(f"ready: {server.label} on {server.port}")
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for c in args.concurrency:
                for server in order:
                    result = run_clients(server, c, args.clients, args.duration, BODY_FILE,
                                         work, args.channels)
                    results[server.label].setdefault(c, []).append(result)
                    log(f"round {round_ + 1} c={c} {server.label}: {result['rps']:,.0f} req/s "
                        f"p99 {result['p99_ms']:.2f} ms, server "
                        f"{result['server_cpu_us_per_req']:.0f} µs/req "
                        f"({result['server_cpu_cores']:.2f} cores), client "
                        f"{result['client_cpu_cores']:.2f} cores, errors {result['errors']}")
    finally:
        for server in servers:
            if server.proc is not None:
                stop_process(server.proc, 2, 30)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    report = {"commit": commit, "machine": machine_info(), "args": vars(args),
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpc_compare.json").write_text(json.dumps(report, indent=1))
    print(f"commit {commit}, clients {args.clients}, channels {args.channels}, "
          f"duration {args.duration:g}s")
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
