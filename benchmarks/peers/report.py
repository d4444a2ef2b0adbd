"""The table ``benchmarks/peers.py`` prints: medians over rounds, the issue's ratios.

``render(report)`` takes the run's report (``peers.json``: settings, columns, runs, fdatasync
probes, machine, skipped peers) and returns markdown: req/s with p99 and server CPU per request
per server and concurrency, then one line per ratio the issue sets a target for.
"""

from __future__ import annotations

import statistics
from typing import Any


def medians(report: dict[str, Any], key: str, protocol: str, concurrency: int
            ) -> dict[str, float] | None:
    runs = [r for r in report["runs"] if r["key"] == key and r["protocol"] == protocol
            and r["concurrency"] == concurrency]
    if not runs:
        return None
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p99": statistics.median(r["latency_ms"].get("p99", float("nan")) for r in runs),
        "cpu": statistics.median(r["server_cpu_us_per_req"] for r in runs),
        "other": max(r["other_cpu_cores"] for r in runs),
        "cores": statistics.median(r["server_cpu_cores"] for r in runs),
        "client": statistics.median(r["client_cpu_cores"] for r in runs),
        "split": statistics.median(_busiest_share(r) for r in runs),
        "errors": sum(int(r.get("non_2xx", 0)) + int(r.get("errors", 0)) for r in runs),
        "rounds": len(runs),
    }


def _busiest_share(run: dict[str, Any]) -> float:
    """The busiest server process's share of the server's CPU (1.0 with one process)."""
    each = [v for v in run.get("server_cpu_s_per_process", {}).values() if v > 0]
    return max(each) / sum(each) if each else 1.0


def _p99(ms: float) -> str:
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.0f} ms" if ms >= 100 else f"{ms:.1f} ms"


def render(report: dict[str, Any]) -> str:
    columns = report["columns"]
    settings = report["settings"]
    rows: list[tuple[str, str, int]] = [
        (f"c={c} req/s (p99)", "REST JSON", c) for c in settings["concurrency"]
    ] + [(f"gRPC c={c} req/s (p99)", "gRPC", c) for c in settings["grpc_concurrency"]]
    header = "| | " + " | ".join(c["header"] for c in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    speed, cpu = [header, rule], [header, rule]
    for label, protocol, c in rows:
        cells, cpu_cells = [], []
        for column in columns:
            m = medians(report, column["key"], protocol, c)
            if m is None:
                cells.append("–")
                cpu_cells.append("–")
                continue
            flag = f", {m['errors']} errors" if m["errors"] else ""
            cells.append(f"{m['rps']:,.0f} ({_p99(m['p99'])}{flag})")
            cpu_cells.append(f"{m['cpu']:,.0f}")
        speed.append(f"| {label} | " + " | ".join(cells) + " |")
        cpu.append(f"| {label.replace('req/s (p99)', 'server CPU µs/req')} | "
                   + " | ".join(cpu_cells) + " |")
    syncs = [s["median_us"] for s in report["fdatasync_us"]]
    lines = [
        f"## Roost and its peers ({report['finished']}, commit {report['commit']})",
        "",
        f"`{report['command']}`: {settings['rounds']} interleaved rounds of "
        f"{settings['duration']:g} s per run, medians over rounds; REST JSON with "
        "`wrk -t1` (benchmarks/post.lua, benchmarks/body.json: one breast-cancer row), gRPC "
        "`ModelInfer` with benchmarks/grpc_load.py (one Python process, same client for every "
        f"server). Wall time {report['wall_s'] / 60:.1f} min, of which "
        f"{report.get('lock_wait_s', 0) / 60:.1f} min setup and waiting for other benchmarks.",
        "",
        *speed,
        "",
        *cpu,
        "",
        f"- `fdatasync` on this disk (1.6 kB append + fdatasync, median of 400, before and "
        f"after the rounds): {', '.join(f'{s:.0f} µs' for s in syncs)}.",
        *ratios(report),
        f"- Machine: {report['machine']['nproc']} CPUs ({report['machine']['cpu_model']}), "
        f"Python {report['machine']['python']}, {report['machine']['wrk']}; most other "
        f"load during any run: {max_other(report):.2f} cores (other helpers' work).",
    ]
    for name, why in report["skipped"].items():
        lines.append(f"- Not measured: {name}: {why.splitlines()[0][:300]}")
    return "\n".join(lines) + "\n"


def max_other(report: dict[str, Any]) -> float:
    return max((r["other_cpu_cores"] for r in report["runs"]), default=0.0)


def ratios(report: dict[str, Any]) -> list[str]:
    """The issue's ratios: Roost as shipped against the floor and MLServer, workers."""
    levels = report["durability_levels"]
    shipped = f"roost-{levels[0]}"
    settings = report["settings"]
    out = []
    for c in settings["concurrency"]:
        roost = medians(report, shipped, "REST JSON", c)
        floor = medians(report, "floor", "REST JSON", c)
        peer = medians(report, "mlserver", "REST JSON", c)
        if roost and floor:
            text = (f"- c={c} REST: Roost as shipped = {roost['rps'] / floor['rps']:.2f}× the "
                    f"floor's req/s, p99 {roost['p99'] / floor['p99']:.2f}× the floor's")
            if peer:
                text += f"; {roost['rps'] / peer['rps']:.2f}× MLServer"
            if c == 1 and report["fdatasync_us"]:
                sync_s = statistics.median(s["median_us"] for s in report["fdatasync_us"]) / 1e6
                limit = 1 / (1 / floor["rps"] + sync_s) / floor["rps"]
                text += (f"; the one-fdatasync-per-request limit is {limit:.2f}× the floor, "
                         f"Roost is at {roost['rps'] / floor['rps'] / limit:.0%} of it")
            out.append(text + ".")
    for c in settings["grpc_concurrency"]:
        roost = medians(report, shipped, "gRPC", c)
        peer = medians(report, "mlserver", "gRPC", c)
        if roost and peer:
            out.append(f"- gRPC c={c}: Roost = {roost['rps'] / peer['rps']:.2f}× MLServer's "
                       f"req/s, p99 {roost['p99']:.1f} ms vs {peer['p99']:.1f} ms.")
    top = max(settings["concurrency"])
    one = medians(report, shipped, "REST JSON", top)
    two = medians(report, "roost-w2", "REST JSON", top)
    if one and two:
        out.append(
            f"- Workers: `roost serve --workers 2` = {two['rps'] / one['rps']:.2f}× one worker "
            f"at c={top} REST JSON, wrk -t1 on the same 2 CPUs as the servers. Server CPU "
            f"{one['cores']:.2f} → {two['cores']:.2f} cores ({one['cpu']:.0f} → {two['cpu']:.0f} "
            f"µs/req; busiest worker {two['split']:.0%} of it), wrk {two['client']:.2f} cores, "
            f"others up to {two['other']:.2f}: with the CPU per request unchanged, two workers "
            f"can reach at most (2 − wrk − others) / {one['cores']:.2f} = "
            f"{(2 - two['client'] - two['other']) / max(one['cores'], 1e-9):.2f}× here."
        )
    floor_one = medians(report, "floor", "REST JSON", top)
    floor_two = medians(report, "floor-w2", "REST JSON", top)
    if floor_one and floor_two:
        text = (f"- The floor with 2 uvicorn workers = {floor_two['rps'] / floor_one['rps']:.2f}× "
                f"one at c={top} (the machine's ceiling for two workers here)")
        if one and two:
            text += (f"; Roost's 2 workers reach {two['rps'] / one['rps']:.2f}× = "
                     f"{(two['rps'] / one['rps']) / (floor_two['rps'] / floor_one['rps']):.0%} "
                     f"of that ceiling")
        out.append(text + ".")
    for c in settings["concurrency"]:
        roost = medians(report, shipped, "REST JSON", c)
        gil5 = medians(report, "roost-gil5", "REST JSON", c)
        if roost and gil5:
            out.append(
                f"- GIL switch interval c={c}: Roost as shipped (0.25 ms) = "
                f"{roost['rps'] / gil5['rps']:.2f}× the req/s with CPython's 5 ms, p99 "
                f"{roost['p99']:.2f} vs {gil5['p99']:.2f} ms, CPU/req {roost['cpu']:.0f} vs "
                f"{gil5['cpu']:.0f} µs."
            )
    for c in settings["concurrency"]:
        floor = medians(report, "floor", "REST JSON", c)
        granian = medians(report, "floor-granian", "REST JSON", c)
        roost = medians(report, shipped, "REST JSON", c)
        roost_g = medians(report, "roost-granian", "REST JSON", c)
        if floor and granian:
            text = (f"- Granian c={c}: the floor under Granian = "
                    f"{granian['rps'] / floor['rps']:.2f}× its req/s under uvicorn, "
                    f"{granian['cpu'] / floor['cpu']:.2f}× its CPU/req")
            if roost and roost_g:
                text += (f"; Roost under Granian = {roost_g['rps'] / roost['rps']:.2f}× its req/s "
                         f"under uvicorn ({roost_g['rps'] / floor['rps']:.2f}× the uvicorn floor), "
                         f"{roost_g['cpu'] / roost['cpu']:.2f}× its CPU/req")
            out.append(text + ".")
    return out
