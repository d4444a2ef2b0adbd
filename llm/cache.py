"""Trained models cached under ``$ROOST_HOME/llm/``: train once, reuse at every ``roost up``.

The key is a sha256 of the named configuration (model and training settings), the corpus hash
(:func:`llm.corpus.corpus_hash`), the seed and the time budget: editing the docs, the config or
the seed trains a new model; anything else reuses ``<name>-<key>.onnx`` and its ``.json``
summary. Files are written to a temporary name and renamed, so a killed run leaves no half file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.config import load_named_config
from llm.corpus import Corpus, corpus_hash, load_corpus
from llm.train import Log, TrainResult

CACHE_DIR = "llm"


@dataclass(frozen=True)
class CachedModel:
    path: Path
    summary: dict[str, Any]  # the training summary (TrainResult.summary) plus the key
    trained_now: bool

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def cache_key(config_name: str, seed: int, minutes: float | None, corpus: Corpus) -> str:
    named = load_named_config(config_name)
    budget = named.training.minutes if minutes is None else minutes
    material = json.dumps({
        "model": dataclasses.asdict(named.model), "training": dataclasses.asdict(named.training),
        "corpus": corpus_hash(corpus), "seed": seed, "minutes": budget,
    }, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def trained_model(home: Path, config_name: str = "demo", seed: int = 0,
                  minutes: float | None = None, log: Log | None = None,
                  corpus: Corpus | None = None,
                  good_enough: Callable[[dict[str, Any]], bool] | None = None) -> CachedModel:
    """The cached model for these inputs, trained (and cached) first if there is none.

    ``good_enough`` judges a cached model's summary: one it refuses (a run starved of CPU that
    then failed validation, say) is trained again instead of being reused forever.
    """
    from llm.train import train

    corpus = corpus or load_corpus()
    key = cache_key(config_name, seed, minutes, corpus)
    path = cache_path(home, config_name, key)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        summary = json.loads(meta_path.read_text())
        if good_enough is None or good_enough(summary):
            return CachedModel(path, summary, trained_now=False)
        if log is not None:
            log(f"cached model {path.name} is not good enough ({summary}); training again")
    result = train(load_named_config(config_name), seed=seed, minutes=minutes, corpus=corpus,
                   log=log)
    return store(home, key, result)


def cache_path(home: Path, config_name: str, key: str) -> Path:
    return home / CACHE_DIR / f"{config_name}-{key}.onnx"


def store(home: Path, key: str, result: TrainResult) -> CachedModel:
    """Write a trained model and its summary into the cache under ``key``."""
    path = cache_path(home, result.config.name, key)
    summary = {**result.summary(), "cache_key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, result.onnx_bytes())
    _write_atomic(path.with_suffix(".json"), json.dumps(summary, indent=2).encode())
    return CachedModel(path, summary, trained_now=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
