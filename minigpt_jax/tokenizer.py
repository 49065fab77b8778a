"""One way to name a tokenizer everywhere: `"byte"`, `"gpt2"`, or a path to a tokenizer file.

Every tokenizer offers `encode(text)`, `encode_array(text)` (the same ids as a numpy array),
`encode_batch(texts)`, `decode(ids)`, `vocab_size`, `eot_id` and `identity` (name, sha256,
vocab_size, eot_id): the identity is recorded with shards and runs so that training refuses shards
made by another tokenizer and generation decodes with the right one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from minigpt_jax.errors import TokenizerError

BUILT_IN = ("byte", "gpt2")  # specs that name no file


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
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str, position: int) -> TokenizerError:
    """The error for a lone surrogate: a Python str can hold one (a JSON `\\ud800` escape without
    its pair), but it is not Unicode text and has no UTF-8 bytes, so no tokenizer can encode it
    in a way that decodes back. Every encoder refuses it rather than guess a replacement."""
    return TokenizerError(
        f"the text has a lone surrogate U+{ord(text[position]):04X} at character {position}: "
        f"it is not Unicode text and has no UTF-8 bytes; fix the input (a \\u escape without "
        f"its pair?) or replace it with U+FFFD"
    )


def check_text(text: str) -> None:
    """Raise `lone_surrogate` if `text` cannot be encoded as UTF-8."""
    if match := _SURROGATE.search(text):
        raise lone_surrogate(text, match.start())


class ByteTokenizer:
    """The built-in tokenizer: the 256 bytes of UTF-8 plus end-of-text (id 256).

    Needs no file and no download, and is what a next-character model uses.
    """

    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(self._utf8(text))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(self._utf8(text), np.uint8)

    @staticmethod
    def _utf8(text: str) -> bytes:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise lone_surrogate(text, e.start) from None

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


def tokenizer_record(spec: str, tokenizer: TextTokenizer) -> dict[str, Any]:
    """What shards and runs record of their tokenizer: {spec, name, sha256, vocab_size, eot_id}.

    `spec` is what `load_tokenizer` takes back (a file spec relative to the data directory when
    the file was copied there, see `data_dir_tokenizer`).
    """
    return {"spec": spec, **tokenizer.identity}


def data_dir_tokenizer(spec: str, tokenizer: TextTokenizer) -> tuple[dict[str, Any], Path | None]:
    """The record for a data directory, and the file to copy beside its shards (None: built in).

    A tokenizer file travels with its shards as `tokenizer<suffix>`, so the directory is complete.
    """
    if spec in BUILT_IN:
        return tokenizer_record(spec, tokenizer), None
    src = Path(spec)
    return tokenizer_record("tokenizer" + "".join(src.suffixes[-1:]), tokenizer), src


def load_run_tokenizer(
    tokenizer_record: dict[str, Any] | None, data_dir: str | Path | None = None
) -> TextTokenizer:
    """The run's tokenizer from its record {spec, sha256, ...}; file specs may live in data_dir.

    The sha256 of what loads must match the record, so generation never decodes with another
    vocabulary than the model learned.
    """
    if not tokenizer_record or not tokenizer_record.get("spec"):
        raise TokenizerError(
            "the run recorded no tokenizer (no config.tokenizer and no manifest.json in its "
            "data_dir); pass --tokenizer byte|gpt2|<path>"
        )
    spec = str(tokenizer_record["spec"])
    if spec in BUILT_IN:
        candidates = [spec]
    else:  # a data-prep helper copies tokenizer files into the data dir under this name
        candidates = [str(Path(data_dir) / spec)] if data_dir else []
        candidates.append(spec)
    mismatched = []
    for candidate in candidates:
        if candidate not in BUILT_IN and not Path(candidate).is_file():
            continue
        tok = load_tokenizer(candidate)
        if not tokenizer_record.get("sha256") or same_tokenizer(tok.identity, tokenizer_record):
            return tok
        mismatched.append(f"{candidate} (sha256 {tok.identity['sha256'][:12]})")
    if mismatched:
        raise TokenizerError(
            f"tokenizer {', '.join(mismatched)} differs from the run's (sha256 "
            f"{tokenizer_record['sha256'][:12]}); pass --tokenizer with the run's own file"
        )
    raise TokenizerError(
        f"tokenizer file {spec!r} not found (looked in: {', '.join(candidates)}); pass "
        f"--tokenizer <path> or --data_dir with the run's data"
    )
