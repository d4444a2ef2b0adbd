"""Validation criteria of a text-generation version (an ONNX file under docs/llm.md's contract).

- ``contract``: the inputs, outputs and metadata the serving engine relies on, and one prefill
  plus one cached decode step with the shapes the contract promises;
- ``perplexity``: held-out perplexity through ONNX Runtime (:func:`llm.evaluate.perplexity`) at
  most the bar: a model with random weights scores about its vocabulary size and is blocked;
- ``decode_latency``: p99 of one cached decode step (batch 1, one thread) within the budget,
  i.e. the per-stream tokens/s the requirements ask for.

Like every check (:mod:`assets.validation`), an exception becomes a failed outcome.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from assets.validation import CheckOutcome, Metadata, _guarded, _session
from llm.config import ModelConfig

LLM_CHECKS = ("contract", "perplexity", "decode_latency")


def _config(onnx_bytes: bytes) -> tuple[dict[str, str], ModelConfig]:
    from llm.export import META_CONFIG, read_metadata

    meta = read_metadata(onnx_bytes)
    if META_CONFIG not in meta:
        raise ValueError(f"metadata {META_CONFIG!r} missing")
    return meta, ModelConfig.from_contract_json(meta[META_CONFIG])


def check_llm_contract(onnx_bytes: bytes) -> CheckOutcome:
    def run() -> CheckOutcome:
        from llm.evaluate import forward
        from llm.export import META_CHAT_TEMPLATE, META_TOKENIZER
        from llm.tokenizer import tokenizer_from_json

        meta, cfg = _config(onnx_bytes)
        problems = [f"metadata {k!r} missing" for k in (META_TOKENIZER, META_CHAT_TEMPLATE)
                    if k not in meta]
        session = _session(onnx_bytes)
        layers = [f"{i}.{k}" for i in range(cfg.n_layers) for k in ("key", "value")]
        want_in = ["input_ids", "position_ids", "attention_mask",
                   *(f"past_key_values.{n}" for n in layers)]
        want_out = ["logits", *(f"present.{n}" for n in layers)]
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        if got_in != want_in:
            problems.append(f"inputs {got_in}, expected {want_in}")
        if got_out != want_out:
            problems.append(f"outputs {got_out}, expected {want_out}")
        if not problems:
            vocab = tokenizer_from_json(meta[META_TOKENIZER]).get_vocab_size()
            if vocab > cfg.vocab_size:
                problems.append(f"tokenizer has {vocab} tokens, the model {cfg.vocab_size}")
            logits, past = forward(session, cfg, np.array([[cfg.bos_token_id, 5, 6]]))
            step, present = forward(session, cfg, np.array([[7]]), past=past)
            if logits.shape != (1, 3, cfg.vocab_size) or step.shape != (1, 1, cfg.vocab_size):
                problems.append(f"logits shapes {logits.shape}, {step.shape}")
            if present[0].shape != (1, cfg.n_heads, 4, cfg.head_dim):
                problems.append(f"present.0.key shape {present[0].shape} after 3 + 1 tokens")
        metadata: Metadata = {"layers": cfg.n_layers, "vocab_size": cfg.vocab_size,
                              "max_positions": cfg.max_positions,
                              "problems": "; ".join(problems) or "none"}
        description = ("inputs, outputs and metadata as docs/llm.md says" if not problems
                       else "contract broken: " + "; ".join(problems))
        return CheckOutcome("contract", not problems, description, metadata)

    return _guarded("contract", run)


def check_perplexity(onnx_bytes: bytes, texts: Sequence[str],
                     max_perplexity: float) -> CheckOutcome:
    def run() -> CheckOutcome:
        from llm.evaluate import perplexity

        result = perplexity(onnx_bytes, texts)
        passed = result.perplexity <= max_perplexity
        metadata: Metadata = {"perplexity": round(result.perplexity, 3),
                              "tokens": result.tokens, "max_perplexity": max_perplexity}
        verdict = "within" if passed else "above"
        return CheckOutcome(
            "perplexity", passed,
            f"held-out perplexity {result.perplexity:.1f} over {result.tokens} tokens is "
            f"{verdict} the bar {max_perplexity:g}", metadata)

    return _guarded("perplexity", run)


def check_decode_latency(onnx_bytes: bytes, budget_ms: float, steps: int = 32) -> CheckOutcome:
    def run() -> CheckOutcome:
        from llm.evaluate import forward

        _meta, cfg = _config(onnx_bytes)
        session = _session(onnx_bytes)
        prompt = min(32, cfg.max_positions - steps - 1)
        ids = np.full((1, max(1, prompt)), 5, np.int64)
        _logits, past = forward(session, cfg, ids)
        timings = []
        for _ in range(min(steps, cfg.max_positions - ids.shape[1])):
            started = time.perf_counter()
            _logits, past = forward(session, cfg, np.array([[6]]), past=past)
            timings.append((time.perf_counter() - started) * 1000)
        p99 = float(np.percentile(timings, 99))
        metadata: Metadata = {"p99_ms": round(p99, 3), "p50_ms": round(float(
            np.median(timings)), 3), "steps": len(timings), "budget_ms": budget_ms,
            "prompt_tokens": int(ids.shape[1])}
        return CheckOutcome(
            "decode_latency", p99 <= budget_ms,
            f"one decode step: p99 {p99:.2f} ms (budget {budget_ms:g} ms)", metadata)

    return _guarded("decode_latency", run)

