"""The dynamic batcher under concurrent requests: merge/split, ordering, error fan-out,
bounded queue and deadlines. The model is a real ONNX Runtime session (or, where a test needs
a model that blocks or fails on cue, a plain function standing in for it)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from roost_testing import make_linear_onnx

from registry import DeadlineExceeded, InvalidRequest, RoostError, ServingConfig
from registry.signature import signature_from_onnx
from serving.backends import OnnxBackend
from serving.batching import DynamicBatcher, QueueFull

Tensors = dict[str, np.ndarray]


def onnx_backend() -> OnnxBackend:
    data = make_linear_onnx(seed=4)
    return OnnxBackend(data, signature_from_onnx(data))


def rows(n: int, seed: int) -> Tensors:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return {"input": x}


def test_concurrent_requests_are_merged_and_split_in_order() -> None:
    backend = onnx_backend()
    seen_batches: list[int] = []

    def model(feeds: Tensors) -> Tensors:
        seen_batches.append(len(feeds["input"]))
        time.sleep(0.002)  # long enough for a queue to form behind a running batch
        return backend.infer(feeds)

    async def scenario() -> list[tuple[Tensors, Tensors]]:
        batcher = DynamicBatcher(
            "m:1", [model], ServingConfig(max_batch_size=16, max_queue_delay_ms=2)
        )
        batcher.start()
        requests = [rows(1 + i % 4, seed=i) for i in range(60)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return list(zip(requests, results, strict=True))

    for request, result in asyncio.run(scenario()):
        expected = backend.infer(request)
        np.testing.assert_array_equal(result["label"], expected["label"])
        np.testing.assert_allclose(result["probabilities"], expected["probabilities"], rtol=1e-6)
    assert sum(seen_batches) == sum(1 + i % 4 for i in range(60))
    assert max(seen_batches) > 4, "no request was ever merged with another"
    assert max(seen_batches) <= 16


def test_failing_batch_fails_every_waiter_and_the_batcher_survives() -> None:
    calls = 0

    def model(feeds: Tensors) -> Tensors:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return {"y": feeds["input"] * 2}

    async def scenario() -> tuple[list[object], Tensors]:
        batcher = DynamicBatcher(
            "m:1", [model], ServingConfig(max_batch_size=8, max_queue_delay_ms=50)
        )
        batcher.start()
        first = await asyncio.gather(
            *(batcher.submit(rows(1, i)) for i in range(5)), return_exceptions=True
        )
        ok = await batcher.submit(rows(2, 9))
        await batcher.stop()
        return first, ok

    first, ok = asyncio.run(scenario())
    assert all(isinstance(e, RoostError) and "CUDA out of memory" in str(e) for e in first)
    np.testing.assert_array_equal(ok["y"], rows(2, 9)["input"] * 2)


def test_full_queue_refuses_at_once_and_expired_requests_never_run() -> None:
    release = threading.Event()
    ran: list[int] = []

    def model(feeds: Tensors) -> Tensors:
        release.wait(5)
        ran.append(len(feeds["input"]))
        return {"y": feeds["input"]}

    async def scenario() -> None:
        config = ServingConfig(max_batch_size=1, max_queue_size=2, queue_timeout_ms=5000)
        batcher = DynamicBatcher("m:1", [model], config)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(rows(1, 0)))
        await asyncio.sleep(0.05)  # the first request is inside the model now
        short = asyncio.ensure_future(batcher.submit(rows(1, 1), timeout_ms=30))
        queued = asyncio.ensure_future(batcher.submit(rows(1, 2)))
        await asyncio.sleep(0)
        assert batcher.depth == 2
        started = time.monotonic()
        with pytest.raises(QueueFull) as full:
            await batcher.submit(rows(1, 3))
        assert time.monotonic() - started < 0.05
        assert full.value.status_code == 503 and full.value.retry_after_s >= 1
        assert "queue is full (2 requests waiting)" in full.value.message
        await asyncio.sleep(0.1)  # the short deadline passes while the model is busy
        release.set()
        assert (await running)["y"].shape == (1, 4)
        with pytest.raises(DeadlineExceeded) as late:
            await short
        assert late.value.status_code == 504 and "was not run" in late.value.message
        assert (await queued)["y"].shape == (1, 4)
        assert batcher.stats.expired == 1 and batcher.stats.rejected_full == 1
        await batcher.stop()

    asyncio.run(scenario())
    assert ran == [1, 1], "the expired request reached the model"


def test_preferred_batch_size_dispatches_without_waiting_out_the_delay() -> None:
    sizes: list[int] = []

    def model(feeds: Tensors) -> Tensors:
        sizes.append(len(feeds["input"]))
        return {"y": feeds["input"]}

    async def scenario() -> float:
        config = ServingConfig(
            max_batch_size=8, max_queue_delay_ms=2000, preferred_batch_sizes=(4,)
        )
        batcher = DynamicBatcher("m:1", [model], config)
        batcher.start()
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit(rows(1, i)) for i in range(4)))
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    assert asyncio.run(scenario()) < 1.0
    assert sizes == [4]


def test_no_batch_dimension_runs_requests_one_by_one() -> None:
    sizes: list[int] = []

    def model(feeds: Tensors) -> Tensors:
        sizes.append(len(feeds["input"]))
        return {"y": feeds["input"]}

    async def scenario() -> None:
        batcher = DynamicBatcher(
            "m:1", [model], ServingConfig(max_batch_size=0, max_queue_delay_ms=50)
        )
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows(3, i)) for i in range(5)))
        await batcher.stop()

    asyncio.run(scenario())
    assert sizes == [3] * 5


def test_oversized_request_and_bad_config_are_refused() -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher(
            "m:1", [lambda f: f], ServingConfig(max_batch_size=4)
        )
        batcher.start()
        with pytest.raises(InvalidRequest, match="5 rows exceeds max_batch_size 4"):
            await batcher.submit(rows(5, 0))
        with pytest.raises(InvalidRequest, match="timeout"):
            await batcher.submit(rows(1, 0), timeout_ms=0)
        await batcher.stop()

    asyncio.run(scenario())
    with pytest.raises(InvalidRequest, match="max_queue_size: expected >= 1"):
        ServingConfig.from_config({"max_queue_size": 0})
    with pytest.raises(InvalidRequest, match="preferred_batch_sizes"):
        ServingConfig.from_config({"max_batch_size": 4, "preferred_batch_sizes": [8]})
    with pytest.raises(InvalidRequest, match="instances: expected a number"):
        ServingConfig.from_config({"instances": "two"})


def test_instances_run_batches_in_parallel() -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def model(feeds: Tensors) -> Tensors:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return {"y": feeds["input"]}

    async def scenario() -> None:
        batcher = DynamicBatcher("m:1", [model, model], ServingConfig(max_batch_size=1))
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows(1, i)) for i in range(6)))
        await batcher.stop()

    asyncio.run(scenario())
    assert peak == 2


def test_a_lone_request_on_a_fast_model_runs_in_its_own_task_and_a_burst_still_merges() -> None:
    """Once the model is known to be fast, a request that is alone in its event-loop iteration
    runs on the loop in the caller's task (no hand-off to the consumer); requests arriving
    together still queue behind it and are merged into one batch."""
    backend = onnx_backend()
    threads: list[str] = []
    sizes: list[int] = []

    def model(feeds: Tensors) -> Tensors:
        threads.append(threading.current_thread().name)
        sizes.append(len(feeds["input"]))
        return backend.infer(feeds)

    async def scenario() -> None:
        batcher = DynamicBatcher("m:1", [model], ServingConfig(max_batch_size=16))
        batcher.start()
        await batcher.submit(rows(1, seed=0))  # the first call learns the model's time
        assert threads[-1].startswith("roost-m:1")
        # Lone requests: once the learnt time is under INLINE_BELOW_S (a cold or preempted
        # first call on a busy machine can take longer), they run on the loop, in their task.
        for attempt in range(200):
            await asyncio.sleep(0)
            lone = rows(2, seed=1 + attempt)
            result = await batcher.submit(lone)
            np.testing.assert_array_equal(result["label"], backend.infer(lone)["label"])
            if threads[-1] == threading.main_thread().name:
                break
        assert threads[-1] == threading.main_thread().name and sizes[-1] == 2, threads[-3:]
        await asyncio.sleep(0)
        burst = [rows(1, seed=1000 + i) for i in range(6)]
        before = len(sizes)
        results = await asyncio.gather(*(batcher.submit(r) for r in burst))
        ran = sizes[before:]
        assert sum(ran) == 6 and len(ran) <= 2 and max(ran) >= 5, ran  # merged, not one by one
        for request, answer in zip(burst, results, strict=True):
            np.testing.assert_array_equal(answer["label"], backend.infer(request)["label"])
        assert batcher.stats.batches == len(sizes)
        await batcher.stop()

    asyncio.run(scenario())
