"""Model load time, hot (local disk) and cold (object storage), for ~100 MB and ~1 GB ONNX files.

Measures the gateway's load path for one version, :meth:`serving.loader.VersionLoader.load`:
fetch the artifact + sha256 check, build the ONNX Runtime session, run the warm-up inferences.
That is the time from "the registry says deploy" to "this version can answer" minus the
gateway's registry poll (``ROOST_POLL_INTERVAL_S``, 1 s by default).

* hot: the artifact store is a local directory (``file://``), file already in the page cache;
* cold: the store is S3 (moto's server on loopback stands in for S3; the tests use the same),
  the local artifact cache (``$ROOST_HOME/cache/artifacts``) empty, so the bytes are fetched,
  hashed and cached first.

The models are MLPs of square float32 MatMul layers (100 MB: 6 layers of 2048x2048; 1 GB: 16 of
4096x4096), inline initializers (under protobuf's 2 GB limit). Everything lives in a temporary
directory removed at the end.

    .venv/bin/python benchmarks/load_time.py [--sizes 100,1000] [--append]

``--append`` adds the results to benchmarks/RESULTS.md. Requirements: < 30 s hot, < 5 min cold.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from registry import Registry, RoostSettings, State  # noqa: E402
from serving.loader import VersionLoader  # noqa: E402

SHAPES = {100: (2048, 6), 1000: (4096, 16)}  # MB -> (width, layers)


def make_model(width: int, layers: int) -> bytes:
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "input"
    for i in range(layers):
        w = rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width))
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        del w
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        prev = f"r{i}"
    nodes.append(helper.make_node("ReduceSum", [prev], ["score"], keepdims=1))
    graph = helper.make_graph(
        nodes, "big_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def deploy(registry: Registry, data: bytes) -> tuple[Any, float]:
    started = time.perf_counter()
    info = registry.register_version("big", data)
    registered = time.perf_counter() - started
    for state in (State.VALIDATING, State.VALIDATED):
        registry.transition("big", info.version, state, reason="benchmark")
    registry.deploy("big", info.version, reason="benchmark")
    return registry.get_version("big", info.version), registered


def timed_load(registry: Registry, settings: RoostSettings, info: Any) -> dict[str, float]:
    phases: dict[str, float] = {}
    original = registry.load_artifact

    def load_artifact(model: str, version: int) -> bytes:
        t = time.perf_counter()
        data = original(model, version)
        phases["fetch_sha256_s"] = time.perf_counter() - t
        return data

    registry.load_artifact = load_artifact  # type: ignore[method-assign]
    started = time.perf_counter()
    loaded = VersionLoader(registry, settings).load(info)
    phases["total_s"] = time.perf_counter() - started
    phases["session_warmup_s"] = phases["total_s"] - phases["fetch_sha256_s"]
    for backend in loaded.backends:
        close = getattr(backend, "close", None)
        if callable(close):
            done = close()
            if asyncio.iscoroutine(done):
                asyncio.run(done)
    del loaded
    gc.collect()
    return phases


def run_size(mb: int, workdir: Path, endpoint: str, bucket: str) -> list[dict[str, Any]]:
    width, layers = SHAPES[mb]
    t = time.perf_counter()
    data = make_model(width, layers)
    print(f"{mb} MB case: model of {len(data) / 1e6:.1f} MB built in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for mode in ("hot", "cold"):
        home = workdir / f"{mode}-{mb}"
        extra: dict[str, Any] = {}
        if mode == "cold":
            extra = {"artifacts_url": f"s3://{bucket}/artifacts-{mb}", "s3_endpoint_url": endpoint}
        settings = RoostSettings(home=home, **extra)
        registry = Registry.from_settings(settings)
        try:
            info, registered = deploy(registry, data)
            if mode == "hot":
                registry.load_artifact("big", info.version)  # page cache warm
            phases = timed_load(registry, settings, info)
        finally:
            registry.close()
        rows.append({"size_mb": round(len(data) / 1e6, 1), "mode": mode,
                     "register_s": registered, **phases})
        print(f"  {mode}: {phases}", flush=True)
    del data
    gc.collect()
    return rows


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    cpu = platform.processor() or platform.machine()
    lines = [
        f"\n## Model load time, hot and cold ({datetime.now(UTC):%Y-%m-%d %H:%MZ})\n",
        f"Command: `{command}`; commit `{rev}`; machine: {os.cpu_count()} CPUs ({cpu}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        "ONNX Runtime 1 intra-op thread, 3 warm-up runs. Cold = artifact on S3 (moto's server "
        "on loopback stands in for S3; no network latency or bandwidth limit, so a real "
        "bucket adds transfer time: ~8 s per GB at 1 Gbit/s), local cache empty. Hot = local "
        "`file://` store, file in the page cache. The path timed is the gateway's "
        "`VersionLoader.load`: fetch + sha256 (+ writing the local cache, cold), ONNX Runtime "
        "session, warm-up.\n",
        "| model | mode | fetch + sha256 s | session + warm-up s | total s | target | register s |",
        "|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        target = "< 30 s" if r["mode"] == "hot" else "< 300 s"
        limit = 30 if r["mode"] == "hot" else 300
        met = "met" if r["total_s"] < limit else "MISSED"
        lines.append(
            f"| {r['size_mb']} MB | {r['mode']} | {r['fetch_sha256_s']:.2f} | "
            f"{r['session_warmup_s']:.2f} | {r['total_s']:.2f} | {target}: {met} | "
            f"{r['register_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="Comma-separated: 100, 1000 (MB).")
    parser.add_argument("--append", action="store_true", help="Append to benchmarks/RESULTS.md.")
    args = parser.parse_args()
    from s3 import moto_server

    server = moto_server()
    bucket = server.fresh_bucket("bench")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="roost-load-time-") as tmp:
        for mb in (int(s) for s in args.sizes.split(",")):
            rows += run_size(mb, Path(tmp), server.endpoint_url, bucket)
    server.server.stop()
    command = "python benchmarks/load_time.py " + " ".join(sys.argv[1:])
    text = markdown(rows, command.strip())
    print(text)
    if args.append:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
