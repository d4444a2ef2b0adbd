"""The LLM engine's parts on a real (random-weights) ONNX model: scheduler rules, sampling,
incremental detokenization and stop strings, and the engine's continuous and static batching."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from tokenizers import Tokenizer

from llm.config import ModelConfig
from registry import InvalidRequest, ServingConfig
from serving.batching import QueueFull
from serving.llm.engine import Generation, LLMEngine, TokenEvent
from serving.llm.model import CausalLM, KVCache
from serving.llm.sampling import SamplingParams, sample
from serving.llm.scheduler import Scheduler, SchedulerLimits, Sequence
from serving.llm.text import IncrementalDetokenizer, StopMatcher, token_bytes_table

MakeLM = Callable[..., bytes]


@pytest.fixture(scope="module")
def tiny(make_lm: MakeLM) -> CausalLM:
    return CausalLM(make_lm(0))


@pytest.fixture(scope="module")
def long_lm(make_lm: MakeLM, long_config: ModelConfig) -> CausalLM:
    return CausalLM(make_lm(0, long_config))


def seq(i: int, prompt: int, max_tokens: int) -> Sequence:
    return Sequence(i, list(range(prompt)), max_tokens)


# -- the scheduler ----------------------------------------------------------------------------


def test_scheduler_respects_seqs_tokens_and_cache_budgets() -> None:
    s = Scheduler(SchedulerLimits(max_num_seqs=3, max_num_batched_tokens=10,
                                  kv_cache_tokens=40, max_waiting=10))
    for i, (p, m) in enumerate([(4, 4), (4, 4), (4, 4), (2, 2)]):
        s.add(seq(i, p, m))
    first = s.schedule()  # token budget: 4 + 4 = 8, the third prompt (4) does not fit in 10
    assert [q.id for q in first] == [0, 1]
    second = s.schedule()  # 2 decode tokens + 4 = 6 <= 10; then max_num_seqs (3) is reached
    assert [q.id for q in second] == [2]
    assert s.schedule() == []
    assert s.reserved == 24
    s.finish(first[0])
    assert [q.id for q in s.schedule()] == [3] and s.reserved == 20


def test_scheduler_kv_budget_makes_sequences_wait_in_order() -> None:
    s = Scheduler(SchedulerLimits(max_num_seqs=8, max_num_batched_tokens=100,
                                  kv_cache_tokens=20, max_waiting=10))
    big, small = seq(0, 5, 10), seq(1, 1, 1)
    s.add(seq(9, 5, 5))
    s.add(big)
    s.add(small)
    running = s.schedule()
    assert [q.id for q in running] == [9]  # 10 + 15 > 20: the head waits, nobody overtakes it
    s.finish(running[0])
    assert [q.id for q in s.schedule()] == [0, 1] and s.reserved == 17


def test_scheduler_refuses_what_could_never_run_and_a_full_queue() -> None:
    s = Scheduler(SchedulerLimits(max_num_seqs=1, max_num_batched_tokens=8,
                                  kv_cache_tokens=16, max_waiting=1))
    with pytest.raises(InvalidRequest, match="max_num_batched_tokens"):
        s.add(seq(0, 9, 1))
    with pytest.raises(InvalidRequest, match="max_tokens: .*KV-cache budget"):
        s.add(seq(1, 8, 9))
    s.add(seq(2, 2, 2))
    with pytest.raises(QueueFull) as full:
        s.add(seq(3, 2, 2))
    assert full.value.status_code == 503 and full.value.to_http()[1]["Retry-After"] == "1"


def test_scheduler_static_mode_admits_only_when_idle_and_aborts_free_cache() -> None:
    s = Scheduler(SchedulerLimits(max_num_seqs=2, max_num_batched_tokens=100,
                                  kv_cache_tokens=100, mode="static"))
    a, b, c = seq(0, 2, 2), seq(1, 2, 2), seq(2, 2, 2)
    for q in (a, b, c):
        s.add(q)
    assert s.schedule() == [a, b]
    s.finish(a)
    assert s.schedule() == []  # b still runs: nobody joins a static batch
    b.aborted = True
    dropped: list[Sequence] = []
    s.drop_aborted(dropped.append)
    assert dropped == [b] and s.reserved == 0
    assert s.schedule() == [c]


def test_llm_knobs_are_checked_naming_the_knob() -> None:
    with pytest.raises(InvalidRequest) as bad:
        ServingConfig.from_config({"backend": "openai", "max_num_seqs": 0, "batching": "x",
                                   "kv_cache_budget_mb": 0, "max_num_batched_tokens": 2.5})
    message = bad.value.message
    for knob in ("max_num_seqs", "max_num_batched_tokens", "kv_cache_budget_mb", "batching",
                 "upstream_url"):
        assert f"{knob}:" in message
    with pytest.raises(InvalidRequest, match="upstream_url: expected http"):
        ServingConfig.from_config({"backend": "openai", "upstream_url": "host:8000"})
    ok = ServingConfig.from_config({"backend": "llm", "max_num_seqs": 4, "batching": "static"})
    assert ok.max_num_seqs == 4 and ok.batching == "static"


# -- sampling and text ------------------------------------------------------------------------


def test_sampling_is_greedy_at_zero_and_seeded_otherwise() -> None:
    logits = np.array([0.0, 3.0, 1.0, 2.9], np.float32)
    assert sample(logits, SamplingParams(1, temperature=0.0), np.random.default_rng()) == 1
    params = SamplingParams(1, temperature=1.0, seed=7)
    draws = [sample(logits, params, params.rng()) for _ in range(5)]
    assert len(set(draws)) == 1
    rng = np.random.default_rng(0)
    nucleus = {sample(logits, SamplingParams(1, top_p=0.5), rng) for _ in range(50)}
    assert nucleus == {1, 3}  # the two tokens holding half the mass


def test_detokenizer_never_emits_half_a_character(tiny: CausalLM) -> None:
    tok: Tokenizer = tiny.tokenizer
    text = "naïve café — 日本語 ok"
    ids = tok.encode(text, add_special_tokens=False).ids
    detok = IncrementalDetokenizer(token_bytes_table(tok))
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # a multi-byte character spread over byte tokens


def test_stop_strings_across_token_boundaries() -> None:
    stop = StopMatcher(("END", "\n\n"))
    out = [stop.feed(t) for t in ["Hello E", "N", "xt and E", "ND more"]]
    assert "".join(out) == "Hello ENxt and " and stop.stopped
    stop = StopMatcher(("END",))
    assert stop.feed("abcE") == "abc" and stop.flush() == "E" and not stop.stopped


# -- the model runner and the engine ----------------------------------------------------------


def test_batched_decode_matches_decoding_alone(tiny: CausalLM) -> None:
    prompts = [tiny.encode("Hello there"), tiny.encode("A")]
    steps = [5, 9, 7]
    alone = []
    for p in prompts:
        cache = KVCache(tiny.config, 20)
        tiny.prefill(p, cache)
        alone.append([tiny.decode([t], [cache])[0] for t in steps])
    caches = [KVCache(tiny.config, 20) for _ in prompts]
    for p, c in zip(prompts, caches, strict=True):
        tiny.prefill(p, c)
    # step 1 assembles the left-padded batch; steps 2 and 3 feed the outputs back as they are
    together = [tiny.decode([t, t], caches) for t in steps]
    for i in range(len(steps)):
        np.testing.assert_allclose(together[i], np.stack([a[i] for a in alone]), atol=1e-5)


async def _collect(gen: Generation) -> tuple[str, TokenEvent]:
    text, last = [], None
    async for event in gen:
        text.append(event.text)
        last = event
    assert last is not None
    return "".join(text), last


@pytest.fixture
def engines(long_lm: CausalLM) -> Iterator[list[LLMEngine]]:
    made: list[LLMEngine] = []
    yield made
    for engine in made:
        engine.close(timeout_s=1)


def start_engine(lm: CausalLM, made: list[LLMEngine], **limits: object) -> LLMEngine:
    engine = LLMEngine(lm, SchedulerLimits(**limits))  # type: ignore[arg-type]
    engine.start()
    made.append(engine)
    return engine


def _arrival_order(lm: CausalLM, engine: LLMEngine) -> list[str]:
    """A long sequence starts; once it has produced text a short one arrives. The order in
    which their events come out."""
    order: list[str] = []

    async def run() -> None:
        long_params = SamplingParams(400, temperature=0.0, ignore_eos=True)
        first = Generation(engine, lm.encode("first"), long_params)
        started = asyncio.Event()

        async def follow_first() -> None:
            async for event in first:
                started.set()
                if event.finish_reason:
                    order.append("first done")

        task = asyncio.ensure_future(follow_first())
        await started.wait()
        second = Generation(engine, lm.encode("second"),
                            SamplingParams(3, temperature=0.0, ignore_eos=True))
        async for _event in second:
            if "second first token" not in order:
                order.append("second first token")
        await task

    asyncio.run(run())
    return order


def test_a_new_sequence_joins_the_running_batch(long_lm: CausalLM, engines: list) -> None:
    engine = start_engine(long_lm, engines, max_num_seqs=4)
    assert _arrival_order(long_lm, engine) == ["second first token", "first done"]


def test_static_batching_makes_a_newcomer_wait(long_lm: CausalLM, engines: list) -> None:
    engine = start_engine(long_lm, engines, max_num_seqs=4, mode="static")
    assert _arrival_order(long_lm, engine) == ["first done", "second first token"]


def test_cancel_frees_the_slot_and_its_cache(long_lm: CausalLM, engines: list) -> None:
    engine = start_engine(long_lm, engines, max_num_seqs=1)

    async def run() -> tuple[str, TokenEvent]:
        hog = Generation(engine, long_lm.encode("x"),
                         SamplingParams(500, temperature=0.0, ignore_eos=True))
        await hog.__anext__()
        waiting = Generation(engine, long_lm.encode("y"), SamplingParams(3, temperature=0.0))
        hog.cancel()  # the client went away
        return await _collect(waiting)

    _, last = asyncio.run(run())
    assert last.finish_reason in ("length", "stop")
    assert engine.scheduler.idle and engine.scheduler.reserved == 0


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny: CausalLM, engines: list) -> None:
    engine = start_engine(tiny, engines, max_num_seqs=8)
    params = SamplingParams(20, temperature=1.0, top_p=0.9, seed=42)

    async def run() -> list[str]:
        alone = await _collect(Generation(engine, tiny.encode("Hi"), params))
        crowd = [Generation(engine, tiny.encode(f"other {i}"), SamplingParams(20, seed=i))
                 for i in range(4)]
        mine = Generation(engine, tiny.encode("Hi"), params)
        results = await asyncio.gather(_collect(mine), *(_collect(g) for g in crowd))
        return [alone[0], results[0][0]]

    alone, in_batch = asyncio.run(run())
    assert alone == in_batch and alone


def test_server_sent_events_survive_unicode_line_breaks_in_text() -> None:
    import json

    from serving.llm.api import sse

    event = sse({"text": "a\u2028b\x85c\u2029"})
    assert event.endswith(b"\n\n") and len(event.decode().strip().splitlines()) == 1
    assert json.loads(event[6:])["text"] == "a\u2028b\x85c\u2029"
