"""The transformer's forward pass in JAX, for training (the ONNX export computes the same).

Pre-LayerNorm blocks (attention then a GELU MLP, each added to the residual stream), learned
position embeddings, the LM head tied to the token embedding. The attention mask matches the
ONNX graph's: a query sees the keys at or before it whose ``attention_mask`` is 1, and masked
scores get the same finite bias, so padded batches agree with :mod:`llm.export` too.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from llm.config import LAYER_NORM_EPS, ModelConfig
from llm.export import MASK_VALUE

JaxParams = Mapping[str, jax.Array]


def _layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * gamma + beta


def _attention(config: ModelConfig, params: JaxParams, p: str, h: jax.Array,
               bias: jax.Array) -> jax.Array:
    batch, length, _ = h.shape

    def split(x: jax.Array) -> jax.Array:  # [B, T, d] -> [B, H, T, D]
        return x.reshape(batch, length, config.n_heads, config.head_dim).transpose(0, 2, 1, 3)

    q = split(h @ params[p + "wq"] + params[p + "bq"])
    k = split(h @ params[p + "wk"] + params[p + "bk"])
    v = split(h @ params[p + "wv"] + params[p + "bv"])
    scores = (q @ k.transpose(0, 1, 3, 2)) / jnp.sqrt(float(config.head_dim)) + bias
    att = jax.nn.softmax(scores, axis=-1) @ v
    att = att.transpose(0, 2, 1, 3).reshape(batch, length, config.d_model)
    return att @ params[p + "wo"] + params[p + "bo"]


def forward(
    config: ModelConfig,
    params: JaxParams,
    input_ids: jax.Array,
    position_ids: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
) -> jax.Array:
    """Logits [B, T, V] of a whole sequence (no cache)."""
    batch, length = input_ids.shape
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(length), (batch, length))
    if attention_mask is None:
        attention_mask = jnp.ones((batch, length), jnp.int32)
    causal = jnp.tril(jnp.ones((length, length), bool))
    allowed = causal[None, None] & (attention_mask[:, None, None, :] == 1)
    bias = jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)
    x = params["tok_emb"][input_ids] + params["pos_emb"][position_ids]
    for i in range(config.n_layers):
        p = f"h{i}."
        x = x + _attention(config, params, p,
                           _layer_norm(x, params[p + "ln1_g"], params[p + "ln1_b"]), bias)
        h = _layer_norm(x, params[p + "ln2_g"], params[p + "ln2_b"])
        h = jax.nn.gelu(h @ params[p + "w1"] + params[p + "b1"], approximate=False)
        x = x + h @ params[p + "w2"] + params[p + "b2"]
    x = _layer_norm(x, params["lnf_g"], params["lnf_b"])
    return x @ params["tok_emb"].T


def next_token_loss(config: ModelConfig, params: JaxParams, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``."""
    logits = forward(config, params, tokens[:, :-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    return -picked.mean()
