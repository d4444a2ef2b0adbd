"""How long ``roost erase`` takes for one user over 30 days of prediction log.

Generates ``--days`` days x ``--models`` models x ``--files`` sealed files of synthetic rows
(``--rows`` in total, ``--users`` distinct users, ids stored as keyed hashes) with the
project's sealer path (:meth:`warehouse.ParquetSink.write_table`), plus feedback for a tenth
of the requests, then times a dry run and the erasure of one user.

    .venv/bin/python benchmarks/erasure.py --rows 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from warehouse import WAL_SCHEMA, ParquetSink, run_query
from warehouse.erasure import erase_user
from warehouse.feedback import FeedbackRecord, write_feedback
from warehouse.minimise import UserIdHasher

HASHER = UserIdHasher("benchmark-key")


def generate(logs: Path, rows: int, days: int, models: int, files: int, users: int) -> None:
    rng = np.random.default_rng(0)
    sink = ParquetSink(logs, "bench", fsync=False)
    hashed = np.array([HASHER(f"user-{u}") for u in range(users)], dtype=object)
    per_file = rows // (days * models * files)
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    n = 0
    for day in range(days):
        for m in range(models):
            for f in range(files):
                base = start - timedelta(days=day, seconds=-(f * 60))
                ts = [base + timedelta(milliseconds=int(x)) for x in rng.integers(0, 60_000,
                                                                                   per_file)]
                ids = [f"r{n + i}" for i in range(per_file)]
                table = pa.table(
                    {
                        "request_id": ids, "ts": ts, "version": [1] * per_file,
                        "inputs": ['{"inputs":[{"name":"x","data":[1.0,2.0,3.0]}]}'] * per_file,
                        "outputs": ['[{"name":"y","data":[0.5]}]'] * per_file,
                        "latency_ms": rng.random(per_file), "status": [200] * per_file,
                        "user_id": hashed[rng.integers(0, users, per_file)].tolist(),
                        "protocol": ["rest"] * per_file, "error": [None] * per_file,
                        "variant": [None] * per_file, "experiment": [None] * per_file,
                        "route": ["production"] * per_file, "shadow": [False] * per_file,
                        "model": [f"model{m}"] * per_file,
                        "wal_seq": np.arange(n, n + per_file),
                    },
                    schema=WAL_SCHEMA,
                )  # fmt: skip
                sink.write_table(table, f"part-bench-{n:012d}")
                write_feedback(logs, [
                    FeedbackRecord(rid, f"model{m}", 1, None, 1.0, None, t)
                    for rid, t in zip(ids[::10], ts[::10], strict=True)
                ])  # fmt: skip
                n += per_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--files", type=int, default=10, help="sealed files per model and day")
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        t0 = time.perf_counter()
        generate(logs, args.rows, args.days, args.models, args.files, args.users)
        t1 = time.perf_counter()
        total = run_query(logs, "select count(*) from predictions")[1][0][0]
        parquet = len(list((logs / "predictions").rglob("*.parquet")))
        print(f"generated {total} rows in {parquet} files in {t1 - t0:.1f}s")
        dry = erase_user(logs, "user-42", hasher=HASHER, dry_run=True)
        print(f"dry run: {dry.prediction_rows} prediction rows in {len(dry.predictions)} files, "
              f"{dry.feedback_rows} feedback rows, {dry.seconds:.2f}s")
        real = erase_user(logs, "user-42", hasher=HASHER, wait_s=0)
        print(f"erase:   {real.prediction_rows} prediction rows rewritten out of "
              f"{len(real.predictions)} files, {real.feedback_rows} feedback rows, "
              f"{real.seconds:.2f}s")
        left = run_query(logs, "select count(*) from predictions where user_id = '"
                         + str(HASHER("user-42")) + "'")[1][0][0]
        after = run_query(logs, "select count(*) from predictions")[1][0][0]
        print(f"left for the user: {left}; rows now {after} (= {total} - {real.prediction_rows})")


if __name__ == "__main__":
    main()
