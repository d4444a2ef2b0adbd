"""The byte-level BPE tokenizer (Hugging Face ``tokenizers``) and the chat template.

Special tokens take the first ids, in this order: ``<|bos|>`` (0), ``<|eos|>`` (1), then the
chat role markers ``<|system|>``, ``<|user|>``, ``<|assistant|>``. ``encode`` with
``add_special_tokens=True`` (the default) prepends ``<|bos|>`` (a TemplateProcessing
post-processor), so an engine encoding a prompt gets the same start the model was trained on.

The chat template (stored in a version's ONNX file as ``roost.llm.chat_template``) is the text
of one message with ``{role}`` and ``{content}`` markers: :data:`CHAT_TEMPLATE`,
``<|{role}|>{content}<|eos|>``. A conversation is the messages one after the other; the
generation prompt is the template's text before ``{content}`` with role ``assistant``. The
reply ends with ``<|eos|>``, the model's end-of-sequence token, so one stop token serves plain
completions and chat. :func:`apply_chat_template` is the reference implementation (no JAX).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS = "<|bos|>", "<|eos|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = (BOS, EOS, *(f"<|{role}|>" for role in ROLES))
BOS_ID, EOS_ID = 0, 1
CHAT_TEMPLATE = "<|{role}|>{content}" + EOS


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer of exactly ``vocab_size`` tokens trained on ``texts``."""
    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (256 bytes + special tokens), "
                         f"got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)],
    )
    if tokenizer.token_to_id(BOS) != BOS_ID or tokenizer.token_to_id(EOS) != EOS_ID:
        raise RuntimeError("tokenizer: special tokens did not get the first ids")
    actual = tokenizer.get_vocab_size()
    if actual != vocab_size:
        raise ValueError(f"tokenizer: the corpus yields only {actual} tokens, vocab_size "
                         f"{vocab_size} asked for: lower vocab_size or add text")
    return tokenizer


def tokenizer_from_json(text: str) -> Tokenizer:
    """A tokenizer from its JSON (the ``roost.llm.tokenizer`` metadata)."""
    return Tokenizer.from_str(text)


def apply_chat_template(
    messages: Sequence[Mapping[str, str]],
    template: str = CHAT_TEMPLATE,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text of a conversation (OpenAI-style ``{"role", "content"}`` messages)."""
    if "{role}" not in template or "{content}" not in template:
        raise ValueError("chat template: must contain the markers {role} and {content}")
    parts: list[str] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role: expected one of {list(ROLES)}, "
                             f"got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content: expected a string")
        parts.append(template.replace("{role}", role).replace("{content}", content))
    if add_generation_prompt:
        parts.append(template.split("{content}", 1)[0].replace("{role}", "assistant"))
    return "".join(parts)
