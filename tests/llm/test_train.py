"""Training the tiny configuration: it learns (beats the unigram bar), the ONNX export computes
the JAX forward pass, and evaluation from the artifact alone agrees."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest

from llm.config import load_named_config
from llm.corpus import load_corpus
from llm.evaluate import forward as onnx_forward
from llm.evaluate import perplexity
from llm.model import forward
from llm.train import TrainResult, train

jax_forward = jax.jit(forward, static_argnums=0)


@pytest.fixture(scope="module")
def trained(tiny_trained: TrainResult) -> TrainResult:
    return tiny_trained


def test_tiny_training_beats_the_unigram_bar(trained: TrainResult) -> None:
    assert trained.steps == load_named_config("tiny").training.max_steps
    assert trained.held_out_perplexity < 0.95 * trained.unigram_perplexity


def test_onnx_runtime_equals_the_jax_forward_pass(trained: TrainResult) -> None:
    config = trained.config.model
    session = ort.InferenceSession(trained.onnx_bytes())
    ids = np.random.default_rng(3).integers(0, config.vocab_size, size=(2, 20))
    expected = np.asarray(jax_forward(config, {k: jnp.asarray(v) for k, v in
                                               trained.params.items()}, jnp.asarray(ids)))
    logits, _ = onnx_forward(session, config, ids)
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-4)
    # left padding: the JAX mask matches the graph's
    mask = np.array([[1] * 20, [0] * 4 + [1] * 16])
    positions = np.array([list(range(20)), [0] * 4 + list(range(16))])
    padded = np.asarray(jax_forward(config, {k: jnp.asarray(v) for k, v in
                                             trained.params.items()},
                                    jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask)))
    logits, _ = onnx_forward(session, config, ids, positions, mask)
    np.testing.assert_allclose(logits[1, 4:], padded[1, 4:], atol=2e-4, rtol=1e-4)


def test_artifact_perplexity_matches_training_and_beats_random(trained: TrainResult) -> None:
    held_out = load_corpus().held_out_texts()
    measured = perplexity(trained.onnx_bytes(), held_out)
    assert measured.tokens > 1000
    assert measured.perplexity == pytest.approx(trained.held_out_perplexity, rel=0.05)
    assert measured.perplexity < trained.unigram_perplexity


def test_same_seed_same_weights() -> None:
    named = load_named_config("tiny")
    a, b = train(named, seed=7, max_steps=5), train(named, seed=7, max_steps=5)
    assert a.steps == b.steps == 5
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
