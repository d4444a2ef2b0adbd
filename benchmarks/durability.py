"""What each durability level costs: the floor and Roost at ``fsync``, ``write`` and
``buffered``, side by side in one run.

    .venv/bin/python benchmarks/durability.py [--duration 8] [--concurrency 1,8,64] [--repeat 2]
        [--quick] [--baseline-src DIR]

One run, on this machine:

1. puts the breast-cancer model into a temporary ROOST_HOME (the demo pipeline, as
   ``benchmarks/harness.py`` does; ``--quick``: a logistic-regression ONNX with the same 30-feature
   signature, registered directly) and copies that home, one per gateway;
2. starts the floor (``floor_app.py``: bare FastAPI + one ONNX Runtime session) and one
   ``roost serve`` per level, ``ROOST_LOG_DURABILITY=fsync`` (each response waits for the
   fdatasync covering its record), ``=write`` (waits until the record is written to the WAL
   file; synced in the background within ``ROOST_LOG_SYNC_INTERVAL_MS``) and ``=buffered`` (no
   wait, no fsync); with ``--baseline-src DIR`` also ``fsync@base``, the gateway of another
   checkout (e.g. ``git archive <commit> | tar -x -C DIR``) at ``fsync``, for before/after;
3. measures ``fdatasync`` on the logs' disk (median of 400 one-block appends+syncs), before and
   after the load;
4. for each concurrency runs ``wrk -t1 -c<C> -d<D>s --latency -s post.lua`` ``--repeat`` rounds
   against every server, interleaved (the order reversed every round, so drifting background
   load hits all alike), and reports medians: req/s, p50/p99/p99.9, server CPU per request;
5. stops the gateways with SIGTERM (drain, WAL sealed into Parquet, exit 0) and counts the rows
   each logged against the requests wrk counted;
6. prints a markdown table (with each level's ratio to the floor and the c=1 limit
   ``1 / (floor's time per request + one fdatasync)``) and writes ``<out>/durability.json`` and
   ``<out>/durability.md``.

Wrap it in ``flock /tmp/roost-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
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

LEVELS = ("fsync", "write", "buffered")
BASELINE = "fsync@base"


def register_quick_model(home: Path) -> bytes:
    """A 30-feature logistic regression deployed as breast-cancer (no Dagster run)."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
    from roost_testing import deploy_model, make_linear_onnx

    from registry import Registry, RoostSettings

    model = make_linear_onnx(n_features=30, seed=7)
    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        deploy_model(registry, bench.MODEL, model)
    finally:
        registry.close()
    return model


def roost_target(name: str, home: Path, level: str, source: Path | None = None) -> bench.Target:
    port = bench.free_port()
    if source is None:
        argv = [sys.executable, "-m", "orchestration", "serve"]
    else:  # another checkout's gateway: its packages first on sys.path
        code = (
            f"import sys; sys.path.insert(0, {str(source)!r}); import runpy; "
            "sys.argv[0] = 'orchestration'; runpy.run_module('orchestration', run_name='__main__')"
        )
        argv = [sys.executable, "-c", code, "serve"]
    return bench.Target(
        name=name,
        description=f"roost serve, ROOST_LOG_DURABILITY={level}"
        + (f" ({source})" if source else ""),
        argv=[*argv, "--host", "127.0.0.1", "--port", str(port)],
        env={
            "ROOST_HOME": str(home),
            "ROOST_HTTP_PORT": str(port),
            "ROOST_GRPC_PORT": str(bench.free_port()),
            "ROOST_LOG_DURABILITY": level,
        },
        port=port,
    )


def floor_target(model_path: Path) -> bench.Target:
    port = bench.free_port()
    return bench.Target(
        name="floor",
        description="bare FastAPI endpoint calling one session (benchmarks/floor_app.py)",
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "--app-dir",
            str(BENCH_DIR),
            "floor_app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={"FLOOR_MODEL_PATH": str(model_path), "FLOOR_MODEL_NAME": bench.MODEL},
        port=port,
    )


def fdatasync_us(directory: Path, syncs: int = 400) -> dict[str, float]:
    """Median and p90 of one 1.6 kB append + ``fdatasync`` in ``directory`` (a WAL group's)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    samples = []
    try:
        for _ in range(syncs):
            os.write(fd, b"x" * 1600)
            t0 = time.perf_counter_ns()
            os.fdatasync(fd)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return {"median": statistics.median(samples), "p90": samples[int(len(samples) * 0.9)]}


def stop(target: bench.Target, timeout_s: float = 60) -> int | None:
    """SIGTERM: the gateway drains, seals its log and exits (0 expected)."""
    proc = target.proc
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            bench.stop(target)
    return proc.returncode


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per (server, concurrency): medians over the rounds, and the req/s range."""
    out = []
    for c in sorted({r["concurrency"] for r in runs}):
        for name in names:
            mine = [r for r in runs if r["server"] == name and r["concurrency"] == c]
            if not mine:
                continue
            rps = [r["rps"] for r in mine]
            out.append(
                {
                    "server": name,
                    "concurrency": c,
                    "rounds": len(mine),
                    "rps": _median(rps),
                    "rps_min": min(rps),
                    "rps_max": max(rps),
                    **{
                        f"{p}_ms": _median([r["latency_ms"].get(p, float("nan")) for r in mine])
                        for p in ("p50", "p99", "p99.9")
                    },
                    "cpu_us_per_req": _median([r["server_cpu_us_per_req"] for r in mine]),
                    "non_2xx": sum(r["non_2xx"] for r in mine),
                    "other_cpu_cores": _median([r.get("other_cpu_cores", 0.0) for r in mine]),
                }
            )
    return out


def render(report: dict[str, Any]) -> str:
    sync = report["fdatasync_us"]
    lines = [
        f"Durability levels, {report['started']}, commit {report['commit']} - "
        f"{report['machine'].get('cpu_model', '?')}, {report['machine'].get('usable_cpus', '?')} "
        f"CPUs, model: {report['model_source']}; medians of {report['settings']['repeat']} "
        f"interleaved wrk rounds of {report['settings']['duration_s']:g} s; fdatasync on the "
        f"logs' disk: median {sync['before']['median']:.0f} / {sync['after']['median']:.0f} us "
        "(before / after the load)",
        "",
        "| server | conns | req/s (min-max) | vs floor | p50 ms | p99 ms | p99.9 ms | "
        "CPU us/req | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = report.get("summary", [])
    for row in summary:
        floor = next(
            (
                r
                for r in summary
                if r["server"] == "floor" and r["concurrency"] == row["concurrency"]
            ),
            None,
        )
        ratio = f"{row['rps'] / floor['rps']:.2f}x" if floor else "-"
        lines.append(
            f"| {row['server']} | {row['concurrency']} | {row['rps']:,.0f} "
            f"({row['rps_min']:,.0f}-{row['rps_max']:,.0f}) | {ratio} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['p99.9_ms']:.2f} | {row['cpu_us_per_req']:.0f} | "
            f"{row['non_2xx']} |"
        )
    lines.append("")
    median_sync_s = statistics.mean([sync["before"]["median"], sync["after"]["median"]]) / 1e6
    for c in sorted({row["concurrency"] for row in summary}):
        by = {row["server"]: row for row in summary if row["concurrency"] == c}
        if "write" in by and "buffered" in by:
            lines.append(
                f"- c={c}: write / buffered {by['write']['rps'] / by['buffered']['rps']:.2f}x, "
                f"fsync / buffered {by['fsync']['rps'] / by['buffered']['rps']:.2f}x"
                if "fsync" in by
                else f"- c={c}: write / buffered {by['write']['rps'] / by['buffered']['rps']:.2f}x"
            )
        if c == 1 and "floor" in by:
            limit = 1.0 / (1.0 / by["floor"]["rps"] + median_sync_s)
            lines.append(
                f"- c=1 limit with one fdatasync per request: 1 / (1/{by['floor']['rps']:,.0f} + "
                f"{median_sync_s * 1e6:.0f} us) = {limit:,.0f} req/s = "
                f"{limit / by['floor']['rps']:.2f}x the floor"
                + (
                    f"; fsync reaches {by['fsync']['rps'] / limit:.2f} of it"
                    if "fsync" in by
                    else ""
                )
            )
    for name, counts in report.get("logged", {}).items():
        lines.append(
            f"- {name}: {counts['rows']:,} rows logged for {counts['requests']:,} requests "
            "wrk counted (wrk does not count the requests in flight when a run ends)"
        )
    lines.append(f"- exit status after SIGTERM: {report.get('exit_codes')}")
    lines.append(f"- command: `{report['command']}`")
    return "\n".join(lines)


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated connections")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--warmup", type=float, default=3.0, help="wrk seconds per server")
    parser.add_argument("--levels", default=",".join(LEVELS), help="durability levels to run")
    parser.add_argument("--no-floor", action="store_true", help="leave the floor out")
    parser.add_argument("--quick", action="store_true", help="linear model, no demo pipeline")
    parser.add_argument(
        "--baseline-src", type=Path, help="another checkout's source tree: adds fsync@base"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="output directory")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(bench.WRK_MISSING, file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    levels = [lv for lv in args.levels.split(",") if lv.strip()]
    base = Path(tempfile.mkdtemp(prefix="roost-durability-"))
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": bench.machine_info(),
        "model_source": "make_linear_onnx(30 features)" if args.quick else "demo pipeline",
        "settings": {
            "duration_s": args.duration,
            "concurrency": concurrencies,
            "repeat": args.repeat,
            "levels": levels,
        },
    }
    targets: list[bench.Target] = []
    homes: dict[str, Path] = {}
    try:
        seed = base / "seed"
        if args.quick:
            model = register_quick_model(seed)
        else:
            print("materializing breast-cancer ...", file=sys.stderr)
            model = bench.materialize_model(seed)
        model_path = base / "model.onnx"
        model_path.write_bytes(model)
        if not args.no_floor:
            targets.append(floor_target(model_path))
        plan = [(level, level, None) for level in levels]
        if args.baseline_src is not None:
            plan.append((BASELINE, "fsync", args.baseline_src.resolve()))
        for name, level, source in plan:
            homes[name] = base / name.replace("@", "-")
            shutil.copytree(seed, homes[name], ignore=shutil.ignore_patterns("logs", "dagster"))
            targets.append(roost_target(name, homes[name], level, source))
        report["fdatasync_us"] = {"before": fdatasync_us(base / "seed" / "logs")}
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
            for round_ in range(args.repeat):
                # interleaved, the order reversed each round: drifting load hits all alike
                for target in targets if round_ % 2 == 0 else targets[::-1]:
                    print(f"wrk {target.name} -c{concurrency} #{round_ + 1} ...", file=sys.stderr)
                    result = bench.run_wrk(target, concurrency, args.duration, bench.BODY_FILE)
                    result.pop("raw", None)
                    runs.append(result)
                    sent[target.name] += result.get("requests", 0)
                    time.sleep(0.5)
        report["fdatasync_us"]["after"] = fdatasync_us(base / "seed" / "logs")
        report["summary"] = summarize(runs, [t.name for t in targets])
        report["exit_codes"] = {t.name: stop(t) for t in targets}
        report["logged"] = {
            name: {"rows": bench.count_logged_rows(home), "requests": sent[name]}
            for name, home in homes.items()
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
