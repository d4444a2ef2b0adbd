"""The tokenizer is trained deterministically on the repo's text; the chat template's errors name
the field."""

from __future__ import annotations

import pytest

from llm.corpus import load_corpus, load_documents, split_corpus
from llm.tokenizer import BOS_ID, EOS_ID, apply_chat_template, train_tokenizer


def test_same_corpus_same_tokenizer_and_special_ids() -> None:
    corpus = load_corpus()
    assert corpus.held_out and corpus.train
    first = train_tokenizer(corpus.train_texts(), 384)
    assert first.to_str() == train_tokenizer(corpus.train_texts(), 384).to_str()
    assert first.get_vocab_size() == 384
    assert (first.token_to_id("<|bos|>"), first.token_to_id("<|eos|>")) == (BOS_ID, EOS_ID)
    text = "Roost serves models: café ✓"
    encoded = first.encode(text).ids
    assert encoded[0] == BOS_ID
    assert first.decode(encoded) == text  # byte-level: any text round-trips


def test_held_out_split_is_every_tenth_document_in_a_fixed_order() -> None:
    documents = load_documents()
    assert documents[0].name == "README.md" and documents == load_documents()
    corpus = split_corpus(documents)
    assert list(corpus.held_out) == documents[9::10]
    assert len(corpus.train) + len(corpus.held_out) == len(documents)


def test_chat_template() -> None:
    prompt = apply_chat_template([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi {there}"}])
    assert prompt == "<|system|>Be brief.<|eos|><|user|>Hi {there}<|eos|><|assistant|>"
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        apply_chat_template([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_tokenizer(["text"], 100)
