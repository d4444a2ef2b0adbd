"""Closed-loop gRPC load generator: OIP v2 ``ModelInfer`` at a fixed concurrency (wrk for gRPC).

    .venv/bin/python benchmarks/grpc_load.py --address 127.0.0.1:8001 --model breast-cancer \\
        --body benchmarks/body.json --concurrency 64 --duration 10

``--concurrency`` tasks on one ``grpc.aio`` channel (``--channels``: spread over that many
connections) each send a request, wait for its answer and
send the next, for ``--duration`` seconds after ``--warmup`` seconds that are not recorded. The
request is built once from the OIP JSON body (its tensors as ``raw_input_contents``, what
``tritonclient.grpc`` sends) and serialized once: the stub sends those bytes and does not parse
the answers (the first one is parsed and checked), so the client spends as little CPU per call
as a Python gRPC client can. It is still Python on the same machine as the server: it prints its
own CPU time so that the driver can report it.

Prints one JSON object on stdout: requests, errors by status code, req/s, latency percentiles
(ms), the client's CPU seconds (user + system, all threads) and wall seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def build_request(model: str, body: dict[str, Any]) -> bytes:
    """The serialized ``ModelInferRequest`` for an OIP JSON body (raw tensor contents)."""
    request = pb.ModelInferRequest(model_name=model)
    for tensor in body["inputs"]:
        array = np.asarray(tensor["data"], dtype=NUMPY[tensor["datatype"]])
        request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return request.SerializeToString()


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {}
    ordered = np.sort(np.asarray(samples_ns, dtype=np.int64)) / 1e6
    out = {f"p{p:g}": float(np.percentile(ordered, p)) for p in (50, 75, 90, 99, 99.9)}
    out["max"] = float(ordered[-1])
    out["avg"] = float(ordered.mean())
    return out


def mark(name: str) -> None:
    """Tell the driver (run.py) where the recorded window starts and ends."""
    print(f"mark: {name}", file=sys.stderr, flush=True)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = build_request(args.model, json.loads(Path(args.body).read_bytes()))
    # A local subchannel pool per channel: each --channels channel is its own TCP connection
    # (servers sharing a port with SO_REUSEPORT are spread over connections, not calls).
    options = [("grpc.max_receive_message_length", 64 << 20),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(args.address, options=options)
                for _ in range(args.channels)]
    async with contextlib.AsyncExitStack() as stack:
        for channel in channels:
            await stack.enter_async_context(channel)
        calls = [c.unary_unary(METHOD) for c in channels]  # bytes in and out: no (de)serializing
        call = calls[0]
        first = pb.ModelInferResponse.FromString(await call(payload, timeout=10))
        if not first.raw_output_contents:
            raise SystemExit(f"unexpected ModelInfer answer: {first}")

        latencies: list[int] = []
        errors: collections.Counter[str] = collections.Counter()
        recording = False
        unrecorded = [1]  # the first call above, then the warm-up
        clock = time.perf_counter_ns
        stop_at = time.monotonic() + args.warmup + args.duration

        async def worker(call: Any) -> None:
            while time.monotonic() < stop_at:
                started = clock()
                try:
                    await call(payload, timeout=args.timeout)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name if recording else "warmup"] += 1
                    continue
                if recording:
                    latencies.append(clock() - started)
                else:
                    unrecorded[0] += 1

        tasks = [asyncio.create_task(worker(calls[i % len(calls)]))
                 for i in range(args.concurrency)]
        await asyncio.sleep(args.warmup)
        recording = True
        mark("recording")
        cpu0, wall0 = _cpu_s(), time.monotonic()
        await asyncio.gather(*tasks)
        cpu, wall = _cpu_s() - cpu0, time.monotonic() - wall0
        mark("done")
    if args.samples:
        np.save(args.samples, np.asarray(latencies, dtype=np.int64))
    return {
        "requests": len(latencies),
        "errors": {k: v for k, v in errors.items() if k != "warmup"},
        "sent_total": len(latencies) + unrecorded[0] + sum(errors.values()),
        "rps": len(latencies) / wall,
        "latency_ms": percentiles(latencies),
        "elapsed_s": wall,
        "client_cpu_s": cpu,
        "client_cpu_cores": cpu / wall,
        "client_cpu_us_per_req": cpu / max(1, len(latencies)) * 1e6,
        "sample_response": {
            "model_name": first.model_name,
            "model_version": first.model_version,
            "outputs": [
                {
                    "name": o.name,
                    "datatype": o.datatype,
                    "shape": list(o.shape),
                    "data": np.frombuffer(raw, dtype=np.dtype(NUMPY[o.datatype]).newbyteorder(
                        "<")).tolist() if o.datatype in NUMPY else None,
                }
                for o, raw in zip(first.outputs, first.raw_output_contents, strict=True)
            ],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="host:port of the gRPC server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--body", required=True, help="OIP v2 JSON request body file")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds recorded")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not recorded")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-call deadline, s")
    parser.add_argument("--channels", type=int, default=1,
                        help="connections the concurrency is spread over (round robin)")
    parser.add_argument("--samples", help="write the recorded latencies (ns) to this .npy file")
    args = parser.parse_args(argv)
    json.dump(asyncio.run(run(args)), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
