"""Traffic management's cost: the router's decision in-process, and one gateway under wrk.

    .venv/bin/python benchmarks/traffic.py [--duration S] [--rounds N] [--calls N] ...

1. **Router decision** (in-process, no HTTP): ``ModelRouter.decide`` timed per call over
   ``--calls`` requests with ``--users`` distinct unit ids, for a plain production policy, the
   gateway's traffic policy below, an experiment with three variants plus a canary and two
   segments that do not match, a segment that matches, and two bandits (Thompson sampling and
   epsilon-greedy, three arms). Median and p99 per call, and the mean of a tight loop.
2. **Gateway** (``roost serve`` as shipped, one worker, gRPC and durable prediction logging on):
   the demo breast-cancer model is materialized into a fresh ``ROOST_HOME`` (version 1,
   production) and registered twice more (versions 2 and 3: the same graph, so the same cost;
   only the ONNX ``doc_string`` differs) and validated. wrk at ``--concurrency`` sends
   ``body.json`` with a ``roost-user`` header that changes on every request (``--users`` ids),
   against two policies set through the admin API (``PUT /admin/models/breast-cancer/traffic``):
   - **plain**: production only (version 1);
   - **traffic**: experiment ``bench`` 50/50 on versions 1 and 2, plus a 100 % shadow on
     version 3.
   They alternate (plain, traffic, plain, traffic for ``--rounds 2``) after a ``--warmup``
   each, so drifting background load hits both alike; the table gives the median of the rounds.
   After the runs the gateway is stopped (its log is flushed) and the prediction log is read
   back: primary and shadow rows per run, the experiment's split, and statuses. Shadow copies
   dropped because the mirror's queue was full come from ``roost_shadow_dropped_total``.

Prints a markdown table and writes ``<out>/traffic.json`` and ``<out>/traffic.md``. Without wrk
it says how to install it and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    BODY_FILE,
    MODEL,
    REPO_ROOT,
    WRK_MISSING,
    CpuWindow,
    Target,
    build_targets,
    http,
    loadavg,
    log,
    machine_info,
    materialize_model,
    metric_value,
    metrics_text,
    parse_wrk,
    scan_log,
    source_fingerprint,
    start,
    stop,
    wait_ready,
)

PLAIN: dict[str, Any] = {}
TRAFFIC: dict[str, Any] = {
    "experiments": [
        {"id": "bench", "variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]}
    ],
    "shadows": [{"version": 3, "percent": 100}],
}
EXPERIMENT_ONLY: dict[str, Any] = {"experiments": TRAFFIC["experiments"]}
POLICIES = {"plain": PLAIN, "experiment": EXPERIMENT_ONLY, "traffic": TRAFFIC}
POLICY_TEXT = {
    "plain": "production v1 only",
    "experiment": "experiment 50/50 v1/v2, no shadow",
    "traffic": "experiment 50/50 v1/v2 + 100 % shadow v3",
}

# wrk: POST the body with a roost-user header that changes on every request.
LUA = r"""
local path = os.getenv("BENCH_BODY_FILE")
local file = assert(io.open(path, "rb"), "cannot open request body file " .. path)
local body = file:read("*a"):gsub("%s+$", "")
file:close()
local users = tonumber(os.getenv("BENCH_USERS") or "10000")
local n = 0

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

request = function()
  n = n + 1
  wrk.headers["roost-user"] = "user-" .. (n % users)
  return wrk.format()
end

function done(summary, latency, requests)
  io.write(string.format("bench-tail: p99.9=%.0fus max=%.0fus\n",
    latency:percentile(99.9), latency.max))
end
"""


# ------------------------------------------------------------------------------------------
# 1. the router, in-process


def router_policies() -> dict[str, dict[str, Any]]:
    segments = [
        {"id": "eu", "version": 4, "match": {"header": "x-region", "values": ["eu"]}},
        {"id": "beta", "version": 4, "match": {"flag": "beta-ui"}},
    ]
    return {
        "production only": {"production": 1},
        "experiment 50/50 + 100 % shadow (the gateway's traffic policy)": {
            "production": 1, **TRAFFIC
        },
        "experiment, 3 variants + canary 10 % + 2 segments (no match)": {
            "production": 1,
            "canary": {"version": 4, "percent": 10},
            "segments": segments,
            "experiments": [{
                "id": "exp3",
                "variants": [
                    {"version": 1, "weight": 34, "name": "control"},
                    {"version": 2, "weight": 33},
                    {"version": 3, "weight": 33},
                ],
            }],
        },
        "segment match (first rule, header)": {
            "production": 1,
            "segments": [
                {"id": "gold", "version": 2, "match": {"header": "roost-tier", "values": ["gold"]}},
                *segments,
            ],
        },
        "bandit, Thompson sampling, 3 arms": {
            "production": 1,
            "bandit": {"id": "b", "arms": [1, 2, 3], "algorithm": "thompson"},
        },
        "bandit, epsilon-greedy, 3 arms": {
            "production": 1,
            "bandit": {"id": "b", "arms": [1, 2, 3], "algorithm": "epsilon_greedy"},
        },
    }


def measure_router(calls: int, users: int) -> dict[str, Any]:
    from registry.traffic import parse_policy
    from serving.router import ModelRouter, RequestFacts

    facts = [
        RequestFacts(
            unit=f"user-{i}",
            headers={
                "host": "127.0.0.1:8000",
                "content-type": "application/json",
                "content-length": "312",
                "roost-user": f"user-{i}",
                "roost-tier": "gold",
            },
        )
        for i in range(users)
    ]
    evidence = {1: (52.0, 1000.0), 2: (61.0, 1000.0), 3: (47.0, 1000.0)}
    clock = time.perf_counter_ns
    overhead: list[int] = []
    for _ in range(calls):
        start_ns = clock()
        overhead.append(clock() - start_ns)
    out: dict[str, Any] = {"timer_overhead_ns": statistics.median(overhead), "rows": []}
    for label, data in router_policies().items():
        policy = parse_policy(data)
        router = ModelRouter(policy, evidence if policy.bandit else None, random.Random(7))
        decide = router.decide
        for f in facts[: min(users, 5000)]:
            decide(f)
        samples: list[int] = []
        append = samples.append
        routes: dict[str, int] = {}
        n = len(facts)
        for i in range(calls):
            f = facts[i % n]
            start_ns = clock()
            decision = decide(f)
            append(clock() - start_ns)
            routes[decision.variant] = routes.get(decision.variant, 0) + 1
        start_ns = clock()
        for i in range(calls):
            decide(facts[i % n])
        loop_ns = clock() - start_ns
        samples.sort()
        out["rows"].append({
            "policy": label,
            "median_us": samples[len(samples) // 2] / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
            "loop_mean_us": loop_ns / calls / 1000,
            "calls": calls,
            "decisions": dict(sorted(routes.items())),
        })
        log(f"router: {label}: median {out['rows'][-1]['median_us']:.2f} µs")
    return out


# ------------------------------------------------------------------------------------------
# 2. the gateway


def with_doc_string(model: bytes, text: str) -> bytes:
    """The same ONNX graph with another ``doc_string``: new bytes (a new version), same cost."""
    import onnx

    proto = onnx.load_from_string(model)
    proto.doc_string = text
    return proto.SerializeToString()


def add_versions(home: Path, model: bytes) -> tuple[list[int], str]:
    """Register versions 2 and 3 of breast-cancer (copies of version 1) and validate them.

    Returns the versions and an admin API key (for ``/admin/...``).
    """
    from registry import Registry, RoostSettings, State
    from registry.keys import create_key

    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        first = next(v for v in registry.list_versions(MODEL) if v.state == State.PRODUCTION)
        names = first.signature.feature_names
        added = []
        for n in (2, 3):
            info = registry.register_version(
                MODEL,
                with_doc_string(model, f"traffic benchmark copy {n}"),
                feature_names=list(names) if names else None,
                config=dict(first.config),
                registered_by="benchmark",
                description=f"copy of version {first.version} for the traffic benchmark",
            )
            for state in (State.VALIDATING, State.VALIDATED):
                registry.transition(MODEL, info.version, state, reason="traffic benchmark")
            added.append(int(info.version))
        key, _ = create_key(registry, "traffic-benchmark", ["admin"])
        return [int(first.version), *added], key
    finally:
        registry.close()


def set_policy(roost: Target, name: str, key: str) -> dict[str, Any]:
    """PUT the policy through the admin API (applied by this gateway at once)."""
    url = f"{roost.base}/admin/models/{MODEL}/traffic"
    status, _, answer = http(
        "PUT", url, json.dumps(POLICIES[name]).encode(), {"x-api-key": key}, timeout=60
    )
    if status != 200:
        raise RuntimeError(f"PUT {url} answered {status}: {answer[:500]!r}")
    return dict(json.loads(answer))


def wait_variant(roost: Target, body: bytes, name: str, timeout_s: float = 60) -> None:
    """Wait until requests are routed by the new policy (the roost-variant header says so)."""
    deadline = time.monotonic() + timeout_s
    variant = None
    while time.monotonic() < deadline:
        status, headers, _ = http("POST", roost.url, body, {"roost-user": "probe"})
        variant = {k.lower(): v for k, v in headers.items()}.get("roost-variant")
        if status == 200 and (variant == "production") == (name == "plain"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"policy {name!r} not in effect after {timeout_s:g}s (variant {variant})")


def shadow_drops(roost: Target) -> float:
    return metric_value(metrics_text(roost), "roost_shadow_dropped_total", MODEL) or 0.0


def version_metric(text: str, name: str, version: int) -> float:
    """``name{model="breast-cancer", version="<version>"}`` (labels in any order), or 0."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        labels, _, value = line.rpartition("} ")
        if f'model="{MODEL}"' in labels and f'version="{version}"' in labels:
            return float(value)
    return 0.0


def batch_counters(roost: Target, versions: list[int]) -> dict[int, tuple[float, float, float]]:
    """Per version: (model calls, rows, model seconds) so far, from ``/metrics``."""
    text = metrics_text(roost)
    return {
        v: (
            version_metric(text, "roost_batch_size_count", v),
            version_metric(text, "roost_batch_size_sum", v),
            version_metric(text, "roost_inference_seconds_sum", v),
        )
        for v in versions
    }


def batch_delta(before: dict[int, tuple[float, float, float]],
                after: dict[int, tuple[float, float, float]]) -> dict[str, Any]:
    out = {}
    for v, (calls, rows, seconds) in after.items():
        c0, r0, s0 = before.get(v, (0.0, 0.0, 0.0))
        calls, rows, seconds = calls - c0, rows - r0, seconds - s0
        if calls > 0:
            out[f"v{v}"] = {
                "model_calls": int(calls),
                "rows": int(rows),
                "rows_per_call": rows / calls,
                "model_us_per_row": seconds / rows * 1e6 if rows else None,
            }
    return out


def run_wrk_users(roost: Target, script: Path, concurrency: int, duration_s: float,
                  body_file: Path, users: int) -> dict[str, Any]:
    """One wrk run with the varying-user script; CPU accounted as harness.run_wrk does."""
    assert roost.proc is not None
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s:g}s", "--latency",
            "-s", str(script), roost.url]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_USERS": str(users)}
    window = CpuWindow(roost.proc.pid)
    window.begin()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=duration_s + 60, check=False
    )
    window.end()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = parse_wrk(done.stdout)
    result.update(window.result(result.get("requests") or 1))
    result["errors"] = sum(result["socket_errors"].values())
    result["command"] = (f"BENCH_BODY_FILE=... BENCH_USERS={users} " + " ".join(argv))
    return result


def read_log(home: Path) -> Any:
    """The prediction log's rows (pyarrow table) with the columns this report needs."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(home / "logs" / "predictions", format="parquet", partitioning="hive")
    return dataset.to_table(
        columns=["ts", "version", "status", "route", "variant", "experiment", "shadow"]
    )


def attribute_rows(table: Any, runs: list[dict[str, Any]]) -> None:
    """Count each run's logged rows (by its wall-clock window, warm-up and drain included)."""
    import collections

    ts = [t.timestamp() for t in table["ts"].to_pylist()]
    cols = {c: table[c].to_pylist() for c in ("version", "status", "route", "variant", "shadow")}
    for run in runs:
        lo, hi = run["window"]
        counts: collections.Counter[str] = collections.Counter()
        for i, t in enumerate(ts):
            if not lo <= t < hi:
                continue
            if cols["shadow"][i]:
                key = f"shadow v{cols['version'][i]} status {cols['status'][i]}"
            else:
                key = (f"primary {cols['route'][i]} {cols['variant'][i]} v{cols['version'][i]}"
                       f" status {cols['status'][i]}")
            counts[key] += 1
        run["logged"] = dict(sorted(counts.items()))
        run["primary_rows"] = sum(v for k, v in counts.items() if k.startswith("primary"))
        run["shadow_rows"] = sum(v for k, v in counts.items() if k.startswith("shadow"))
        run["shadow_rows_ok"] = sum(
            v for k, v in counts.items() if k.startswith("shadow") and k.endswith("status 200")
        )


def measure_gateway(args: argparse.Namespace, home: Path, work: Path,
                    report: dict[str, Any]) -> None:
    log(f"materializing {MODEL} into {home} ...")
    model = materialize_model(home)
    model_path = work / "model.onnx"
    model_path.write_bytes(model)
    report["versions"], key = add_versions(home, model)
    body = BODY_FILE.read_bytes().strip()
    body_file = work / "body.json"
    body_file.write_bytes(body)
    script = work / "users.lua"
    script.write_text(LUA)

    [roost] = build_targets(home, model_path, ["roost"], 1)
    start(roost, work)
    try:
        wait_ready(roost)
        report["target"] = {"argv": roost.argv, "env": roost.env}
        runs: list[dict[str, Any]] = []
        order = [name for _ in range(args.rounds) for name in args.policies]
        for i, name in enumerate(order):
            window_start = time.time()
            drops0 = shadow_drops(roost)
            report.setdefault("policies_applied", {})[name] = set_policy(roost, name, key)
            wait_variant(roost, body, name)
            warm = run_wrk_users(roost, script, args.concurrency, args.warmup, body_file,
                                 args.users) if args.warmup > 0 else {"requests": 0}
            log(f"run {i + 1}/{len(order)}: {name} -c{args.concurrency} {args.duration:g}s ...")
            batches0 = batch_counters(roost, report["versions"])
            result = run_wrk_users(roost, script, args.concurrency, args.duration, body_file,
                                   args.users)
            time.sleep(args.drain)  # mirrored copies still queued are answered and logged
            result.update(
                policy=name,
                round=i // len(args.policies) + 1,
                batching=batch_delta(batches0, batch_counters(roost, report["versions"])),
                warmup_requests=warm.get("requests", 0),
                shadow_dropped=shadow_drops(roost) - drops0,
                window=(window_start, time.time()),
            )
            log(f"  {result['rps']:.0f} req/s, p50 {result['latency_ms'].get('p50', 0):.2f} ms,"
                f" dropped shadow copies {result['shadow_dropped']:.0f}")
            runs.append(result)
        report["runs"] = runs
    finally:
        stop(roost)
        report["server_log"] = scan_log(roost, args.out)
    attribute_rows(read_log(home), report["runs"])


# ------------------------------------------------------------------------------------------
# report


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in POLICIES:
        runs = [r for r in report.get("runs", []) if r["policy"] == name]
        if not runs:
            continue

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(float(r[key]) for r in runs)

        def lat(p: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(r["latency_ms"].get(p, float("nan")) for r in runs))

        out[name] = {
            "rps": med("rps"),
            "rps_each": [round(r["rps"]) for r in runs],
            "p50_ms": lat("p50"),
            "p99_ms": lat("p99"),
            "server_cpu_us_per_req": med("server_cpu_us_per_req"),
            "server_cpu_cores": med("server_cpu_cores"),
            "other_cpu_cores": med("other_cpu_cores"),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "sent": sum(r.get("requests", 0) + r["warmup_requests"] for r in runs),
            "primary_rows": sum(r.get("primary_rows", 0) for r in runs),
            "shadow_rows": sum(r.get("shadow_rows", 0) for r in runs),
            "shadow_rows_ok": sum(r.get("shadow_rows_ok", 0) for r in runs),
            "shadow_dropped": sum(r["shadow_dropped"] for r in runs),
            "batching": _merge_batching([r["batching"] for r in runs]),
        }
    return out


def _merge_batching(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, dict[str, float]] = {}
    for part in parts:
        for v, d in part.items():
            m = merged.setdefault(v, {"model_calls": 0, "rows": 0, "model_s": 0.0})
            m["model_calls"] += d["model_calls"]
            m["rows"] += d["rows"]
            m["model_s"] += (d["model_us_per_row"] or 0.0) * d["rows"] / 1e6
    return {
        v: {
            "model_calls": m["model_calls"],
            "rows": m["rows"],
            "rows_per_call": m["rows"] / m["model_calls"],
            "model_us_per_row": m["model_s"] / m["rows"] * 1e6 if m["rows"] else None,
        }
        for v, m in sorted(merged.items())
    }


def render(report: dict[str, Any]) -> str:
    lines = ["### Router decision, in-process (`ModelRouter.decide`, one call per request)", ""]
    router = report.get("router")
    if router:
        lines += [
            f"{router['rows'][0]['calls']:,} calls per policy, {report['settings']['users']:,} "
            f"distinct unit ids; timer overhead {router['timer_overhead_ns']:.0f} ns per call "
            "is included in median/p99, not in the loop mean.",
            "",
            "| policy | median µs | p99 µs | loop mean µs | decisions |",
            "|---|---:|---:|---:|---|",
        ]
        for row in router["rows"]:
            total = sum(row["decisions"].values())
            split = ", ".join(
                f"{k} {100 * v / total:.1f} %" for k, v in row["decisions"].items()
            )
            lines.append(
                f"| {row['policy']} | {row['median_us']:.2f} | {row['p99_us']:.2f} | "
                f"{row['loop_mean_us']:.2f} | {split} |"
            )
    summary = report.get("summary") or {}
    if summary:
        conc = report["settings"]["concurrency"]
        lines += [
            "",
            f"### Gateway: breast-cancer, REST JSON, wrk -c{conc}, "
            f"median of {report['settings']['rounds']} alternating runs",
            "",
            "| policy | req/s (each run) | p50 ms | p99 ms | server CPU µs/req | server cores "
            "| other load | non-2xx / errors | primary rows | shadow rows (200) | shadow dropped |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in summary.items():
            each = " / ".join(f"{v:,}" for v in s["rps_each"])
            lines.append(
                f"| {POLICY_TEXT[name]} | {s['rps']:,.0f} ({each}) | {s['p50_ms']:.2f} | "
                f"{s['p99_ms']:.2f} | {s['server_cpu_us_per_req']:.0f} | "
                f"{s['server_cpu_cores']:.2f} | {s['other_cpu_cores']:.2f} | "
                f"{s['non_2xx']} / {s['errors']} | {s['primary_rows']:,} | "
                f"{s['shadow_rows']:,} ({s['shadow_rows_ok']:,}) | {s['shadow_dropped']:,.0f} |"
            )
        if "plain" in summary and "traffic" in summary:
            p, t = summary["plain"], summary["traffic"]
            lines += [
                "",
                f"traffic / plain: req/s {t['rps'] / p['rps']:.2f}x, "
                f"server CPU per request {t['server_cpu_us_per_req'] / p['server_cpu_us_per_req']:.2f}x, "  # noqa: E501
                f"p99 {t['p99_ms'] / p['p99_ms']:.2f}x. Shadow rows per primary row in the "
                f"traffic runs: {t['shadow_rows'] / max(1, t['primary_rows']):.3f}; "
                f"copies dropped: {t['shadow_dropped']:,.0f} (shadow rows + dropped = "
                f"{t['shadow_rows'] + t['shadow_dropped']:,.0f}, primary rows "
                f"{t['primary_rows']:,}).",
                f"Primary rows logged / requests wrk counted (warm-ups included; the policy "
                f"probes are a few more rows): plain {p['primary_rows']:,} / {p['sent']:,}, "
                f"traffic {t['primary_rows']:,} / {t['sent']:,}.",
            ]
        lines += ["", "Model calls in the measured runs (from `/metrics`): " + "; ".join(
            f"{POLICY_TEXT[name]}: " + ", ".join(
                f"{v} {b['rows']:,} rows in {b['model_calls']:,} calls "
                f"({b['rows_per_call']:.1f} rows/call)"
                for v, b in s["batching"].items()
            )
            for name, s in summary.items()
        ) + "."]
        logged = [r.get("logged", {}) for r in report.get("runs", []) if r["policy"] == "traffic"]
        if logged:
            merged: dict[str, int] = {}
            for counts in logged:
                for k, v in counts.items():
                    merged[k] = merged.get(k, 0) + v
            lines += ["", "Logged rows in the traffic runs (warm-up included): " + "; ".join(
                f"{k}: {v:,}" for k, v in sorted(merged.items())
            ) + "."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds per measured run (whole seconds: wrk's -d)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of wrk after each policy change, not measured (0: none)")
    parser.add_argument("--rounds", type=int, default=2, help="plain/traffic pairs")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--policies", type=lambda text: [p for p in text.split(",") if p],
        default=["plain", "traffic"],
        help="policies alternated in each round, from: plain, experiment (the experiment "
        "without the shadow), traffic (default: plain,traffic)",
    )
    parser.add_argument("--users", type=int, default=10000, help="distinct roost-user ids")
    parser.add_argument("--calls", type=int, default=100000, help="router calls per policy")
    parser.add_argument("--drain", type=float, default=2,
                        help="seconds after each run for queued shadow copies")
    parser.add_argument("--skip-gateway", action="store_true", help="router timings only")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    parser.add_argument("--keep-home", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.policies) - set(POLICIES)
    if unknown:
        print(f"unknown policies: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if not args.skip_gateway and shutil.which("wrk") is None:
        print(WRK_MISSING, file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    started = time.monotonic()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "source": source_fingerprint(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    home = Path(tempfile.mkdtemp(prefix="roost-traffic-"))
    work = home / "bench"
    work.mkdir(parents=True)

    def interrupt(signum: int, frame: object) -> None:  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        log(f"timing ModelRouter.decide ({args.calls} calls per policy) ...")
        report["router"] = measure_router(args.calls, args.users)
        if not args.skip_gateway:
            measure_gateway(args, home, work, report)
            report["summary"] = summarize(report)
    finally:
        signal.signal(signal.SIGTERM, previous)
        report["machine"]["loadavg_end"] = loadavg()
        report["wall_seconds"] = time.monotonic() - started
        if args.keep_home:
            log(f"kept ROOST_HOME at {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    table = render(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    for run in report.get("runs", []):
        run.pop("raw", None)
    (args.out / "traffic.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "traffic.md").write_text(table + "\n")
    log(f"\nwrote {args.out / 'traffic.json'} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as run.py: skip duckdb's leak warnings at interpreter teardown
