"""What RPO 0 costs: the gateway with ``log_durability: fsync`` next to ``buffered``, in one run.

    .venv/bin/python benchmarks/durability.py [--duration 10] [--concurrency 1,64] [--quick]

One run, on this machine:

1. puts the breast-cancer model into a temporary ROOST_HOME (the demo pipeline, as
   ``benchmarks/harness.py`` does; ``--quick``: a logistic-regression ONNX with the same 30-feature
   signature, registered directly) and copies that home, one per gateway;
2. starts two ``roost serve`` processes, ``ROOST_LOG_DURABILITY=fsync`` (each response waits
   for the write-ahead-log group commit that covers its record) and ``=buffered`` (no wait, no
   fsync), and warms both up;
3. for each concurrency runs ``wrk -t1 -c<C> -d<D>s --latency -s post.lua`` ``--repeat`` times
   against each, alternating (and swapping the order every repeat, so drifting background load
   hits both alike), reads req/s, p50/p99/p99.9 and errors, and reports the medians;
4. stops both with SIGTERM (drain, WAL sealed into Parquet, exit 0) and counts the rows each
   logged against the requests wrk counted;
5. prints a markdown table and writes ``<out>/durability.json`` and ``<out>/durability.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))

import harness as bench  # noqa: E402  (benchmarks/harness.py: servers, wrk, parsing)

MODES = ("fsync", "buffered")


def register_quick_model(home: Path) -> None:
    """A 30-feature logistic regression deployed as breast-cancer (no Dagster run)."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
    from roost_testing import deploy_model, make_linear_onnx

    from registry import Registry, RoostSettings

    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        deploy_model(registry, bench.MODEL, make_linear_onnx(n_features=30, seed=7))
    finally:
        registry.close()


def make_targets(homes: dict[str, Path]) -> list[bench.Target]:
    targets = []
    for mode, home in homes.items():
        port = bench.free_port()
        targets.append(
            bench.Target(
                name=mode,
                description=f"roost serve, ROOST_LOG_DURABILITY={mode}",
                argv=[
                    sys.executable, "-m", "orchestration", "serve",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                env={
                    "ROOST_HOME": str(home),
                    "ROOST_HTTP_PORT": str(port),
                    "ROOST_GRPC_PORT": str(bench.free_port()),
                    "ROOST_LOG_DURABILITY": mode,
                },
                port=port,
            )
        )
    return targets


def stop(target: bench.Target, timeout_s: float = 60) -> int | None:
    """SIGTERM: the gateway drains, seals its log and exits (0 expected)."""
    proc = target.proc
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except Exception:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (durability, concurrency): medians over the repeats, and the req/s range."""
    out = []
    for c in sorted({r["concurrency"] for r in runs}):
        for mode in MODES:
            mine = [r for r in runs if r["server"] == mode and r["concurrency"] == c]
            if not mine:
                continue
            rps = [r["rps"] for r in mine]
            out.append(
                {
                    "durability": mode,
                    "concurrency": c,
                    "repeats": len(mine),
                    "rps": _median(rps),
                    "rps_min": min(rps),
                    "rps_max": max(rps),
                    **{
                        f"{p}_ms": _median([r["latency_ms"].get(p, float("nan")) for r in mine])
                        for p in ("p50", "p99", "p99.9")
                    },
                    "non_2xx": sum(r["non_2xx"] for r in mine),
                    "other_cpu_cores": _median([r.get("other_cpu_cores", 0.0) for r in mine]),
                }
            )
    return out


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Durability cost, {report['started']} — {report['machine'].get('cpu_model', '?')}, "
        f"{report['machine'].get('usable_cpus', '?')} CPUs, model: {report['model_source']}; "
        f"medians of {report['settings']['repeat']} alternating wrk runs of "
        f"{report['settings']['duration_s']:g} s",
        "",
        "| durability | conns | req/s (min-max) | p50 ms | p99 ms | p99.9 ms | non-2xx | "
        "other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = report.get("summary", [])
    for row in summary:
        lines.append(
            f"| {row['durability']} | {row['concurrency']} | {row['rps']:,.0f} "
            f"({row['rps_min']:,.0f}-{row['rps_max']:,.0f}) | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['p99.9_ms']:.2f} | {row['non_2xx']} | "
            f"{row['other_cpu_cores']:.2f} |"
        )
    lines.append("")
    for c in sorted({row["concurrency"] for row in summary}):
        by = {row["durability"]: row for row in summary if row["concurrency"] == c}
        if set(MODES) <= set(by):
            f, b = by["fsync"], by["buffered"]
            lines.append(
                f"- -c{c}: fsync/buffered throughput {f['rps'] / b['rps']:.2f}x, "
                f"p50 +{f['p50_ms'] - b['p50_ms']:.2f} ms, p99 {f['p99_ms'] / b['p99_ms']:.2f}x"
            )
    for mode, counts in report.get("logged", {}).items():
        lines.append(
            f"- {mode}: {counts['rows']:,} rows logged for {counts['requests']:,} requests "
            "wrk counted (wrk does not count the requests in flight when a run ends)"
        )
    lines.append(f"- exit status after SIGTERM: {report.get('exit_codes')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated connections")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per server and -c")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk seconds per server")
    parser.add_argument("--quick", action="store_true", help="linear model, no demo pipeline")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="output directory")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(bench.WRK_MISSING, file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    base = Path(tempfile.mkdtemp(prefix="roost-durability-"))
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": bench.machine_info(),
        "model_source": "make_linear_onnx(30 features)" if args.quick else "demo pipeline",
        "settings": {
            "duration_s": args.duration,
            "concurrency": concurrencies,
            "repeat": args.repeat,
        },
    }
    targets: list[bench.Target] = []
    try:
        seed = base / "seed"
        if args.quick:
            register_quick_model(seed)
        else:
            print("materializing breast-cancer ...", file=sys.stderr)
            bench.materialize_model(seed)
        homes = {}
        for mode in MODES:
            homes[mode] = base / mode
            shutil.copytree(seed, homes[mode], ignore=shutil.ignore_patterns("logs", "dagster"))
        targets = make_targets(homes)
        for target in targets:
            bench.start(target, base)
        body = bench.BODY_FILE.read_bytes().strip()
        for target in targets:
            bench.wait_ready(target)
            status, _, answer = bench.http("POST", target.url, body)
            if status != 200:
                raise RuntimeError(f"{target.name} answered {status}: {answer[:300]!r}")
        sent = {t.name: 1 for t in targets}
        if args.warmup > 0:
            for target in targets:
                warm = bench.run_wrk(target, max(concurrencies), args.warmup, bench.BODY_FILE)
                sent[target.name] += warm.get("requests", 0)
        runs: list[dict[str, Any]] = []
        report["runs"] = runs
        for concurrency in concurrencies:
            for repeat in range(args.repeat):
                # alternate, and swap the order each repeat, so drifting load hits both alike
                for target in targets if repeat % 2 == 0 else targets[::-1]:
                    print(f"wrk {target.name} -c{concurrency} #{repeat + 1} ...", file=sys.stderr)
                    result = bench.run_wrk(target, concurrency, args.duration, bench.BODY_FILE)
                    result.pop("raw", None)
                    runs.append(result)
                    sent[target.name] += result.get("requests", 0)
                    time.sleep(0.5)
        report["summary"] = summarize(runs)
        report["exit_codes"] = {t.name: stop(t) for t in targets}
        report["logged"] = {
            mode: {"rows": bench.count_logged_rows(home), "requests": sent[mode]}
            for mode, home in homes.items()
        }
    finally:
        for target in targets:
            stop(target)
        shutil.rmtree(base, ignore_errors=True)
    table = render(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "durability.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "durability.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
