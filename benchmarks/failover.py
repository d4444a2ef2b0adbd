"""Failover: two gateways, a client that retries on the other, one gateway SIGKILLed under load.

    .venv/bin/python benchmarks/failover.py [--concurrency 8] [--before 4] [--after 12]
                                            [--restart-after 4] [--repeat 3]

One run, on this machine:

1. deploys a small linear ONNX model (``m``, 4 features) into a temporary ROOST_HOME;
2. starts two ``python -m orchestration serve`` processes on that same home (each its own
   prediction-log writer), on different ports, and waits until both are ready;
3. runs ``--concurrency`` client threads (httpx, keep-alive) for ``--before`` seconds. Each
   request carries a unique OIP ``id``. The client spreads requests round-robin over the two
   gateways and retries a request on the other gateway on a connection error or a 503 (at most
   ``--attempts`` tries, the third after 50 ms); a gateway that refused a connection is skipped
   for ``--eject`` seconds (then tried again by live traffic, as a load balancer's passive
   health check would);
4. SIGKILLs one gateway (its whole process group) and keeps the load on for ``--after``
   seconds; ``--restart-after`` seconds after the kill the dead gateway is started again on its
   port (as a supervisor would; it also recovers the dead process's write-ahead log); negative:
   never;
5. stops both with SIGTERM and reads both gateways' prediction logs (DuckDB over the Parquet
   files) to check that every acknowledged request id was logged;
6. prints a markdown table and writes ``<out>/failover.json`` and ``<out>/failover.md``.

Figures (client view, each request = its final outcome after retries):

- success rate with retry: requests answered 200 / requests sent;
- first-try success rate: what a client without retry would have seen;
- outage: from the kill to the end of the last request that finally failed (0: none failed),
  i.e. the time until all traffic is served again;
- longest gap: the longest time after the kill without any request completing with 200;
- affected window: from the kill to the last request that needed a retry (with the gateway
  restarted, until the replacement's first answer ends the ejections);
- capacity back: from the kill until the restarted gateway answered its first request.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))

from gateway_process import GatewayProcess  # noqa: E402  (tests/support: one way to start one)

MODEL = "m"
ROW = [0.5, -1.0, 2.0, 0.25]


# -- the gateways ------------------------------------------------------------------------------


class Gateway(GatewayProcess):
    """A ``python -m orchestration serve`` process; can be killed and started again."""

    def __init__(self, name: str, home: Path, logs: Path, **env: str) -> None:
        super().__init__(
            home,
            env={"ROOST_LOG_FLUSH_INTERVAL_S": "0.5", **env},
            grpc=False,
            log_path=logs / f"failover-{name}.log",
            name=f"gateway {name}",
        )

    def stop(self, timeout_s: float = 60, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM: drain, seal the prediction log, exit 0."""
        return super().stop(timeout_s, sig)


def deploy(home: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
    from roost_testing import deploy_model, make_linear_onnx

    from registry import Registry, RoostSettings

    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        deploy_model(registry, MODEL, make_linear_onnx(seed=3))
    finally:
        registry.close()


# -- the client --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request, after its retries."""

    id: str
    sent: float  # monotonic
    done: float
    status: int  # 0: no answer (connection error on every try)
    attempts: int  # tries made
    served_by: int | None  # gateway index that answered last
    errors: list[str] = field(default_factory=list)  # why earlier tries failed


class RetryingClient:
    """Round-robin over the gateways; a connection error or 503 is retried on the next one.

    A gateway that refused or dropped a connection is skipped for ``eject_s`` seconds; when
    every gateway is skipped, the one whose skip ends first is tried anyway.
    """

    def __init__(self, urls: list[str], attempts: int = 3, eject_s: float = 1.0) -> None:
        self.urls = urls
        self.attempts = attempts
        self.eject_s = eject_s
        self.skip_until = [0.0] * len(urls)
        self._turn = itertools.count()

    def _order(self) -> list[int]:
        start = next(self._turn) % len(self.urls)
        order = [(start + k) % len(self.urls) for k in range(len(self.urls))]
        now = time.monotonic()
        healthy = [i for i in order if self.skip_until[i] <= now]
        ejected = sorted(
            (i for i in order if self.skip_until[i] > now), key=self.skip_until.__getitem__
        )
        return healthy + ejected

    def infer(self, client: Any, request_id: str) -> Outcome:
        import httpx

        body = {
            "id": request_id,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}],
        }
        sent = time.monotonic()
        order = self._order()
        errors: list[str] = []
        status, served_by, tries = 0, None, 0
        for attempt in range(self.attempts):
            tries = attempt + 1
            index = order[attempt % len(order)]
            if attempt >= len(order):
                time.sleep(0.05)
            try:
                resp = client.post(f"{self.urls[index]}/v2/models/{MODEL}/infer", json=body)
            except httpx.TransportError as exc:
                self.skip_until[index] = time.monotonic() + self.eject_s
                errors.append(f"{index}:{type(exc).__name__}")
                status = 0
                continue
            status, served_by = resp.status_code, index
            if status == 503:
                errors.append(f"{index}:503")
                continue
            if status == 200 and resp.json().get("id") != request_id:
                status = -1  # a wrong answer: counted as a failure
            break
        return Outcome(
            request_id, sent, time.monotonic(), status, tries, served_by, errors
        )


def load(
    client: RetryingClient, tag: str, stop: threading.Event, outcomes: list[Outcome],
    lock: threading.Lock,
) -> None:
    import httpx

    limits = httpx.Limits(max_keepalive_connections=4)
    with httpx.Client(timeout=10, limits=limits) as http:
        for i in itertools.count():
            if stop.is_set():
                return
            outcome = client.infer(http, f"{tag}-{i}")
            with lock:
                outcomes.append(outcome)


# -- one run -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    requests: int
    ok: int
    first_try_ok: int
    retried: int
    failed: int
    failures: dict[str, int]
    retry_reasons: dict[str, int]
    success_rate: float
    first_try_success_rate: float
    outage_s: float
    longest_gap_s: float
    affected_window_s: float
    capacity_back_s: float | None
    rps_before: float
    rps_after: float
    p50_ms: float
    p99_ms: float
    p99_retried_ms: float | None
    max_ms: float
    acknowledged: int
    logged_acknowledged: int
    lost: int
    logged_twice: int
    exit_codes: list[int | None]
    in_flight_at_kill: int
    timeline: list[dict[str, Any]] = field(default_factory=list, repr=False)
    lost_ids: list[str] = field(default_factory=list, repr=False)
    acknowledged_ids: list[str] = field(default_factory=list, repr=False)


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_failover(
    home: Path,
    logs: Path,
    *,
    concurrency: int = 8,
    before_s: float = 4.0,
    after_s: float = 12.0,
    restart_after_s: float = 4.0,
    attempts: int = 3,
    eject_s: float = 1.0,
    tag: str = "fo",
    victim: int = 0,
) -> RunResult:
    """Two gateways on ``home`` (a model already deployed), one killed under load; see the
    module docstring. Both gateways are stopped (SIGTERM) before the logs are read."""
    from warehouse import run_query

    gateways = [Gateway("a", home, logs), Gateway("b", home, logs)]
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    exit_codes: list[int | None] = []
    capacity_back: float | None = None
    try:
        for gateway in gateways:
            gateway.start()
        for gateway in gateways:
            gateway.wait_ready()
        client = RetryingClient([g.url for g in gateways], attempts=attempts, eject_s=eject_s)
        threads = [
            threading.Thread(target=load, args=(client, f"{tag}-c{c}", stop, outcomes, lock))
            for c in range(concurrency)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(before_s)
        killed_at = time.monotonic()
        gateways[victim].kill()
        if 0 <= restart_after_s < after_s:
            time.sleep(restart_after_s)
            gateways[victim].start()
            gateways[victim].wait_ready()
            # the replacement gets live traffic for a while however slowly it came back (a busy
            # machine: ready after the window closed would leave capacity_back unmeasured)
            time.sleep(max(eject_s + 2.0, killed_at + after_s - time.monotonic()))
        else:
            time.sleep(after_s)
        stop.set()
        for thread in threads:
            thread.join(30)
        ended = time.monotonic()
    finally:
        stop.set()
        for gateway in gateways:
            exit_codes.append(gateway.stop())

    ok = [o for o in outcomes if o.status == 200]
    failed = [o for o in outcomes if o.status != 200]
    retried = [o for o in outcomes if o.errors]  # a try failed (retried, if tries were left)
    after_kill = [o for o in outcomes if o.done >= killed_at]
    if restart_after_s >= 0:
        replacement = [
            o.done for o in ok if o.served_by == victim and o.sent >= killed_at + restart_after_s
        ]
        capacity_back = min(replacement) - killed_at if replacement else None
    successes = sorted([killed_at] + [o.done for o in after_kill if o.status == 200] + [ended])
    longest_gap = max(b - a for a, b in itertools.pairwise(successes))
    outage = max((o.done - killed_at for o in failed if o.done >= killed_at), default=0.0)
    affected = max((o.done - killed_at for o in retried if o.done >= killed_at), default=0.0)
    latencies = [(o.done - o.sent) * 1000 for o in ok]
    retried_latencies = [(o.done - o.sent) * 1000 for o in retried if o.status == 200]
    warm = [o for o in ok if started + 1.0 <= o.done < killed_at]
    later = [o for o in ok if o.done >= killed_at]
    timeline = []
    bucket = 0.25
    for k in range(int((ended - started) / bucket) + 1):
        lo = started + k * bucket
        window = [o for o in outcomes if lo <= o.done < lo + bucket]
        timeline.append(
            {
                "t_s": round(lo - killed_at, 2),
                "ok": sum(o.status == 200 for o in window),
                "failed": sum(o.status != 200 for o in window),
                "retried": sum(bool(o.errors) for o in window),
            }
        )

    acknowledged = [o.id for o in ok]
    found: dict[str, int] = {}
    if acknowledged:
        _, rows = run_query(
            logs_dir(home),
            "select request_id, count(*) from predictions "
            f"where request_id like '{tag}-%' and status = 200 group by request_id",
        )
        found = {request_id: int(n) for request_id, n in rows}
    lost = [i for i in acknowledged if i not in found]
    return RunResult(
        requests=len(outcomes),
        ok=len(ok),
        first_try_ok=sum(o.attempts == 1 and o.status == 200 for o in outcomes),
        retried=len(retried),
        failed=len(failed),
        failures=_count(f"status {o.status}" for o in failed),
        retry_reasons=_count(
            f"gateway {'killed' if e.split(':')[0] == str(victim) else 'other'}: "
            f"{e.split(':', 1)[1]}"
            for o in retried for e in o.errors
        ),
        success_rate=len(ok) / len(outcomes) if outcomes else 0.0,
        first_try_success_rate=(
            sum(o.attempts == 1 and o.status == 200 for o in outcomes) / len(outcomes)
            if outcomes else 0.0
        ),
        outage_s=outage,
        longest_gap_s=longest_gap,
        affected_window_s=affected,
        capacity_back_s=capacity_back,
        rps_before=len(warm) / max(1e-9, killed_at - started - 1.0),
        rps_after=len(later) / max(1e-9, ended - killed_at),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        p99_retried_ms=_percentile(retried_latencies, 99) if retried_latencies else None,
        max_ms=max(latencies, default=float("nan")),
        acknowledged=len(acknowledged),
        logged_acknowledged=len(acknowledged) - len(lost),
        lost=len(lost),
        logged_twice=sum(n > 1 for n in found.values()),
        exit_codes=exit_codes,
        in_flight_at_kill=sum(o.sent < killed_at <= o.done for o in outcomes),
        timeline=timeline,
        lost_ids=lost[:20],
        acknowledged_ids=acknowledged,
    )


def logs_dir(home: Path) -> Path:
    return home / "logs"


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


# -- report ------------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    runs: list[dict[str, Any]] = report["runs"]
    s = report["settings"]
    lines = [
        f"Failover, {report['started']} on {report['machine']}: two `roost serve` processes on "
        f"one ROOST_HOME, {s['concurrency']} client threads (round-robin, retry on the other "
        f"gateway on connection error or 503, at most {s['attempts']} tries, a refusing gateway "
        f"skipped {s['eject_s']:g} s); SIGKILL one after {s['before_s']:g} s, "
        + (
            f"restart it {s['restart_after_s']:g} s later"
            if 0 <= s["restart_after_s"] < s["after_s"] else "never restart it"
        )
        + f", {s['after_s']:g} s of load after the kill.",
        "",
        "| run | requests | success (retry) | first-try success | first try failed | failed | "
        "outage s | "
        "longest gap s | affected window s | capacity back s | req/s before / after | "
        "p99 ms (retried) | acknowledged lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        back = "-" if r["capacity_back_s"] is None else f"{r['capacity_back_s']:.2f}"
        retried_p99 = "-" if r["p99_retried_ms"] is None else f"{r['p99_retried_ms']:.1f}"
        lines.append(
            f"| {i} | {r['requests']:,} | {r['success_rate']:.4%} | "
            f"{r['first_try_success_rate']:.4%} | {r['retried']} | {r['failed']} | "
            f"{r['outage_s']:.2f} | {r['longest_gap_s']:.3f} | {r['affected_window_s']:.2f} | "
            f"{back} | {r['rps_before']:.0f} / {r['rps_after']:.0f} | "
            f"{r['p99_ms']:.1f} ({retried_p99}) | {r['lost']} of {r['acknowledged']:,} |"
        )
    rates = [r["success_rate"] for r in runs]
    lines += [
        "",
        f"- success rate with retry: min {min(rates):.4%} over {len(runs)} runs "
        "(target >= 99.9%)",
        f"- outage (kill -> last finally failed request): max "
        f"{max(r['outage_s'] for r in runs):.2f} s (target < 30 s)",
        f"- requests logged twice (retried after the dead gateway had logged them, at-least-once):"
        f" {[r['logged_twice'] for r in runs]}",
        f"- exit status after SIGTERM: {[r['exit_codes'] for r in runs]}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--before", type=float, default=4.0, help="seconds of load before")
    parser.add_argument("--after", type=float, default=12.0, help="seconds of load after")
    parser.add_argument(
        "--restart-after", type=float, default=4.0,
        help="seconds after the kill to restart the dead gateway (negative: never)",
    )
    parser.add_argument("--attempts", type=int, default=3, help="tries per request")
    parser.add_argument(
        "--eject", type=float, default=1.0, help="seconds a refusing gateway is skipped"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs (the victim alternates)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="output directory")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH_DIR))
    import harness as bench

    machine = bench.machine_info()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{machine['usable_cpus']} CPUs ({machine['cpu_model']})",
        "machine_info": machine,
        "settings": {
            "concurrency": args.concurrency,
            "before_s": args.before,
            "after_s": args.after,
            "restart_after_s": args.restart_after,
            "attempts": args.attempts,
            "eject_s": args.eject,
        },
        "runs": [],
    }
    for run in range(args.repeat):
        base = Path(tempfile.mkdtemp(prefix="roost-failover-"))
        try:
            home = base / "home"
            deploy(home)
            print(f"run {run + 1}/{args.repeat} ...", file=sys.stderr)
            result = run_failover(
                home, base,
                concurrency=args.concurrency, before_s=args.before, after_s=args.after,
                restart_after_s=args.restart_after, attempts=args.attempts, eject_s=args.eject,
                tag=f"fo{run}", victim=run % 2,
            )
            report["runs"].append(asdict(result) | {"acknowledged_ids": None})
            print(
                f"  success {result.success_rate:.4%}, outage {result.outage_s:.2f} s, "
                f"lost {result.lost}", file=sys.stderr,
            )
        finally:
            kept = args.out / "logs"
            kept.mkdir(parents=True, exist_ok=True)
            for log in base.glob("failover-*.log"):
                shutil.copy(log, kept / f"run{run + 1}-{log.name}")
            shutil.rmtree(base, ignore_errors=True)
    table = render(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "failover.md").write_text(table + "\n")
    ok = all(
        r["success_rate"] >= 0.999 and r["outage_s"] < 30 and r["lost"] == 0
        for r in report["runs"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
