"""Random-weights language models for the serving tests (llm.export; one tokenizer training)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest

from llm.config import ModelConfig, init_params, load_named_config
from llm.export import build_random_model, export_model, read_metadata

LONG = ModelConfig(n_layers=2, n_heads=2, d_model=32, vocab_size=384, max_positions=8192)
"""The tiny model's shape with room for long generations (mid-batch and cancel tests)."""

MakeLM = Callable[..., bytes]


@pytest.fixture(scope="session")
def make_lm() -> MakeLM:
    """``make_lm(seed, config=tiny)``: the ONNX bytes of a random model (cached)."""
    tiny = load_named_config("tiny").model
    tokenizer = read_metadata(build_random_model(tiny, seed=0))["roost.llm.tokenizer"]

    @cache
    def make(seed: int = 0, config: ModelConfig = tiny) -> bytes:
        return export_model(config, init_params(config, seed), tokenizer)

    return make


@pytest.fixture(scope="session")
def long_config() -> ModelConfig:
    return LONG
