"""Perplexity of a language-model artifact on held-out text, through ONNX Runtime alone.

Everything comes from the ONNX file: the configuration and the tokenizer are its metadata
(docs/llm.md). Each text is encoded (``<|bos|>`` first, ``<|eos|>`` appended, as in training),
cut into windows of at most ``max_positions`` tokens, and every token after the first of a
window is scored; perplexity is ``exp`` of the mean negative log-likelihood over them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from llm.config import ModelConfig
from llm.export import META_CONFIG, META_TOKENIZER, read_metadata
from llm.tokenizer import tokenizer_from_json


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    tokens: int  # tokens scored
    mean_nll: float


def forward(
    session: ort.InferenceSession,
    config: ModelConfig,
    input_ids: np.ndarray,
    position_ids: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    past: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One call of the contract's graph: logits and the present cache (k0, v0, k1, v1, ...).

    Positions default to continuing the cache, the mask to all ones.
    """
    batch, new = input_ids.shape
    cached = 0 if past is None else past[0].shape[2]
    if position_ids is None:
        position_ids = np.tile(np.arange(cached, cached + new), (batch, 1))
    if attention_mask is None:
        attention_mask = np.ones((batch, cached + new), np.int64)
    feed: dict[str, np.ndarray] = {
        "input_ids": np.asarray(input_ids, np.int64),
        "position_ids": np.asarray(position_ids, np.int64),
        "attention_mask": np.asarray(attention_mask, np.int64),
    }
    empty = np.zeros((batch, config.n_heads, 0, config.head_dim), np.float32)
    for i in range(config.n_layers):
        feed[f"past_key_values.{i}.key"] = empty if past is None else past[2 * i]
        feed[f"past_key_values.{i}.value"] = empty if past is None else past[2 * i + 1]
    logits, *present = session.run(None, feed)
    return logits, present


def token_windows(token_ids: list[int], window: int) -> list[list[int]]:
    """Consecutive windows of ``window`` tokens; each after the first repeats the previous
    window's last token as its context, so every token but the very first is scored once."""
    if len(token_ids) < 2:
        return []
    windows, start = [], 0
    while start < len(token_ids) - 1:
        windows.append(token_ids[start:start + window])
        start += window - 1
    return windows


def perplexity(model_bytes: bytes, texts: Sequence[str], batch_size: int = 8) -> Perplexity:
    """Perplexity of the ONNX language model ``model_bytes`` on ``texts``."""
    meta = read_metadata(model_bytes)
    for key in (META_CONFIG, META_TOKENIZER):
        if key not in meta:
            raise ValueError(f"artifact: metadata {key!r} missing: not a Roost language model")
    config = ModelConfig.from_contract_json(meta[META_CONFIG])
    tokenizer = tokenizer_from_json(meta[META_TOKENIZER])
    windows: list[list[int]] = []
    for text in texts:
        ids = tokenizer.encode(text).ids + [config.eos_token_id]
        windows += token_windows(ids, config.max_positions)
    if not windows:
        raise ValueError("held-out text: no text to score (every text is empty)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    windows.sort(key=len)  # batch windows of similar length: less padding
    total_nll, scored = 0.0, 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        nll, count = _score_batch(session, config, chunk)
        total_nll += nll
        scored += count
    mean = total_nll / scored
    return Perplexity(perplexity=math.exp(mean), tokens=scored, mean_nll=mean)


def _score_batch(session: ort.InferenceSession, config: ModelConfig,
                 windows: list[list[int]]) -> tuple[float, int]:
    """Summed NLL of each window's next-token predictions (right-padded, padding unscored)."""
    width = max(len(w) for w in windows)
    ids = np.zeros((len(windows), width), np.int64)
    mask = np.zeros((len(windows), width), np.int64)
    for row, window in enumerate(windows):
        ids[row, :len(window)] = window
        mask[row, :len(window)] = 1
    positions = np.tile(np.arange(width), (len(windows), 1))
    logits, _ = forward(session, config, ids, positions, mask)
    logits = logits[:, :-1].astype(np.float64)
    log_probs = logits - _logsumexp(logits)
    targets = ids[:, 1:]
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    scored = mask[:, 1:].astype(bool)
    return float(-picked[scored].sum()), int(scored.sum())


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return np.asarray(top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True)))


def unigram_perplexity(train_ids: Sequence[int], held_out_ids: Sequence[int],
                       vocab_size: int) -> float:
    """The bar a model must clear: add-one unigram frequencies of the training tokens."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1
    log_p = np.log(counts / counts.sum())
    return float(math.exp(-log_p[np.asarray(held_out_ids)].mean()))
