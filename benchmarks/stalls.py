"""Tail latency at concurrency 1 and the stalls behind it, before and after, in one run.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/stalls.py --base <rev>

Starts, side by side on loopback and all serving the demo breast-cancer model: the floor
(``floor_app.py``), and the gateway in each ``--levels`` durability level, from this checkout
(or, with ``--tree NAME=PATH``, from each tree named) and, with ``--base REV``, once from
``REV`` (checked out in a git worktree under ``--worktrees``), each under the in-process probe
(``stall_probe.py``: loop lag, per-request time, garbage collections, background work such as
WAL seals and registry polls, and which of them overlapped each stall). Then ``--rounds``
interleaved rounds (the second in reverse order) of ``wrk -t1 -c1 --latency`` for ``--duration``
seconds on each server, the probe's window reset before and read after each run. Prints and
writes (``<out>/stalls.md``, ``stalls.json``): req/s, wrk's percentiles, server CPU per request,
the probe's figures and both latency histograms (wrk's and the probe's) per server.

Take the bench lock yourself (as above): this script does not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    BODY_FILE,
    MODEL,
    REPO_ROOT,
    Target,
    floor_target,
    http,
    materialize_model,
    run_wrk,
    start,
    stop,
    wait_ready,
)
from stall_probe import BUCKETS_US  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
from gateway_process import free_port  # noqa: E402


def probed_target(name: str, home: Path, tree: Path, level: str) -> Target:
    """The gateway from ``tree`` under the probe (uvicorn as ``roost serve`` runs it)."""
    port, grpc_port = free_port(), free_port()
    return Target(
        name=name,
        description=f"gateway from {tree}, ROOST_LOG_DURABILITY={level}, probed",
        argv=[
            sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(BENCH_DIR),
            "stall_probe:create_app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log",
        ],
        env={
            "PYTHONPATH": f"{tree}{os.pathsep}{BENCH_DIR}",
            "ROOST_HOME": str(home),
            "ROOST_HTTP_PORT": str(port),
            "ROOST_GRPC_PORT": str(grpc_port),
            "ROOST_LOG_DURABILITY": level,
        },
        port=port,
        grpc_port=grpc_port,
    )


def probed_floor(model_path: Path) -> Target:
    """The floor (``floor_app.py``) under the probe: what the machine alone does to a loop."""
    target = floor_target(model_path)
    target.argv = [
        arg.replace("floor_app:create_app", "stall_probe:create_floor_app") for arg in target.argv
    ]
    return target


def worktree(rev: str, parent: Path) -> Path:
    """A detached git worktree of ``rev`` (reused if it is there)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, check=True, capture_output=True,
        text=True,
    ).stdout.strip()
    path = parent / f"roost-{sha}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO_ROOT, check=True,
            capture_output=True,
        )
    return path


def probe(target: Target, reset: bool) -> dict[str, Any]:
    status, _, body = http("GET", target.base + "/_stalls" + ("?reset=1" if reset else ""))
    return json.loads(body) if status == 200 else {}


def wrk_buckets(raw: str) -> dict[str, float]:
    """wrk's own percentiles (50/75/90/99 and our p99.9/max line), in µs."""
    from harness import parse_wrk

    return {k: round(v * 1000, 1) for k, v in parse_wrk(raw)["latency_ms"].items()}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def report(runs: list[dict[str, Any]], names: list[str], header: str) -> str:
    lines = [header, "", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]

    def row(label: str, pick: Any, fmt: str = "{:,.0f}") -> None:
        cells = []
        for name in names:
            values = [pick(r) for r in runs if r["server"] == name]
            values = [v for v in values if v is not None]
            cells.append(" / ".join(fmt.format(v) for v in values) if values else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def p(key: str, *path: str) -> Any:
        def pick(run: dict[str, Any]) -> Any:
            value: Any = run.get(key)
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            return value

        return pick

    row("req/s (wrk)", p("rps"))
    row("wrk p50 µs", p("wrk_us", "p50"))
    row("wrk p90 µs", p("wrk_us", "p90"))
    row("wrk p99 µs", p("wrk_us", "p99"))
    row("wrk p99.9 µs", p("wrk_us", "p99.9"))
    row("wrk max µs", p("wrk_us", "max"))
    row("server CPU µs/req", p("server_cpu_us_per_req"))
    row("other load (cores)", p("other_cpu_cores"), "{:.2f}")
    row("in-process request p50 µs", p("probe", "requests", "p50_us"))
    row("in-process request p99 µs", p("probe", "requests", "p99_us"))
    row("in-process request p99.9 µs", p("probe", "requests", "p99.9_us"))
    row("requests over 1 ms (in-process)", p("probe", "requests", "over_1ms"))
    row("loop lag p99 µs", p("probe", "loop_lag", "p99_us"))
    row("loop lag max µs", p("probe", "loop_lag", "max_us"))
    row("loop lags over 1 ms", p("probe", "stalls_over_threshold"))
    for gen in ("gen0", "gen1", "gen2"):
        row(f"GC {gen}: collections", p("probe", "gc", gen, "n"))
        row(f"GC {gen}: max µs", p("probe", "gc", gen, "max_us"))
    lines += ["", "In-process request latency histogram (count per bucket, µs; rounds joined "
              "with /):", "", "| bucket | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    labels = [f"<={b}" for b in BUCKETS_US] + [f">{BUCKETS_US[-1]}"]
    for label in labels:
        cells = []
        for name in names:
            counts = [r["probe"]["requests"]["buckets_us"].get(label, 0)
                      for r in runs if r["server"] == name and r.get("probe")]
            cells.append(" / ".join(str(c) for c in counts) if counts else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Requests that overlapped each kind of background work, and those that "
              "overlapped none (in-process; % over 1 ms / p99 µs / requests, per round):", "",
              "| during | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    kinds = sorted({k for r in runs for k in r.get("probe", {}).get("requests_during", {})})
    for kind in kinds:
        cells = []
        for name in names:
            found = [r["probe"]["requests_during"].get(kind) for r in runs
                     if r["server"] == name and r.get("probe")]
            cells.append(" / ".join(
                f"{d['slow_pct']:.1f}% {d['p99_us']:,.0f} µs ({d['requests']})" if d else "–"
                for d in found) or "–")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "What overlapped the slow requests and the loop stalls (per run):", ""]
    for run in runs:
        if run.get("probe"):
            pr = run["probe"]
            lines.append(
                f"- {run['server']} round {run['round']}: slow requests "
                f"{pr['slow_requests_attributed']}; stalls {pr['stalls_attributed']}; "
                f"activities {pr['activities']}; thread CPU s {pr['thread_cpu_s']}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a git revision to run next to this checkout")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="another source tree to run (repeatable)")
    parser.add_argument("--levels", default="buffered,fsync")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1",
                        help="comma-separated wrk connection counts (the tables: one each)")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--worktrees", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="roost-stalls-"))
    model = materialize_model(home)
    model_path = home / "model.onnx"
    model_path.write_bytes(model)
    trees: dict[str, Path] = {}
    if args.base:
        trees["base"] = worktree(args.base, args.worktrees)
    for spec in args.tree:
        label, _, path = spec.partition("=")
        trees[label] = Path(path)
    if not args.tree:
        trees["new"] = REPO_ROOT
    targets = [] if args.no_floor else [probed_floor(model_path)]
    for level in args.levels.split(","):
        for label, tree in trees.items():
            targets.append(probed_target(f"{label}-{level}", home, tree, level))
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    runs: list[dict[str, Any]] = []
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    try:
        for target in targets:
            start(target, logs)
        for target in targets:
            wait_ready(target)
            run_wrk(target, 64, args.warmup, BODY_FILE)  # warm-up, not recorded
        for round_no in range(1, args.rounds + 1):
            order = targets if round_no % 2 else list(reversed(targets))
            for target in order:
                for concurrency in concurrencies:
                    probe(target, reset=True)
                    result = run_wrk(target, concurrency, args.duration, BODY_FILE)
                    result["probe"] = probe(target, reset=False)
                    result["wrk_us"] = wrk_buckets(result.pop("raw"))
                    result["round"] = round_no
                    runs.append(result)
                    print(f"round {round_no} {target.name} c={concurrency}: "
                          f"{result['rps']:,.0f} req/s, p99 {result['wrk_us'].get('p99')} µs",
                          file=sys.stderr, flush=True)
    finally:
        for target in targets:
            stop(target)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                         capture_output=True, text=True).stdout.strip()
    header = (
        f"`benchmarks/stalls.py {' '.join(sys.argv[1:])}` at {rev} "
        f"({time.strftime('%Y-%m-%d %H:%MZ', time.gmtime())}; {MODEL}, wrk -t1 -c1 "
        f"{args.duration:g} s per run, {args.rounds} interleaved rounds, values per round "
        f"joined with /)"
    )
    text = "\n".join(
        report([r for r in runs if r["concurrency"] == c], [t.name for t in targets],
               header.replace("-c1", f"-c{c}"))
        for c in concurrencies
    )
    (args.out / "stalls.md").write_text(text)
    (args.out / "stalls.json").write_text(json.dumps(runs, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
