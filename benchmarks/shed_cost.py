"""Server CPU per refused request against per served request, side by side on one gateway.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/shed_cost.py [--duration 5]
        [--concurrency 64] [--rounds 2] [--before CHECKOUT] [--plain-httptools] [--out FILE]

One ``roost serve`` (as shipped: durable log, metrics, gRPC on) over a fresh ROOST_HOME with two
models taking the breast-cancer body (``benchmarks/body.json``, 30 FP32): ``ok``, a linear
softmax that answers 200, and ``bad``, a model every run of which fails, its circuit breaker
tripped before measuring (``breaker_failures: 1``, ``breaker_reset_ms`` of an hour), so every
request for it is refused 503 ``circuit breaker open``. wrk (``post.lua``, one thread) then
loads ``ok`` and ``bad`` in turn, ``--rounds`` times, interleaved; each run reports the server
process's CPU time per request (utime + stime from /proc, all threads). The refusal is what a
full queue costs too: both are decided by the same check (serving/shedding.py).

``--plain-httptools`` adds this checkout under plain uvicorn with its own httptools protocol
(``roost serve`` uses serving/http_protocol.py's), where the ASGI edge refuses: the protocol's
share, measured alongside. ``--before CHECKOUT`` runs a second gateway from another checkout
(e.g. ``git worktree add /tmp/before HEAD~3``; started with ``PYTHONPATH=CHECKOUT``) alongside,
and interleaves its runs with this checkout's, so the two are compared in one sitting. Run the
whole script against another checkout with ``PYTHONPATH=/path/to/checkout``: the registry
writes and the server come from there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BODY_FILE, http, log, roost_target, run_wrk, start, stop, wait_ready
from roost_testing import deploy_model, make_failing_onnx, make_linear_onnx

PLAIN = "this checkout, uvicorn --http httptools"
FAILING = {"warmup_runs": 0, "breaker_failures": 1, "breaker_reset_ms": 3_600_000}


def prepare(home: Path) -> None:
    from registry import Registry, RoostSettings

    registry = Registry.from_settings(RoostSettings(home=home))
    deploy_model(registry, "ok", make_linear_onnx(n_features=30))
    deploy_model(registry, "bad", make_failing_onnx(n_features=30), config=FAILING)
    registry.close()


def trip(url: str, body: bytes) -> str:
    """Fail ``bad`` until its breaker answers; the refusal's message."""
    for _ in range(20):
        status, _, answer = http("POST", url, body)
        if status == 503:
            return str(json.loads(answer)["error"])
        time.sleep(0.05)
    raise SystemExit(f"the breaker of {url} never opened")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout to measure alongside (PYTHONPATH)")
    parser.add_argument("--plain-httptools", action="store_true",
                        help="also this checkout under uvicorn's own httptools protocol (the "
                        "ASGI edge refuses), alongside")
    parser.add_argument("--out", type=Path, default=Path("/tmp/shed-cost.json"))
    args = parser.parse_args(argv)
    body = BODY_FILE.read_bytes().strip()
    variants: list[tuple[str, dict[str, str]]] = [("this checkout", {})]
    if args.before is not None:
        variants.append((f"before ({args.before})", {"PYTHONPATH": str(args.before.resolve())}))
    if args.plain_httptools:
        variants.append((PLAIN, {}))
    with tempfile.TemporaryDirectory(prefix="shed-cost-") as tmp:
        targets = []
        for n, (_name, env) in enumerate(variants):
            home = Path(tmp) / f"home{n}"
            prepare(home)
            target = roost_target(home, name=f"v{n}", env=env)
            if _name == PLAIN:
                target.argv = [
                    sys.executable, "-m", "uvicorn", "--factory", "serving.app:create_app_from_env",
                    "--host", "127.0.0.1", "--port", str(target.port), "--log-level", "warning",
                    "--no-access-log", "--http", "httptools",
                ]
            start(target, Path(tmp))
            targets.append(target)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            name: {"served": [], "refused": []} for name, _ in variants
        }
        refusal = ""
        try:
            for target in targets:
                wait_ready(target)
                assert http("POST", target.infer_url("ok"), body)[0] == 200
                refusal = trip(target.infer_url("bad"), body)
                log(f"{target.name} bad: {refusal}")
            for n in range(args.rounds):
                for (name, _), target in zip(variants, targets, strict=True):
                    for kind, model in (("served", "ok"), ("refused", "bad")):
                        row = run_wrk(
                            target, args.concurrency, args.duration, BODY_FILE,
                            url=target.infer_url(model),
                        )
                        runs[name][kind].append(row)
                        log(
                            f"round {n + 1} {name} {kind}: {row['rps']:,.0f} req/s, "
                            f"{row['server_cpu_us_per_req']:.1f} us CPU/req, non-2xx "
                            f"{row['non_2xx']}"
                        )
        finally:
            for target in targets:
                stop(target)
    results = []
    for name, _ in variants:
        served = statistics.median(r["server_cpu_us_per_req"] for r in runs[name]["served"])
        refused = statistics.median(r["server_cpu_us_per_req"] for r in runs[name]["refused"])
        results.append({
            "code": name,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "refusal": refusal,
            "served_cpu_us_per_req": served,
            "refused_cpu_us_per_req": refused,
            "ratio": refused / served,
            "served_rps": [round(r["rps"]) for r in runs[name]["served"]],
            "refused_rps": [round(r["rps"]) for r in runs[name]["refused"]],
            "runs": runs[name],
        })
        print(json.dumps({k: v for k, v in results[-1].items() if k != "runs"}), flush=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
