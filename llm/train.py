"""Training the language model on CPU: JAX, AdamW written out, a fixed seed, a time budget.

The token stream is every training document as ``<|bos|> text <|eos|>``, one after the other;
a batch is ``batch_size`` windows of ``seq_len + 1`` tokens at offsets drawn from a numpy
generator seeded with ``seed``. The learning rate warms up over ``warmup_steps`` and then
follows a cosine to a tenth of its peak over the run's planned step count:
``min(max_steps, steps that fit the time budget at the measured step time)``, estimated after
the warm-up and again every 25 steps (other work on the machine changes the step time). When
``max_steps`` binds (the run ends before its budget) the same seed gives the same weights;
a slower (or busier) machine fits fewer steps in the same budget, and the run stops at
the budget whatever the plan (the result records how many steps were run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.config import NamedConfig, Params, init_params, num_parameters
from llm.corpus import Corpus, corpus_hash, load_corpus
from llm.evaluate import unigram_perplexity
from llm.export import export_model
from llm.model import JaxParams, next_token_loss
from llm.tokenizer import train_tokenizer

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainResult:
    """A trained model and how it got there."""

    config: NamedConfig
    params: Params
    tokenizer_json: str
    seed: int
    steps: int
    seconds: float
    train_loss: float
    held_out_perplexity: float  # JAX, on the held-out windows
    unigram_perplexity: float  # the bar: add-one unigram model of the training tokens
    corpus_hash: str
    train_tokens: int
    held_out_tokens: int

    def summary(self) -> dict[str, Any]:
        return {
            "config": self.config.name, "seed": self.seed, "steps": self.steps,
            "seconds": round(self.seconds, 1), "train_loss": round(self.train_loss, 4),
            "held_out_perplexity": round(self.held_out_perplexity, 2),
            "unigram_perplexity": round(self.unigram_perplexity, 2),
            "parameters": num_parameters(self.params), "corpus_sha256": self.corpus_hash,
            "train_tokens": self.train_tokens, "held_out_tokens": self.held_out_tokens,
        }

    def onnx_bytes(self) -> bytes:
        """The exported artifact, with the training summary in its metadata."""
        meta = {f"roost.llm.training.{k}": str(v) for k, v in self.summary().items()}
        return export_model(self.config.model, self.params, self.tokenizer_json,
                            extra_metadata=meta)


def token_stream(encode: Callable[[str], list[int]], texts: list[str], eos: int) -> np.ndarray:
    """``<|bos|> text <|eos|>`` for every text (``encode`` adds the bos), concatenated."""
    ids: list[int] = []
    for text in texts:
        ids += encode(text) + [eos]
    return np.asarray(ids, np.int32)


def train(named: NamedConfig, seed: int = 0, minutes: float | None = None,
          corpus: Corpus | None = None, log: Log | None = None,
          max_steps: int | None = None) -> TrainResult:
    """Train the configuration ``named`` on ``corpus`` (the repo's text by default);
    ``max_steps`` overrides the configuration's."""
    settings, config = named.training, named.model
    budget = 60.0 * (settings.minutes if minutes is None else minutes)
    if budget <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if not 2 <= settings.seq_len <= config.max_positions:
        raise ValueError(f"training seq_len must be within 2..max_positions "
                         f"({config.max_positions}), got {settings.seq_len}")
    say = log or (lambda _msg: None)
    corpus = corpus or load_corpus()
    tokenizer = train_tokenizer(corpus.train_texts(), config.vocab_size)

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text).ids)

    train_ids = token_stream(encode, corpus.train_texts(), config.eos_token_id)
    held_ids = token_stream(encode, corpus.held_out_texts(), config.eos_token_id)
    window = settings.seq_len + 1
    if len(train_ids) <= window or len(held_ids) < 2:
        raise ValueError("corpus: too little text for one training window and a held-out split")
    unigram = unigram_perplexity(train_ids.tolist(), held_ids.tolist(), config.vocab_size)
    say(f"corpus: {len(train_ids)} training tokens, {len(held_ids)} held out; "
        f"unigram perplexity {unigram:.1f}")

    params: dict[str, jax.Array] = {k: jnp.asarray(v) for k, v in
                                    init_params(config, seed).items()}
    state = _adam_init(params)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    step_cap = settings.max_steps if max_steps is None else max_steps
    total_steps = step_cap
    loss = float("nan")
    step, first_done = 0, started
    while step < total_steps and time.perf_counter() - started < budget:
        starts = rng.integers(0, len(train_ids) - window, size=settings.batch_size)
        batch = jnp.asarray(np.stack([train_ids[s:s + window] for s in starts]))
        lr = _learning_rate(named, step, total_steps)
        params, state, loss_value = _train_step(named, params, state, batch, jnp.float32(lr))
        step += 1
        if step == 1:  # compiled: the step time is measured from here
            loss_value.block_until_ready()
            first_done = time.perf_counter()
        elif step >= min(max(2, settings.warmup_steps), total_steps) and (
                step % REPLAN_EVERY == 0 or step == settings.warmup_steps):
            loss_value.block_until_ready()
            now = time.perf_counter()
            total_steps = _fit_budget(step_cap, step, (now - first_done) / (step - 1),
                                      budget - (now - started))
        if step % settings.eval_every == 0 or step == total_steps or (
                time.perf_counter() - started >= budget):
            loss = float(loss_value)
            say(f"step {step}/{total_steps}: loss {loss:.3f} "
                f"({time.perf_counter() - started:.0f} s)")
    seconds = time.perf_counter() - started
    held_ppl = _held_out_perplexity(named, params, held_ids)
    say(f"trained {step} steps in {seconds:.0f} s: held-out perplexity {held_ppl:.1f} "
        f"(unigram {unigram:.1f})")
    return TrainResult(
        config=named, params={k: np.asarray(v, np.float32) for k, v in params.items()},
        tokenizer_json=tokenizer.to_str(), seed=seed, steps=step, seconds=seconds,
        train_loss=loss, held_out_perplexity=held_ppl, unigram_perplexity=unigram,
        corpus_hash=corpus_hash(corpus), train_tokens=len(train_ids),
        held_out_tokens=len(held_ids),
    )


def _fit_budget(cap: int, step: int, step_seconds: float, remaining: float) -> int:
    """The run's planned step count at the measured step time (capped by ``cap``)."""
    fitting = step + int(max(0.0, remaining) / max(step_seconds, 1e-6))
    return max(step, min(cap, fitting))


def _learning_rate(named: NamedConfig, step: int, total: int) -> float:
    peak, warmup = named.training.learning_rate, named.training.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


REPLAN_EVERY = 25  # steps between re-estimates of what fits the budget (the load may change)
AdamState = tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]
BETA1, BETA2, ADAM_EPS, CLIP_NORM = 0.9, 0.95, 1e-8, 1.0


def _adam_init(params: dict[str, jax.Array]) -> AdamState:
    zeros = {k: jnp.zeros_like(v) for k, v in params.items()}
    return zeros, dict(zeros), jnp.zeros((), jnp.int32)


@partial(jax.jit, static_argnums=0)  # compiled once per configuration and batch shape
def _train_step(named: NamedConfig, params: dict[str, jax.Array], state: AdamState,
                batch: jax.Array, lr: jax.Array
                ) -> tuple[dict[str, jax.Array], AdamState, jax.Array]:
    """One AdamW step: gradients clipped to a global norm of 1, decay on matrices only."""
    loss, grads = jax.value_and_grad(partial(next_token_loss, named.model))(params, batch)
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
    clip = jnp.minimum(1.0, CLIP_NORM / (norm + 1e-6))
    m, v, count = state
    count = count + 1
    new_params, new_m, new_v = {}, {}, {}
    for key, param in params.items():
        g = grads[key] * clip
        new_m[key] = BETA1 * m[key] + (1 - BETA1) * g
        new_v[key] = BETA2 * v[key] + (1 - BETA2) * g * g
        m_hat = new_m[key] / (1 - BETA1 ** count)
        v_hat = new_v[key] / (1 - BETA2 ** count)
        decay = named.training.weight_decay * param if param.ndim == 2 else 0.0
        new_params[key] = param - lr * (m_hat / (jnp.sqrt(v_hat) + ADAM_EPS) + decay)
    return new_params, (new_m, new_v, count), loss


def _held_out_perplexity(named: NamedConfig, params: JaxParams, held_ids: np.ndarray) -> float:
    """exp(mean loss) over consecutive held-out windows (the last, shorter one dropped when
    there are others)."""
    window = named.training.seq_len + 1
    windows = [held_ids[s:s + window] for s in range(0, len(held_ids) - 1, window - 1)]
    full = [w for w in windows if len(w) == window] or [windows[0]]
    losses = [float(_loss(named.model, params, jnp.asarray(w)[None])) for w in full]
    return math.exp(float(np.mean(losses)))


_loss = jax.jit(next_token_loss, static_argnums=0)
