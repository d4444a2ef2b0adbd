"""The model side of the engine: one ONNX Runtime session on a docs/llm.md artifact.

:class:`CausalLM` reads the configuration, tokenizer and chat template from the file's
``metadata_props`` and runs the two calls the engine needs:

* :meth:`CausalLM.prefill`: one prompt, no cache (P = 0), no padding; the prompt's keys and
  values go into the sequence's cache buffer;
* :meth:`CausalLM.decode`: one new token for each of B sequences; their caches are
  left-padded to the longest (padding masked out by ``attention_mask``, explicit
  ``position_ids``), and only the new position's keys and values are copied back. While the
  batch stays the same from one step to the next, the previous step's ``present`` outputs are
  fed back as the ``past`` inputs as they are (no copy); the padded batch is assembled again
  from the sequences' buffers only when a sequence joins or leaves.

A sequence's cache is a :class:`KVCache` buffer of its reserved size (prompt + ``max_tokens``
positions), allocated once when the scheduler admits it: nothing grows while it decodes.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from registry.errors import InvalidRequest
from serving.backends.onnx import execution_providers

CONFIG_KEY = "roost.llm.config"
TOKENIZER_KEY = "roost.llm.tokenizer"
CHAT_TEMPLATE_KEY = "roost.llm.chat_template"
DEFAULT_CHAT_TEMPLATE = "<|{role}|>{content}<|eos|>"
_SERIALS = itertools.count()


@dataclass(frozen=True)
class LMConfig:
    """The ``roost.llm.config`` metadata (docs/llm.md)."""

    n_layers: int
    n_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    bos_token_id: int
    eos_token_id: int

    @property
    def bytes_per_token(self) -> int:
        """Cache bytes one position takes (keys and values of every layer, float32)."""
        return self.n_layers * 2 * self.n_heads * self.head_dim * 4


def parse_config(metadata: dict[str, str]) -> LMConfig:
    raw = metadata.get(CONFIG_KEY)
    if raw is None:
        raise InvalidRequest(f"artifact: no '{CONFIG_KEY}' metadata (see docs/llm.md)")
    try:
        data = json.loads(raw)
        return LMConfig(**{k: int(data[k]) for k in LMConfig.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"artifact: '{CONFIG_KEY}' is not a valid config: {exc}") from None


class KVCache:
    """One sequence's keys and values: [layers, 2, heads, capacity, head_dim] float32."""

    def __init__(self, config: LMConfig, capacity: int) -> None:
        self.buffer = np.zeros(
            (config.n_layers, 2, config.n_heads, capacity, config.head_dim), np.float32
        )
        self.length = 0
        self.serial = next(_SERIALS)

    @property
    def capacity(self) -> int:
        return int(self.buffer.shape[3])


class CausalLM:
    """One ONNX Runtime session on a text-generation artifact, with its tokenizer."""

    def __init__(self, model_bytes: bytes, intra_op_threads: int = 1, provider: str = "cpu"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(
            model_bytes, options, providers=execution_providers(provider)
        )
        self.providers: list[str] = list(self.session.get_providers())
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.config = parse_config(metadata)
        if TOKENIZER_KEY not in metadata:
            raise InvalidRequest(f"artifact: no '{TOKENIZER_KEY}' metadata (see docs/llm.md)")
        self.tokenizer = Tokenizer.from_str(metadata[TOKENIZER_KEY])
        self.chat_template = metadata.get(CHAT_TEMPLATE_KEY, DEFAULT_CHAT_TEMPLATE)
        layers = self.config.n_layers
        self._outputs = ["logits"] + [
            f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")
        ]
        self._past = [
            (f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(layers)
        ]
        # the last decode step's batch: (cache serials and lengths, presents, attention mask)
        self._last: tuple[list[tuple[int, int]], list[np.ndarray], np.ndarray] | None = None

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        results = self.session.run(self._outputs, feeds)
        return results[0], results[1:]

    def prefill(self, prompt: list[int], cache: KVCache) -> np.ndarray:
        """Run the whole prompt; fills ``cache``; the logits [V] of its last position."""
        cfg = self.config
        n = len(prompt)
        empty = np.zeros((1, cfg.n_heads, 0, cfg.head_dim), np.float32)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([prompt], np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None, :],
            "attention_mask": np.ones((1, n), np.int64),
        }
        for key_name, value_name in self._past:
            feeds[key_name] = empty
            feeds[value_name] = empty
        logits, presents = self._run(feeds)
        for i in range(cfg.n_layers):
            cache.buffer[i, 0, :, :n] = presents[2 * i][0]
            cache.buffer[i, 1, :, :n] = presents[2 * i + 1][0]
        cache.length = n
        return np.asarray(logits[0, -1])

    def decode(self, tokens: list[int], caches: list[KVCache]) -> np.ndarray:
        """One step for B sequences (their last tokens); appends to each cache; logits [B, V]."""
        cfg = self.config
        batch = len(tokens)
        lengths = [c.length for c in caches]
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray(tokens, np.int64)[:, None],
            "position_ids": np.asarray(lengths, np.int64)[:, None],
        }
        members = [(c.serial, c.length) for c in caches]
        last = self._last
        if last is not None and last[0] == [(s, n - 1) for s, n in members]:
            # the same batch as the last step: its outputs are this step's cache
            _, presents, previous = last
            feeds["attention_mask"] = mask = np.concatenate(
                [previous, np.ones((batch, 1), np.int64)], axis=1
            )
            for i, (key_name, value_name) in enumerate(self._past):
                feeds[key_name] = presents[2 * i]
                feeds[value_name] = presents[2 * i + 1]
        else:
            longest = max(lengths)
            past = np.zeros(
                (cfg.n_layers, 2, batch, cfg.n_heads, longest, cfg.head_dim), np.float32
            )
            mask = np.zeros((batch, longest + 1), np.int64)
            for b, cache in enumerate(caches):
                n = cache.length
                if n:
                    past[:, :, b, :, longest - n :] = cache.buffer[:, :, :, :n]
                mask[b, longest - n :] = 1
            feeds["attention_mask"] = mask
            for i, (key_name, value_name) in enumerate(self._past):
                feeds[key_name] = past[i, 0]
                feeds[value_name] = past[i, 1]
        logits, presents = self._run(feeds)
        for b, cache in enumerate(caches):
            n = cache.length
            for i in range(cfg.n_layers):
                cache.buffer[i, 0, :, n] = presents[2 * i][b, :, -1]
                cache.buffer[i, 1, :, n] = presents[2 * i + 1][b, :, -1]
            cache.length = n + 1
        self._last = ([(c.serial, c.length) for c in caches], presents, mask)
        return np.asarray(logits[:, -1])

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's own special tokens, e.g. BOS)."""
        return list(self.tokenizer.encode(text).ids)

    def chat_prompt(self, messages: list[tuple[str, str]]) -> str:
        """The prompt text of a conversation: the template per message, then the assistant's
        opening (the template's text before ``{content}``)."""
        template = self.chat_template
        parts = [template.replace("{role}", r).replace("{content}", c) for r, c in messages]
        parts.append(template.split("{content}", 1)[0].replace("{role}", "assistant"))
        return "".join(parts)
