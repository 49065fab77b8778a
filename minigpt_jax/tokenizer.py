"""One way to name a tokenizer everywhere: `"byte"`, `"gpt2"`, or a path to a tokenizer file.

Every tokenizer offers `encode(text)`, `encode_array(text)` (the same ids as a numpy array),
`encode_batch(texts)`, `decode(ids)`, `vocab_size`, `eot_id` and `identity` (name, sha256,
vocab_size, eot_id): the identity is recorded with shards and runs so that training refuses shards
made by another tokenizer and generation decodes with the right one.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import numpy as np


class TextTokenizer(Protocol):
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...
    def encode_array(self, text: str) -> np.ndarray: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def decode(self, ids: list[int]) -> str: ...
    @property
    def identity(self) -> dict[str, Any]: ...


EOT_TEXT = "<|endoftext|>"


class ByteTokenizer:
    """The built-in tokenizer: the 256 bytes of UTF-8 plus end-of-text (id 256).

    Needs no file and no download, and is what a next-character model uses.
    """

    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        # Bytes between end-of-text markers decode separately, so a marker never splits a character.
        parts, run = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                parts.append(run.decode("utf-8", errors="replace") + EOT_TEXT)
                run = bytearray()
            else:
                run.append(i)
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    @property
    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(b"minigpt_jax byte tokenizer v1").hexdigest()
        return {
            "name": "byte",
            "sha256": digest,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
        }


def load_tokenizer(spec: str) -> TextTokenizer:
    """`"byte"` (built in), `"gpt2"` (tiktoken's GPT-2), or a path to a tokenizer/.tiktoken file."""
    if spec == "byte":
        return ByteTokenizer()
    from minigpt_jax.bpe import Tokenizer  # the BPE machinery loads only when asked for

    if spec == "gpt2":
        return Tokenizer.gpt2()
    return Tokenizer.load(spec)


def same_tokenizer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("sha256") == b.get("sha256") and a.get("vocab_size") == b.get("vocab_size")
