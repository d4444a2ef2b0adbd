"""How long a WAL seal in the compactor thread keeps a busy event loop waiting, by variant.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/seal_stall.py [--rows 5000]

An event loop runs request-like work (about 150 µs of Python, then a 100 µs sleep, so the loop
gives the GIL away and takes it back as a serving loop does) while a thread seals one
``--rows``-row compact WAL segment the way the compactor does (``warehouse.wal.read_segment``,
then ``PredictionLogWriter._seal`` into a Parquet sink, fsync included). ``stall_probe``'s
lag thread measures how long a callback posted to the loop waits to run, during the seal only.
Variants, interleaved over ``--repeat`` rounds:

- ``switch 5 ms``: CPython's default ``sys.setswitchinterval`` (what the gateway ran with);
- ``switch 0.25 ms``: the gateway's :data:`serving.gateway.GIL_SWITCH_INTERVAL_S`;
- ``+ chunked decode``: as above, with the segment's rows decoded in slices of ``--chunk`` rows
  (``warehouse.wal._expand`` called per slice), so no single C call (``orjson.loads``,
  ``pa.array``) holds the GIL for long. Since b6415cb ``_expand`` decodes 256 rows per call
  itself, so on this checkout both variants are chunked; run the script from an older tree
  (``PYTHONPATH``) to see the difference.

Also a ``no seal`` row: the same loop with nothing else running, the machine's own noise.

Loop lag is wall time and moves with whatever else the machine runs. The steadier figure is the
second table: the C calls of one seal (run alone, traced with ``sys.setprofile``) that took the
most thread CPU time, unchunked and chunked. A C call that does not release the GIL keeps the
loop waiting that long whatever the switch interval; Python code between calls gives the GIL up
every switch interval.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stall_probe import StallProbe  # noqa: E402

from warehouse import wal  # noqa: E402
from warehouse.records import PredictionRecord  # noqa: E402
from warehouse.writer import ParquetSink, PredictionLogWriter  # noqa: E402

ORIGINAL_EXPAND = wal._expand


def chunked_expand(chunk: int) -> Any:
    def expand(table: pa.Table, path: Path | None = None) -> pa.Table:
        parts = [
            ORIGINAL_EXPAND(table.slice(start, chunk), path)
            for start in range(0, table.num_rows, chunk)
        ]
        return pa.concat_tables(parts) if parts else ORIGINAL_EXPAND(table, path)

    return expand


def write_segment(path: Path, rows: int) -> None:
    """A compact WAL segment of ``rows`` demo-like records, in commit groups of one."""
    inputs = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                       "data": [1.2345] * 30}]}).decode()
    records = [
        PredictionRecord(
            request_id=uuid.uuid4().hex, ts=datetime.now(UTC), model="breast-cancer", version=1,
            inputs=inputs, outputs='{"outputs":[{"name":"label","data":[1]}]}', latency_ms=0.3,
            status=200, user_id=None, protocol="rest", error=None,
        )
        for _ in range(rows)
    ]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, wal.COMPACT_WAL_SCHEMA) as stream:
        for i, record in enumerate(records):
            stream.write_batch(wal.records_to_compact_batch([record], i))
    path.write_bytes(sink.getvalue().to_pybytes()[:-8])  # no end-of-stream marker, as the WAL


async def measure(segment: Path, writer: PredictionLogWriter, seal: bool) -> dict[str, Any]:
    probe = StallProbe(every_s=0.0005)
    probe.start_lag_thread(asyncio.get_running_loop())
    done = threading.Event()
    took: list[float] = []

    def sealer() -> None:
        start = time.perf_counter()
        if seal:
            contents = wal.read_segment(segment)
            writer._seal(contents.table, f"seal-{uuid.uuid4().hex[:8]}")
        else:
            time.sleep(0.1)
        took.append(time.perf_counter() - start)
        done.set()

    await asyncio.sleep(0.05)
    probe.report(reset=True)
    threading.Thread(target=sealer, daemon=True).start()
    while not done.is_set():  # request-like work on the loop
        deadline = time.perf_counter() + 0.00015
        while time.perf_counter() < deadline:
            pass
        await asyncio.sleep(0.0001)
    report = probe.report(reset=False)
    probe.stop()
    return {"seal_ms": took[0] * 1000, **report["loop_lag"]}


def c_calls(segment: Path, writer: PredictionLogWriter, top: int = 6) -> list[tuple[str, float]]:
    """The ``top`` C calls of one seal by thread CPU time (ms), traced in this thread."""
    started: list[tuple[str, float]] = []
    spent: dict[str, float] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            started.append((getattr(arg, "__qualname__", str(arg)), time.thread_time()))
        elif event in ("c_return", "c_exception") and started:
            name, t0 = started.pop()
            spent[name] = max(spent.get(name, 0.0), (time.thread_time() - t0) * 1000)

    sys.setprofile(profile)
    try:
        contents = wal.read_segment(segment)
        writer._seal(contents.table, f"trace-{uuid.uuid4().hex[:8]}")
    finally:
        sys.setprofile(None)
    return sorted(spent.items(), key=lambda item: -item[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import uvloop

    directory = Path(tempfile.mkdtemp(prefix="seal-stall-"))
    segment = directory / "seg.arrow"
    write_segment(segment, args.rows)
    writer = PredictionLogWriter(ParquetSink(directory / "logs"))
    wal.warm_up()
    variants = {
        "no seal (machine noise)": (0.005, ORIGINAL_EXPAND, False),
        "switch 5 ms": (0.005, ORIGINAL_EXPAND, True),
        "switch 0.25 ms": (0.00025, ORIGINAL_EXPAND, True),
        f"switch 0.25 ms + chunked decode ({args.chunk} rows)": (
            0.00025, chunked_expand(args.chunk), True,
        ),
        f"switch 5 ms + chunked decode ({args.chunk} rows)": (
            0.005, chunked_expand(args.chunk), True,
        ),
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_no in range(args.repeat):
        order = list(variants.items())
        for name, (interval, expand, seal) in order if round_no % 2 == 0 else order[::-1]:
            sys.setswitchinterval(interval)
            wal._expand = expand
            results[name].append(uvloop.run(measure(segment, writer, seal)))
    sys.setswitchinterval(0.005)
    traces = {}
    for name, expand in (("unchunked", ORIGINAL_EXPAND), ("chunked", chunked_expand(args.chunk))):
        wal._expand = expand
        c_calls(segment, writer)  # warm
        traces[name] = c_calls(segment, writer)
    wal._expand = ORIGINAL_EXPAND

    def med(rows: list[dict[str, Any]], key: str) -> float:
        values = sorted(r[key] for r in rows)
        return float(values[len(values) // 2])

    print(f"{args.rows}-row segment, loop lag during the seal (probe every 0.5 ms), median of "
          f"{args.repeat} interleaved runs:\n")
    print("| variant | seal ms | lag p50 µs | lag p90 µs | lag p99 µs | lag max µs | "
          "lags over 1 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {med(rows, 'seal_ms'):.0f} | {med(rows, 'p50_us'):,.0f} | "
              f"{med(rows, 'p90_us'):,.0f} | {med(rows, 'p99_us'):,.0f} | "
              f"{med(rows, 'max_us'):,.0f} | {med(rows, 'over_1ms'):.0f} |")
    print("\nLongest C calls of one seal (thread CPU ms; fsync and Parquet writing release the "
          "GIL):\n")
    for name, calls in traces.items():
        print(f"- {name}: " + ", ".join(f"{call} {ms:.2f}" for call, ms in calls))


if __name__ == "__main__":
    main()
