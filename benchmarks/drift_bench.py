"""Data drift figures for benchmarks/RESULTS.md: false positives, detection, and the daily job's
time and memory at 1 M logged rows.

    .venv/bin/python benchmarks/drift_bench.py [--seeds 20] [--rows 2000] [--big-rows 1000000]

1. **False-positive rate**: for each seed, a day of clean traffic (``rows`` rows sampled from
   ``generate_fraud_transactions(seed=1000 + s)``, the reference's parameters but another seed)
   against the fraud model's reference (the default seed-7 training data), with
   :func:`monitoring.drift.compare` (Evidently's default per-feature tests, model drifted at a
   share of :data:`~monitoring.drift.DRIFT_SHARE`).
2. **Detection rate**: the same with the generator's ``drift`` knob at 0.1, 0.25, 0.5 and 1.
3. **The job at 1 M rows**: one day of 1 M single-row requests written in the gateway's log
   format (:mod:`monitoring.simulate`), then :func:`monitoring.drift.run_drift` (reading, the
   Evidently report, the HTML and the scores) timed in a fresh child process whose peak RSS is
   read with ``resource.getrusage(RUSAGE_CHILDREN)``, with the default 250 k-row cap and with
   no cap.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assets.demo import DEMO_SPECS  # noqa: E402
from assets.demo_data import FRAUD_FEATURES, generate_fraud_transactions  # noqa: E402
from monitoring.drift import DRIFT_SHARE, compare, reference_frame, run_drift  # noqa: E402

FRAUD = next(s for s in DEMO_SPECS if s.name == "fraud")
DAY = date(2026, 3, 1)
KNOBS = (0.0, 0.1, 0.25, 0.5, 1.0)


def rates(seeds: int, rows: int) -> None:
    reference = reference_frame(FRAUD, FRAUD_FEATURES)
    print(f"reference: {len(reference)} rows; current: {rows} rows; {seeds} seeds; "
          f"model drifted at share >= {DRIFT_SHARE}")
    print("| drift knob | days flagged | rate | mean share drifted | features flagged (count) |")
    print("|---|---|---|---|---|")
    for knob in KNOBS:
        flagged, shares = 0, []
        counts: dict[str, int] = {}
        for s in range(seeds):
            frame = generate_fraud_transactions(seed=1000 + s, drift=knob).frame
            current = frame[FRAUD_FEATURES].sample(rows, random_state=s)
            features, share = compare(reference, current)
            flagged += share >= DRIFT_SHARE
            shares.append(share)
            for f in features:
                counts[f.feature] = counts.get(f.feature, 0) + f.drifted
        named = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"
        print(f"| {knob} | {flagged}/{seeds} | {flagged / seeds:.2f} | {np.mean(shares):.3f} | "
              f"{named} |", flush=True)


def job(logs: str, max_rows: int) -> None:
    """The child process: one drift run, its time on stdout."""
    started = time.perf_counter()
    result = run_drift(Path(logs), FRAUD, DAY, FRAUD_FEATURES, max_rows=max_rows)
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.1f} {result.logged_rows} {result.current_rows} {result.drifted}")


def big(rows: int) -> None:
    from monitoring.simulate import write_prediction_log

    with tempfile.TemporaryDirectory() as tmp:
        frames, total = [], 0
        seed = 2000
        while total < rows:
            frame = generate_fraud_transactions(seed=seed)  # the reference's parameters
            frames.append(frame.frame[FRAUD_FEATURES].to_numpy())
            total += len(frame.frame)
            seed += 1
        X = np.concatenate(frames)[:rows]
        started = time.perf_counter()
        write_prediction_log(Path(tmp), "fraud", DAY, X)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet"))
        print(f"wrote {rows} requests ({size / 1e6:.0f} MB Parquet) in "
              f"{time.perf_counter() - started:.0f} s")
        for cap in (250_000, rows):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            done = subprocess.run(
                [sys.executable, __file__, "--job", tmp, "--max-rows", str(cap)],
                capture_output=True, text=True, check=True,
            )
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            seconds, logged, compared, drifted = done.stdout.split()
            print(f"cap {cap}: {seconds} s, peak RSS {max(peak, before) / 1024:.0f} MB, "
                  f"{logged} rows logged, {compared} compared, drifted={drifted}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--max-rows", type=int, default=250_000, help=argparse.SUPPRESS)
    parser.add_argument("--skip-rates", action="store_true")
    args = parser.parse_args()
    if args.job:
        job(args.job, args.max_rows)
        return
    if not args.skip_rates:
        rates(args.seeds, args.rows)
    if args.big_rows:
        big(args.big_rows)


if __name__ == "__main__":
    main()
