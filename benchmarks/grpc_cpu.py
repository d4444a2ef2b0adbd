"""Gateway CPU per request and context switches per request, one `roost serve` at a time.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/grpc_cpu.py --home <ROOST_HOME> \\
        --run "grpclib c8=grpc:8:ROOST_GRPC_SERVER=grpclib" \\
        --run "REST c8=rest:8" \\
        --run "before c8=grpc:8:ROOST_GRPC_SERVER=grpclib@/tmp/old-checkout"

Each ``--run LABEL=MODE:CONCURRENCY[:KEY=VALUE,...][@CHECKOUT]`` starts ``roost serve`` on
``--home`` (a ROOST_HOME with breast-cancer deployed, e.g. the one ``grpc_compare.py`` made),
from this checkout or from ``CHECKOUT`` (``git archive <ref> | tar -x -C <dir>``), loads it with
``grpc_load.py`` (MODE ``grpc``) or ``wrk`` with benchmarks/post.lua (MODE ``rest``) for 2 s
unrecorded and ``--duration`` s recorded, and prints the server's CPU time (user + system, every
thread, from /proc) and voluntary + involuntary context switches per request over the recorded
window. The runs go one after another, in the order given: repeat them interleaved to compare.
CPU per request moves much less than req/s when other work shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, BODY_FILE, MODEL, REPO_ROOT, free_port  # noqa: E402


def process_counters(pid: int) -> tuple[float, int]:
    """(CPU seconds, context switches) of every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, switches = 0.0, 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:  # the thread ended
            continue
        cpu += (int(stat[11]) + int(stat[12])) / tick
        switches += sum(
            int(line.split()[1]) for line in status.splitlines()
            if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt"))
        )
    return cpu, switches


def load(mode: str, concurrency: int, seconds: float, grpc_port: int, http_port: int) -> int:
    """Requests answered in ``seconds`` at ``concurrency``."""
    if mode == "grpc":
        out = subprocess.run(
            [sys.executable, str(BENCH_DIR / "grpc_load.py"), "--address",
             f"127.0.0.1:{grpc_port}", "--model", MODEL, "--body", str(BODY_FILE),
             "--concurrency", str(concurrency), "--duration", f"{seconds:g}", "--warmup", "0"],
            capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        ).stdout
        return int(json.loads(out)["requests"])
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-s",
         str(BENCH_DIR / "post.lua"), f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    ).stdout
    return int(next(line for line in out.splitlines() if "requests in" in line).split()[0])


def run(label: str, spec: str, home: Path, seconds: float) -> dict[str, float | str]:
    spec, _, tree = spec.partition("@")
    mode, concurrency, *rest = spec.split(":")
    settings = dict(item.split("=", 1) for item in (rest[0].split(",") if rest else []) if item)
    grpc_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env.update(ROOST_HOME=str(home), ROOST_LOG_LEVEL="warning", ROOST_GRPC_PORT=str(grpc_port),
               ROOST_HTTP_PORT=str(http_port), **settings)
    cwd = REPO_ROOT
    if tree:
        cwd = Path(tree).resolve()
        env["PYTHONPATH"] = str(cwd)
    argv = [sys.executable, "-c", "from orchestration.cli import main; main()", "serve",
            "--host", "127.0.0.1", "--port", str(http_port)]
    server = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{label}: the gateway did not become ready")
            time.sleep(0.5)
        load(mode, int(concurrency), 2, grpc_port, http_port)
        cpu0, switches0 = process_counters(server.pid)
        requests = load(mode, int(concurrency), seconds, grpc_port, http_port)
        cpu1, switches1 = process_counters(server.pid)
    finally:
        server.terminate()
        server.wait(60)
    result: dict[str, float | str] = {
        "label": label, "requests": requests, "rps": requests / seconds,
        "cpu_us_per_req": (cpu1 - cpu0) / max(1, requests) * 1e6,
        "switches_per_req": (switches1 - switches0) / max(1, requests),
    }
    print(f"| {label} | {result['rps']:,.0f} | {result['cpu_us_per_req']:.0f} | "
          f"{result['switches_per_req']:.1f} |", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", required=True, help="a ROOST_HOME with breast-cancer deployed")
    parser.add_argument("--run", action="append", required=True,
                        help="LABEL=MODE:CONCURRENCY[:KEY=VALUE,...][@CHECKOUT]")
    parser.add_argument("--duration", type=float, default=6.0)
    args = parser.parse_args(argv)
    print("| run | req/s | server CPU µs/req | context switches/req |\n|---|---:|---:|---:|")
    for item in args.run:
        label, _, spec = item.partition("=")
        run(label, spec, Path(args.home), args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
