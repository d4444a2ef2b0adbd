"""Continuous against static batching on the same model and load: ``benchmarks/llm_bench.py``.

    flock /tmp/roost-bench.lock .venv/bin/python benchmarks/llm_bench.py
    .venv/bin/python benchmarks/llm_bench.py --requests 20 --rate 2   # a quick try

One ``roost serve`` process (uvicorn, one worker) serves the same ONNX language model twice:
``llm-continuous`` (``batching: continuous``) and ``llm-static`` (``batching: static``), both with
the same ``max_num_seqs`` and budgets. The model is the ``demo`` configuration of
``llm/configs.yaml`` with random weights (``llm.export.build_random_model``) unless ``--model``
names a trained ONNX file; weights do not change the cost of a token, and every request sets
``ignore_eos`` so it generates exactly its ``max_tokens``.

Load (the same for both modes, from ``--seed``): ``--requests`` arrivals with exponential gaps at
``--rate`` requests/s (Poisson), prompts of 8-96 tokens and outputs of 16-128 tokens drawn
uniformly; every request streams (``/v1/completions``, ``stream: true``), so the client sees
each token. The two modes run one after the other against the same process.

Figures per mode: output throughput (generated tokens / wall time from the first arrival to the
last answer), time to first token p50/p99, inter-token latency p50/p99 (between text chunks of
one stream), per-stream decode speed (tokens after the first / time from first to last token,
median and p10), and the server's CPU seconds per 1000 generated tokens (psutil, user + system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))

from gateway_process import GatewayProcess  # noqa: E402

WORDS = ("model serving gateway registry version traffic canary shadow batch token cache "
         "latency throughput request stream prompt engine scheduler sequence").split()


@dataclass
class Result:
    arrival: float
    sent: float = 0.0
    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


def build_model(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    from llm.config import load_named_config
    from llm.export import build_random_model

    return build_random_model(load_named_config("demo").model, seed=0)


def register(home: Path, data: bytes, max_num_seqs: int) -> None:
    from registry import Registry, RoostSettings, State

    registry = Registry.from_settings(RoostSettings(home=home))
    try:
        for mode in ("continuous", "static"):
            model = f"llm-{mode}"
            info = registry.register_version(model, data, config={
                "backend": "llm", "batching": mode, "max_num_seqs": max_num_seqs,
                "max_queue_size": 4096,
            })
            registry.transition(model, info.version, State.VALIDATING, reason="bench")
            registry.transition(model, info.version, State.VALIDATED, reason="bench")
            registry.deploy(model, info.version, reason="bench")
    finally:
        registry.close()


def workload(n: int, rate: float, seed: int) -> list[tuple[float, str, int]]:
    """(arrival s, prompt, max_tokens) for each request."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    out = []
    for at in arrivals:
        words = int(rng.integers(6, 80))  # ~8-96 tokens with the demo tokenizer
        prompt = " ".join(rng.choice(WORDS, words))
        out.append((float(at), prompt, int(rng.integers(16, 129))))
    return out


async def one(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
              result: Result, start: float) -> None:
    await asyncio.sleep(max(0.0, start + result.arrival - time.perf_counter()))
    result.sent = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"{response.status_code}: {(await response.aread())[:200]!r}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["text"]:
                    if result.first is None:
                        result.first = now
                    else:
                        result.gaps.append(now - (result.last or now))
                    result.last = now
    except httpx.HTTPError as exc:
        result.error = repr(exc)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run_mode(gateway: GatewayProcess, model: str,
                   load: list[tuple[float, str, int]]) -> dict[str, Any]:
    results = [Result(at) for at, _, _ in load]
    load_before = os.getloadavg()[0]
    proc = psutil.Process(gateway.proc.pid if gateway.proc else 0)
    cpu0 = proc.cpu_times()
    limits = httpx.Limits(max_connections=len(load) + 10)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(
            one(client, f"{gateway.url}/v1/completions", model, prompt, max_tokens, r, start)
            for (_, prompt, max_tokens), r in zip(load, results, strict=True)
        ))
    cpu1 = proc.cpu_times()
    ok = [r for r in results if r.error is None and r.first is not None]
    wall = max(r.last or 0 for r in ok) - start
    tokens = sum(r.tokens for r in ok)
    ttft = [(r.first or 0) - r.sent for r in ok]
    gaps = [g for r in ok for g in r.gaps]
    speeds = [(r.tokens - 1) / ((r.last or 0) - (r.first or 0)) for r in ok
              if r.tokens > 1 and (r.last or 0) > (r.first or 0)]
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "model": model, "requests": len(load), "errors": len(load) - len(ok),
        "first_error": next((r.error for r in results if r.error), None),
        "tokens": tokens, "wall_s": wall, "throughput_tok_s": tokens / wall,
        "ttft_p50_ms": pct(ttft, 50) * 1000, "ttft_p99_ms": pct(ttft, 99) * 1000,
        "itl_p50_ms": pct(gaps, 50) * 1000, "itl_p99_ms": pct(gaps, 99) * 1000,
        "stream_tok_s_median": statistics.median(speeds) if speeds else float("nan"),
        "stream_tok_s_p10": pct(speeds, 10),
        "cpu_s_per_1k_tokens": cpu / tokens * 1000 if tokens else float("nan"),
        "loadavg_1m": (load_before, os.getloadavg()[0]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | "
            "per-stream tok/s median (p10) | server CPU s / 1k tok | errors | "
            "load avg before, after |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model'].removeprefix('llm-')} | {r['throughput_tok_s']:.0f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} | "
            f"{r['itl_p99_ms']:.1f} | {r['stream_tok_s_median']:.0f} "
            f"({r['stream_tok_s_p10']:.0f}) | {r['cpu_s_per_1k_tokens']:.2f} | {r['errors']} | "
            f"{r['loadavg_1m'][0]:.1f}, {r['loadavg_1m'][1]:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--rate", type=float, default=4.0, help="arrivals per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--model", help="a trained ONNX file (default: random demo weights)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    data = build_model(args.model)
    load = workload(args.requests, args.rate, args.seed)
    home = Path(tempfile.mkdtemp(prefix="roost-llm-bench-")) / "roost"
    register(home, data, args.max_num_seqs)
    gateway = GatewayProcess(home, grpc=False, launcher="uvicorn", name="llm-bench",
                             env={"ROOST_LOG_DURABILITY": "buffered"})
    gateway.start()
    try:
        gateway.wait_ready()
        asyncio.run(run_mode(gateway, "llm-continuous", load[:4]))  # warm the HTTP path
        rows = [asyncio.run(run_mode(gateway, f"llm-{mode}", load))
                for mode in ("continuous", "static")]
    finally:
        gateway.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO_ROOT).stdout.strip()
    print(f"model: {args.model or 'demo config, random weights'}; {args.requests} requests, "
          f"Poisson {args.rate}/s, seed {args.seed}, max_num_seqs {args.max_num_seqs}; "
          f"commit {commit}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
