"""A 10x open-loop burst against a small queue with a 100 ms deadline, per admission limit.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/shed_burst.py \\
        [--max-inflight 0,128] [--rate 0] [--factor 10] [--duration 10] [--connections 1000]
        [--trace] [--env ROOST_LOG_DURABILITY=write]

For each value of ``--max-inflight`` (``ROOST_MAX_INFLIGHT_REQUESTS``; 0: no limit) a fresh
``roost serve`` (as shipped: durable log, metrics, gRPC on) serves ``ok``, a linear softmax on
the breast-cancer body (``benchmarks/body.json``, 30 FP32), with ``max_queue_size: 64`` and
``queue_timeout_ms: 100`` (the knobs of ``run.py burst``'s small-queue run). The sustainable
rate is measured first on the first server (wrk, concurrency 64, 5 s) unless ``--rate`` is
given; ``burst_load.py`` then offers ``--factor`` times it for ``--duration`` seconds over up to
``--connections`` keep-alive connections (harness.run_burst: RSS sampled every 50 ms). Prints
one line per variant: answers by status, the 200s' p99 from send and from schedule, the 503s'
p99, the server's CPU per answer, RSS idle -> max (and max in the burst's second half).

Run it against another checkout with ``PYTHONPATH=/path/to/checkout`` (``--max-inflight 0``:
older code has no such setting).

``--trace`` runs the gateway under plain uvicorn with ``shed_trace.TracingProtocol`` (the same
protocol, plus timing) and adds, per status, where the server's time went: headers read ->
ASGI task ran -> answer started -> answer written, and the event loop's lateness (its turn
length); see shed_trace.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    BODY_FILE,
    http,
    log,
    roost_target,
    run_burst,
    run_wrk,
    start,
    stop,
    wait_ready,
)
from roost_testing import deploy_model, make_linear_onnx

KNOBS = {"max_queue_size": 64, "queue_timeout_ms": 100}


def prepare(home: Path) -> None:
    from registry import Registry, RoostSettings

    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "ok", make_linear_onnx(n_features=30), config=KNOBS)
    registry.close()


def summary(limit: int, result: dict[str, Any]) -> dict[str, Any]:
    sent = result["latency_from_send_ms"]
    scheduled = result["latency_from_schedule_ms"]
    rss = result["rss"]
    return {
        "max_inflight_requests": limit,
        "offered_rps": result["offered_rps"],
        "sent_rps": round(result["sent_rps"]),
        "statuses": result["statuses"],
        "socket_errors": result["socket_errors"],
        "no_answer": result["no_answer"],
        "p99_200_from_send_ms": sent.get("200", {}).get("p99"),
        "p50_200_from_send_ms": sent.get("200", {}).get("p50"),
        "p99_200_from_schedule_ms": scheduled.get("200", {}).get("p99"),
        "p99_503_from_send_ms": sent.get("503", {}).get("p99"),
        "server_cpu_us_per_answer": result["server_cpu_us_per_req"],
        "rss_idle_mib": rss["idle_mib"],
        "rss_max_burst_mib": rss["max_burst_mib"],
        "rss_max_second_half_mib": rss["max_second_half_mib"],
        "client_cpu_cores": result["client_cpu_cores"],
        "command": result["command"],
    }


def traced(target: Any, out: Path) -> None:
    """Run ``target`` under plain uvicorn with the timing protocol of shed_trace.py."""
    target.argv = [
        sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app_from_env",
        "--host", "127.0.0.1", "--port", str(target.port), "--log-level", "warning",
        "--no-access-log", "--http", "shed_trace:TracingProtocol",
    ]
    paths = [str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    target.env.update({"PYTHONPATH": os.pathsep.join(paths), "ROOST_TRACE_OUT": str(out)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-inflight", default="0,128",
                        type=lambda s: [int(v) for v in s.split(",") if v])
    parser.add_argument("--rate", type=float, default=0.0, help="offered req/s (0: measure)")
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--drain", type=float, default=30.0)
    parser.add_argument("--trace", action="store_true", help="time the server's stages")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the gateway, e.g. ROOST_LOG_DURABILITY=write")
    parser.add_argument("--out", type=Path, default=Path("/tmp/shed-burst.json"))
    args = parser.parse_args(argv)
    body = BODY_FILE.read_bytes().strip()
    rate = args.rate
    rows = []
    for limit in args.max_inflight:
        with tempfile.TemporaryDirectory(prefix="shed-burst-") as tmp:
            home = Path(tmp) / "home"
            prepare(home)
            env = {"ROOST_MAX_INFLIGHT_REQUESTS": str(limit)}  # 0: off (older code: ignored)
            env.update(pair.split("=", 1) for pair in args.env)
            target = roost_target(home, env=env)
            trace = Path(tmp) / "trace.json"
            if args.trace:
                traced(target, trace)
            start(target, Path(tmp))
            try:
                wait_ready(target)
                assert http("POST", target.infer_url("ok"), body)[0] == 200
                if not rate:
                    run_wrk(target, 64, 2, BODY_FILE, url=target.infer_url("ok"))  # warm-up
                    sustained = run_wrk(target, 64, 5, BODY_FILE, url=target.infer_url("ok"))
                    rate = args.factor * sustained["rps"]
                    log(f"sustained {sustained['rps']:,.0f} req/s at c=64; offering {rate:,.0f}")
                time.sleep(1)
                result = run_burst(
                    target, target.infer_url("ok"), BODY_FILE, rate, args.duration,
                    args.connections, args.drain, f"shed-{limit}",
                )
            finally:
                stop(target)
            server_trace = json.loads(trace.read_text()) if trace.exists() else None
        row = summary(limit, result)
        if args.trace:
            row["server_trace"] = server_trace
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
