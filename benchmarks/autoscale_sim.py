"""Autoscaling simulation: serving.autoscaler's HPA decisions over a synthetic 10x burst.

A fluid model, one step per second: requests arrive at the trace's rate; ready gateway pods
serve ``CAPACITY`` req/s each; what they cannot serve waits (up to ``max_queue_size`` per pod,
beyond that it is refused 503, as the gateway does). p99 of a second = the measured p99 at
saturation plus the backlog's wait (backlog / capacity). Every 15 s (KEDA's polling interval)
the autoscaler sees the queue depth, and the p99 and answered req/s of the last minute (the
ScaledObject's ``rate(...[1m])``), and sets the replica count; new pods are ready
``STARTUP_S`` later.

Compared against a fixed fleet sized for the peak at the same 70 % utilization the autoscaler's
queue target implies. Prints a markdown table (for benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/autoscale_sim.py
"""

from __future__ import annotations

import argparse
import math
import random
from collections import deque
from dataclasses import dataclass

from serving.autoscaler import GATEWAY_POLICY, Autoscaler, Sample, ScalingPolicy

# benchmarks/RESULTS.md section 1, "roost · REST JSON | 1 | 64": 7,804 req/s, p99 18.95 ms;
# section 3: the experiment plus a 100 % shadow cost 0.76x req/s -> 5,930 req/s per pod.
CAPACITY = 7804 * 0.76
SATURATED_P99_S = 0.01895
STARTUP_S = 30  # pod scheduled, image cached, models loaded and warmed (requirements: <30 s hot)
MAX_QUEUE = 1024  # ServingConfig.max_queue_size default, per pod
BASELINE = 5800.0  # the requirements' peak QPS becomes the baseline ...
BURST = 10  # ... and the burst is 10x (the enterprise milestone's 50,000+ QPS)


@dataclass
class Result:
    name: str
    replica_seconds: float
    peak_replicas: int
    p99_s: float
    seconds_over_target: int
    refused: float
    served: float


def trace(ramp_s: int, seed: int = 7) -> list[float]:
    """10 min baseline, ramp to 10x over ``ramp_s``, 5 min at 10x, ramp back, 10 min baseline."""
    rng = random.Random(seed)
    rates: list[float] = []
    peak = BASELINE * BURST

    def add(seconds: int, start: float, end: float) -> None:
        for i in range(seconds):
            level = start + (end - start) * (i + 1) / seconds
            rates.append(level * rng.uniform(0.95, 1.05))

    add(600, BASELINE, BASELINE)
    add(max(ramp_s, 1), BASELINE, peak)
    add(300, peak, peak)
    add(max(ramp_s, 1), peak, BASELINE)
    add(600, BASELINE, BASELINE)
    return rates


def weighted_quantile(values: list[float], weights: list[float], q: float) -> float:
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(weights)
    seen = 0.0
    for value, weight in pairs:
        seen += weight
        if seen >= q * total:
            return value
    return pairs[-1][0]


def simulate(name: str, rates: list[float], policy: ScalingPolicy | None) -> Result:
    fixed = math.ceil(max(rates) / (CAPACITY * 0.7))
    scaler = Autoscaler(policy) if policy is not None else None
    ready = scaler.replicas if scaler else fixed
    starting: deque[tuple[int, int]] = deque()  # (ready at t, pods)
    backlog = refused = served = replica_seconds = 0.0
    p99s: list[float] = []
    window: deque[float] = deque(maxlen=60)
    rate_window: deque[float] = deque(maxlen=60)
    peak = ready
    for t, rate in enumerate(rates):
        while starting and starting[0][0] <= t:
            ready += starting.popleft()[1]
        capacity = ready * CAPACITY
        backlog += rate
        done = min(backlog, capacity)
        backlog -= done
        served += done
        overflow = max(0.0, backlog - ready * MAX_QUEUE)
        refused += overflow
        backlog -= overflow
        p99 = SATURATED_P99_S + backlog / capacity
        p99s.append(p99)
        window.append(p99)
        rate_window.append(done)
        pending = sum(n for _, n in starting)
        replica_seconds += ready + pending
        if scaler and t % GATEWAY_POLICY.period_s == 0:
            scaler.replicas = ready + pending
            want = scaler.decide(
                Sample(
                    float(t),
                    queue_depth=backlog,
                    p99_s=max(window),
                    rps=sum(rate_window) / len(rate_window),
                )
            )
            if want > ready + pending:
                starting.append((t + STARTUP_S, want - ready - pending))
            elif want < ready + pending:
                drop = ready + pending - want
                while drop and starting:  # cancel pods still starting first
                    at, n = starting.pop()
                    if n > drop:
                        starting.append((at, n - drop))
                        drop = 0
                    else:
                        drop -= n
                ready -= drop
        peak = max(peak, ready + sum(n for _, n in starting))
    target = GATEWAY_POLICY.target_p99_s or 0.05
    return Result(
        name=name,
        replica_seconds=replica_seconds,
        peak_replicas=peak,
        p99_s=weighted_quantile(p99s, rates, 0.99),
        seconds_over_target=sum(1 for p in p99s if p > 2 * target),
        refused=refused,
        served=served,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ramps", default="300,60,1", help="ramp durations to simulate, s")
    args = parser.parse_args()
    print(
        "| trace (ramp to 10x) | fleet | replica-seconds | vs fixed | peak pods | p99 (all "
        "requests) | seconds with p99 > 100 ms | refused (503) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for ramp in (int(r) for r in args.ramps.split(",")):
        rates = trace(ramp)
        fixed = simulate("fixed for the peak", rates, None)
        scaled = simulate("autoscaled", rates, GATEWAY_POLICY)
        for r in (fixed, scaled):
            print(
                f"| {ramp} s | {r.name} | {r.replica_seconds:,.0f} | "
                f"{r.replica_seconds / fixed.replica_seconds:.2f}x | {r.peak_replicas} | "
                f"{r.p99_s * 1000:.1f} ms | {r.seconds_over_target} | "
                f"{r.refused / (r.refused + r.served):.2%} |"
            )


if __name__ == "__main__":
    main()
