"""The ONNX graph keeps the contract of docs/llm.md: names, shapes, metadata, KV cache, padding."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

from llm.config import ModelConfig
from llm.evaluate import forward as run_onnx
from llm.export import read_metadata
from llm.tokenizer import apply_chat_template


def test_inputs_outputs_and_metadata(random_model: bytes, tiny_config: ModelConfig) -> None:
    session = ort.InferenceSession(random_model)
    names = [i.name for i in session.get_inputs()]
    assert names[:3] == ["input_ids", "position_ids", "attention_mask"]
    assert names[3:] == [f"past_key_values.{i}.{k}" for i in range(tiny_config.n_layers)
                         for k in ("key", "value")]
    assert [o.name for o in session.get_outputs()] == ["logits"] + [
        f"present.{i}.{k}" for i in range(tiny_config.n_layers) for k in ("key", "value")]
    meta = read_metadata(random_model)
    config = json.loads(meta["roost.llm.config"])
    assert config["head_dim"] == tiny_config.head_dim
    assert config["vocab_size"] == tiny_config.vocab_size
    tokenizer = Tokenizer.from_str(meta["roost.llm.tokenizer"])
    assert tokenizer.get_vocab_size() == tiny_config.vocab_size
    assert tokenizer.encode("hello").ids[0] == config["bos_token_id"]
    prompt = apply_chat_template([{"role": "user", "content": "hi"}],
                                 meta["roost.llm.chat_template"])
    assert prompt == "<|user|>hi<|eos|><|assistant|>"
    onnx.checker.check_model(onnx.load_from_string(random_model))


def test_kv_cache_decoding_equals_full_forward(random_model: bytes,
                                               tiny_config: ModelConfig) -> None:
    session = ort.InferenceSession(random_model)
    ids = np.random.default_rng(1).integers(0, tiny_config.vocab_size, size=(2, 12))
    full, _ = run_onnx(session, tiny_config, ids)
    logits, past = run_onnx(session, tiny_config, ids[:, :5])  # prefill
    steps = [logits]
    for t in range(5, 12):
        logits, past = run_onnx(session, tiny_config, ids[:, t:t + 1], past=past)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=1e-4)
    assert past[0].shape == (2, tiny_config.n_heads, 12, tiny_config.head_dim)


def test_left_padding_gives_the_unpadded_logits(random_model: bytes,
                                                tiny_config: ModelConfig) -> None:
    session = ort.InferenceSession(random_model)
    rng = np.random.default_rng(2)
    long_ids = rng.integers(2, tiny_config.vocab_size, size=(1, 9))
    short_ids = rng.integers(2, tiny_config.vocab_size, size=(1, 6))
    alone_long, _ = run_onnx(session, tiny_config, long_ids)
    alone_short, _ = run_onnx(session, tiny_config, short_ids)
    pad = 3
    batch_ids = np.concatenate([long_ids, np.concatenate([np.zeros((1, pad), np.int64),
                                                          short_ids], axis=1)])
    positions = np.stack([np.arange(9), np.concatenate([np.zeros(pad), np.arange(6)])])
    mask = np.stack([np.ones(9), np.concatenate([np.zeros(pad), np.ones(6)])]).astype(np.int64)
    logits, past = run_onnx(session, tiny_config, batch_ids, positions, mask)
    np.testing.assert_allclose(logits[0], alone_long[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits[1, pad:], alone_short[0], atol=1e-4, rtol=1e-4)
    # one decode step for both rows: the padded row keeps its mask and its own position
    nxt = np.array([[5], [7]])
    step, _ = run_onnx(session, tiny_config, nxt, np.array([[9], [6]]),
                       np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1), past)
    alone_short_next, _ = run_onnx(session, tiny_config,
                                   np.concatenate([short_ids, [[7]]], axis=1))
    np.testing.assert_allclose(step[1, 0], alone_short_next[0, -1], atol=1e-4, rtol=1e-4)
    assert np.isfinite(logits).all()
