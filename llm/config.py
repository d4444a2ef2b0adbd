"""The language model's shape (:class:`ModelConfig`) and its weights as plain numpy arrays.

The weights are a flat ``dict[str, np.ndarray]`` with the names below; the JAX forward pass
(:mod:`llm.model`), the trainer (:mod:`llm.train`) and the ONNX export (:mod:`llm.export`) all
read the same dict, so the export needs numpy and onnx only (no JAX at serving time).

Named configurations live in ``llm/configs.yaml``: ``tiny`` (tests, trains in seconds) and
``demo`` (the served ``roost-lm``, trains in about two minutes).

Weights (d = d_model, f = d_ff, V = vocab_size, N = max_positions; ``h{i}.`` per layer)::

    tok_emb [V, d]      pos_emb [N, d]      (the LM head is tok_emb transposed: tied)
    h{i}.ln1_g, h{i}.ln1_b [d]              pre-attention LayerNorm
    h{i}.wq, h{i}.wk, h{i}.wv, h{i}.wo [d, d]   h{i}.bq, h{i}.bk, h{i}.bv, h{i}.bo [d]
    h{i}.ln2_g, h{i}.ln2_b [d]              pre-MLP LayerNorm
    h{i}.w1 [d, f]  h{i}.b1 [f]  h{i}.w2 [f, d]  h{i}.b2 [d]     GELU MLP
    lnf_g, lnf_b [d]                        final LayerNorm
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

Params = dict[str, np.ndarray]

CONFIGS_FILE = Path(__file__).with_name("configs.yaml")
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class ModelConfig:
    """A pre-LayerNorm decoder-only transformer with learned positions and tied embeddings."""

    n_layers: int
    n_heads: int
    d_model: int
    vocab_size: int
    max_positions: int
    d_ff: int = 0  # 0: 4 * d_model
    bos_token_id: int = 0
    eos_token_id: int = 1

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_model", "vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model config: d_model ({self.d_model}) must be a multiple of "
                             f"n_heads ({self.n_heads})")
        if self.d_ff < 0:
            raise ValueError(f"model config: d_ff must be >= 0, got {self.d_ff}")
        for name in ("bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"model config: {name} must be a token id below vocab_size")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    def contract_json(self) -> str:
        """The ``roost.llm.config`` metadata of docs/llm.md (plus ``d_ff``)."""
        return json.dumps({
            "n_layers": self.n_layers, "n_heads": self.n_heads, "head_dim": self.head_dim,
            "d_model": self.d_model, "vocab_size": self.vocab_size,
            "max_positions": self.max_positions, "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id, "d_ff": self.ff_dim,
        }, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config: unknown field(s) {unknown}; expected some of "
                             f"{sorted(known)}")
        return cls(**data)

    @classmethod
    def from_contract_json(cls, text: str) -> ModelConfig:
        """Read back :meth:`contract_json` (``head_dim`` is derived, not stored)."""
        data = json.loads(text)
        data.pop("head_dim", None)
        return cls.from_dict(data)


@dataclass(frozen=True)
class TrainingSettings:
    """How a named configuration trains: batch shape, learning rate, time and step budget."""

    seq_len: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    max_steps: int = 100_000
    minutes: float = 2.0
    eval_every: int = 100
    weight_decay: float = 0.01


@dataclass(frozen=True)
class NamedConfig:
    name: str
    model: ModelConfig
    training: TrainingSettings


def load_named_config(name: str) -> NamedConfig:
    """One named configuration from ``llm/configs.yaml`` (``tiny`` or ``demo``)."""
    data = yaml.safe_load(CONFIGS_FILE.read_text())
    if name not in data:
        raise ValueError(f"model config: unknown name {name!r}; expected one of {sorted(data)}")
    entry = data[name]
    return NamedConfig(
        name=name,
        model=ModelConfig.from_dict(entry["model"]),
        training=TrainingSettings(**entry.get("training", {})),
    )


def config_names() -> list[str]:
    return sorted(yaml.safe_load(CONFIGS_FILE.read_text()))


def init_params(config: ModelConfig, seed: int) -> Params:
    """GPT-2-style initialisation: N(0, 0.02), residual projections scaled by depth."""
    rng = np.random.default_rng(seed)
    d, f = config.d_model, config.ff_dim
    resid_std = 0.02 / np.sqrt(2 * config.n_layers)

    def normal(shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    params: Params = {
        "tok_emb": normal((config.vocab_size, d)),
        "pos_emb": normal((config.max_positions, d), 0.01),
        "lnf_g": np.ones(d, np.float32),
        "lnf_b": np.zeros(d, np.float32),
    }
    for i in range(config.n_layers):
        p = f"h{i}."
        params.update({
            p + "ln1_g": np.ones(d, np.float32), p + "ln1_b": np.zeros(d, np.float32),
            p + "wq": normal((d, d)), p + "bq": np.zeros(d, np.float32),
            p + "wk": normal((d, d)), p + "bk": np.zeros(d, np.float32),
            p + "wv": normal((d, d)), p + "bv": np.zeros(d, np.float32),
            p + "wo": normal((d, d), resid_std), p + "bo": np.zeros(d, np.float32),
            p + "ln2_g": np.ones(d, np.float32), p + "ln2_b": np.zeros(d, np.float32),
            p + "w1": normal((d, f)), p + "b1": np.zeros(f, np.float32),
            p + "w2": normal((f, d), resid_std), p + "b2": np.zeros(d, np.float32),
        })
    return params


def check_params(config: ModelConfig, params: Params) -> None:
    """Refuse weights whose names or shapes do not match the configuration."""
    d, f = config.d_model, config.ff_dim
    expected: dict[str, tuple[int, ...]] = {
        "tok_emb": (config.vocab_size, d), "pos_emb": (config.max_positions, d),
        "lnf_g": (d,), "lnf_b": (d,),
    }
    for i in range(config.n_layers):
        for name in ("ln1_g", "ln1_b", "bq", "bk", "bv", "bo", "ln2_g", "ln2_b", "b2"):
            expected[f"h{i}.{name}"] = (d,)
        for name in ("wq", "wk", "wv", "wo"):
            expected[f"h{i}.{name}"] = (d, d)
        expected[f"h{i}.w1"], expected[f"h{i}.b1"], expected[f"h{i}.w2"] = (d, f), (f,), (f, d)
    missing = sorted(set(expected) - set(params))
    if missing:
        raise ValueError(f"model weights: missing {missing[:5]}")
    for key, shape in expected.items():
        if tuple(params[key].shape) != shape:
            raise ValueError(f"model weights: {key} has shape {params[key].shape}, "
                             f"expected {shape}")


def num_parameters(params: Params) -> int:
    return int(sum(v.size for v in params.values()))
