"""Token ids back to text, one token at a time: never half a UTF-8 character, never stop text.

:class:`IncrementalDetokenizer` maps each token to its bytes (byte-level BPE: the token's
characters through GPT-2's byte alphabet; special tokens are no text) and feeds them to an
incremental UTF-8 decoder, which holds back an incomplete character until its last byte arrives.
:class:`StopMatcher` holds back the tail of the text that could still become a stop string, so a
stop string split over several tokens is found and never emitted.
"""

from __future__ import annotations

import codecs
import json
from functools import cache

from tokenizers import Tokenizer


@cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes_table(tokenizer: Tokenizer) -> list[bytes]:
    """Each token id's bytes (special tokens: ``b""``).

    Byte-level BPE only (the decoder must be ``ByteLevel``); any other tokenizer falls back to
    decoding each token on its own, which is exact for tokenizers whose tokens are whole
    characters.
    """
    spec = json.loads(tokenizer.to_str())
    decoder = spec.get("decoder") or {}
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    byte_level = decoder.get("type") == "ByteLevel"
    table = _unicode_to_byte()
    out: list[bytes] = []
    for token_id in range(tokenizer.get_vocab_size()):
        piece = tokenizer.id_to_token(token_id)
        if piece is None or token_id in special:
            out.append(b"")
        elif byte_level and all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        else:
            out.append(tokenizer.decode([token_id], skip_special_tokens=True).encode())
    return out


class IncrementalDetokenizer:
    """Text deltas of a growing token sequence; only whole UTF-8 characters come out."""

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """The text this token completes ("" while a character is still incomplete)."""
        piece = self._table[token_id] if 0 <= token_id < len(self._table) else b""
        return self._decoder.decode(piece, final=False)

    def flush(self) -> str:
        """What is left at the end (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Holds back text that might be the start of a stop string; finds stops across tokens."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text safe to emit now; sets :attr:`stopped` when a stop string appeared (the
        stop string and anything after it are dropped)."""
        if not self.stops:
            return text
        pending = self._pending + text
        first = -1
        for stop in self.stops:
            at = pending.find(stop)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first >= 0:
            self._pending = ""
            self.stopped = True
            return pending[:first]
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:n]):
                    hold = n
                    break
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """The held-back text, when generation ended without a stop string."""
        out, self._pending = self._pending, ""
        return out
