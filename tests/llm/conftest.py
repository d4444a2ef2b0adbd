"""Shared fixtures of the language-model tests: the tiny configuration and its random model."""

from __future__ import annotations

import pytest

from llm.config import ModelConfig, load_named_config
from llm.export import build_random_model
from llm.train import TrainResult, train


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return load_named_config("tiny").model


@pytest.fixture(scope="session")
def random_model(tiny_config: ModelConfig) -> bytes:
    return build_random_model(tiny_config, seed=0)



@pytest.fixture(scope="session")
def tiny_trained() -> TrainResult:
    """The tiny configuration trained once (a few seconds) for every test that needs weights."""
    return train(load_named_config("tiny"), seed=0, minutes=2.0)
