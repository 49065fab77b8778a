"""A trainable byte-level BPE tokenizer: as readable as minbpe, trained like the Rust trainers.

Vocabulary layout: ids 0-255 are the 256 bytes, merged tokens follow in the order they were
learned (their *rank*), special tokens (at least `<|endoftext|>`) come last and are never produced
by a merge. Text is first split by a regex (GPT-2's pattern by default, GPT-4's cl100k pattern as
an option) and BPE runs inside each chunk, so tokens never cross a chunk boundary.

Training (`Tokenizer.train`) counts each distinct chunk once, then learns merges without
rescanning the corpus: it keeps the count of every adjacent pair, the set of distinct chunks each
pair occurs in, and a heap of pairs. A merge rewrites only the chunks that contain it and adjusts
only the pair counts next to each rewritten occurrence. Work and memory scale with the distinct
chunks (tens of thousands for megabytes of prose), not with the corpus.

Tie-break (deterministic, documented for reproducibility): the most frequent pair wins; among
equal counts, the pair with the smallest (left id, right id). Hugging Face `tokenizers` uses the
same rule; minbpe instead takes whichever pair it counted first.

Encoding: every tokenizer is defined by its *ranks* (token bytes -> id), exactly like tiktoken: a
chunk starts as single bytes and the adjacent pair whose concatenation has the lowest rank merges
first (leftmost on ties). `encode_reference` is that algorithm in plain Python; `encode` and
`encode_batch` run the same ranks through a `tiktoken.Encoding`, so they give identical ids at
tiktoken's speed.

`<|endoftext|>` inside text is encoded as ordinary text (tiktoken's `encode_ordinary`): documents
are separated by the EOT *id*, which the data pipeline inserts between documents, never by a string
a document could contain.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import regex

from minigpt_jax.errors import TokenizerError
from minigpt_jax.files import write_bytes_atomic
from minigpt_jax.tokenizer import EOT_TEXT, check_text, lone_surrogate

# tiktoken's r50k pattern (tiktoken_ext.openai_public.r50k_pat_str): GPT-2's split, made faster.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)
# tiktoken's cl100k_base pattern (GPT-4): case-insensitive contractions, digits in groups of 1-3.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
# sha256 of GPT-2's rank file (r50k_base.tiktoken): the hash tiktoken itself pins.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT_ID = 50256
GPT2_ENV = "MINIGPT_GPT2_TIKTOKEN"
FILE_FORMAT = "minigpt_jax-bpe"
FILE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Training


def count_chunks(
    documents: Iterable[str], pattern: str, progress: bool = False
) -> Counter[bytes]:
    """The only pass over the corpus: how often each distinct pre-split chunk occurs (as UTF-8)."""
    from tqdm import tqdm

    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    for doc in tqdm(documents, desc="counting chunks", unit="doc", disable=not progress):
        check_text(doc)
        counts.update(split(doc))
    return Counter({chunk.encode("utf-8"): n for chunk, n in counts.items()})


def learn_ranks(
    chunk_counts: dict[bytes, int], num_ranks: int, progress: bool = False
) -> dict[bytes, int]:
    """Learn BPE ranks (token bytes -> id) until there are `num_ranks` tokens or nothing to merge.

    `words[i]` is distinct chunk i as a list of token ids, `freqs[i]` how often it occurs.
    `pair_counts[(a, b)]` is how often pair (a, b) occurs in the corpus; `where[(a, b)]` the chunks
    it may occur in (entries go stale when a chunk loses the pair and are skipped then). The heap
    holds (-count, pair) entries that may be stale: a popped entry whose count is out of date is
    pushed back with its current count, so the pair popped with a current count is the true best
    (a pair's count only grows through an explicit push, so a stale entry never under-ranks it).
    """
    from tqdm import tqdm

    vocab: list[bytes] = [bytes([b]) for b in range(256)]  # id -> token bytes
    ids = {tok: i for i, tok in enumerate(vocab)}  # token bytes -> id
    multi = [(chunk, n) for chunk, n in chunk_counts.items() if len(chunk) > 1]
    words: list[list[int]] = [list(chunk) for chunk, _ in multi]
    freqs: list[int] = [n for _, n in multi]

    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)

    bar = tqdm(total=max(num_ranks - 256, 0), desc="bpe merges", unit="tok", disable=not progress)
    while len(vocab) < num_ranks and heap:
        neg_count, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count <= 0:
            continue
        if count != -neg_count:  # stale entry: requeue with the current count
            heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        token = vocab[a] + vocab[b]
        # Two different pairs can spell the same bytes (ab+c, a+bc): they share one id, as in
        # `tokenizers`, because a rank table maps bytes to exactly one id.
        new_id = ids.get(token)
        if new_id is None:
            new_id = ids[token] = len(vocab)
            vocab.append(token)
            bar.update()
        grown: set[tuple[int, int]] = set()
        for i in where.pop(pair, ()):
            _merge_word(words, i, a, b, new_id, freqs[i], pair_counts, where, grown)
        del pair_counts[pair]
        for p in grown:
            heapq.heappush(heap, (-pair_counts[p], p))
    bar.close()
    return ids


def _merge_word(
    words: list[list[int]],
    i: int,
    a: int,
    b: int,
    new_id: int,
    freq: int,
    pair_counts: defaultdict[tuple[int, int], int],
    where: defaultdict[tuple[int, int], set[int]],
    grown: set[tuple[int, int]],
) -> None:
    """Replace each (a, b) in words[i], left to right, and fix the counts of the neighbouring pairs.

    For an occurrence x a b y: pairs (x, a) and (b, y) lose `freq`, (x, new) and (new, y) gain it.
    The merged pair itself is deleted by the caller, so its own count is left alone here.
    """
    word = words[i]
    n = len(word)
    out: list[int] = []
    j = 0
    while j < n:
        if j + 1 < n and word[j] == a and word[j + 1] == b:
            if out:
                left = out[-1]
                pair_counts[(left, a)] -= freq
                pair_counts[(left, new_id)] += freq
                where[(left, new_id)].add(i)
                grown.add((left, new_id))
            if j + 2 < n:
                right = word[j + 2]
                pair_counts[(b, right)] -= freq
                pair_counts[(new_id, right)] += freq
                where[(new_id, right)].add(i)
                grown.add((new_id, right))
            out.append(new_id)
            j += 2
        else:
            out.append(word[j])
            j += 1
    words[i] = out


# ----------------------------------------------------------------------------------------------
# Rank files


def ranks_to_tiktoken_bytes(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's `.tiktoken` format: one `base64(token) rank` line per token, in rank order."""
    lines = [
        base64.b64encode(tok) + b" " + str(rank).encode() + b"\n"
        for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])
    ]
    return b"".join(lines)


def parse_tiktoken_bytes(data: bytes, path: str | os.PathLike) -> dict[bytes, int]:
    """Parse and check a `.tiktoken` rank file: ranks 0..n-1, each once, all 256 bytes present."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok_b64, rank_str = line.split()
            tok = base64.b64decode(tok_b64, validate=True)
            rank = int(rank_str)
        except ValueError as e:  # also binascii.Error
            raise TokenizerError(
                f"{path}:{lineno}: not a `base64 rank` line of a .tiktoken file ({e}); "
                f"the file is damaged or not a tokenizer"
            ) from e
        if tok in ranks:
            raise TokenizerError(f"{path}:{lineno}: token {tok!r} appears twice")
        ranks[tok] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks must be 0..{len(ranks) - 1}, each exactly once")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{path}: the single bytes {missing[:8]}... have no rank")
    return ranks


def _token_text(tok: bytes) -> str:
    return tok.decode("utf-8", errors="backslashreplace")


# ----------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """Byte-level BPE defined by ranks (token bytes -> id), a split pattern and special tokens."""

    def __init__(
        self,
        ranks: dict[bytes, int],
        pattern: str = GPT2_PATTERN,
        special_tokens: dict[str, int] | None = None,
        name: str | None = None,
    ) -> None:
        special_tokens = dict(special_tokens or {EOT_TEXT: len(ranks)})
        if EOT_TEXT not in special_tokens:
            raise ValueError(f"special_tokens must include {EOT_TEXT!r}: {list(special_tokens)}")
        n = len(ranks)
        if sorted(special_tokens.values()) != list(range(n, n + len(special_tokens))):
            raise ValueError(f"special token ids must be {n}..{n + len(special_tokens) - 1}")
        self.ranks = ranks
        self.pattern = pattern
        self.special_tokens = special_tokens
        self.vocab_size = n + len(special_tokens)
        self.eot_id = special_tokens[EOT_TEXT]
        self.ranks_sha256 = hashlib.sha256(ranks_to_tiktoken_bytes(ranks)).hexdigest()
        self.is_gpt2 = (
            self.ranks_sha256 == GPT2_RANKS_SHA256
            and pattern == GPT2_PATTERN
            and special_tokens == {EOT_TEXT: GPT2_EOT_ID}
        )
        if name == "gpt2" and not self.is_gpt2:
            raise ValueError("the name 'gpt2' is reserved for GPT-2's own ranks, pattern and EOT")
        self.name = "gpt2" if self.is_gpt2 else (name or f"bpe{self.vocab_size}")
        self._encoding = None  # the tiktoken.Encoding, built on first use
        self._split = regex.compile(pattern)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        documents: Iterable[str],
        vocab_size: int,
        pattern: str = "gpt2",
        special_tokens: Sequence[str] = (EOT_TEXT,),
        name: str | None = None,
        progress: bool = False,
    ) -> Tokenizer:
        """Learn a vocabulary of `vocab_size` ids (bytes + merges + special tokens) from documents.

        `pattern` is "gpt2", "gpt4" or a regex. Stops early (smaller vocabulary) only if the text
        has no pair left to merge.
        """
        if isinstance(documents, str):  # iterating a str would train on single characters
            raise TypeError("documents must be an iterable of strings, e.g. [text], not a str")
        pat = PATTERNS.get(pattern, pattern)
        specials = list(dict.fromkeys(special_tokens))
        if EOT_TEXT not in specials:
            specials.insert(0, EOT_TEXT)
        num_ranks = vocab_size - len(specials)
        if num_ranks < 256:
            raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(specials)} specials")
        ranks = learn_ranks(count_chunks(documents, pat, progress), num_ranks, progress)
        special_ids = {tok: len(ranks) + i for i, tok in enumerate(specials)}
        return cls(ranks, pat, special_ids, name=name)

    @classmethod
    def gpt2(cls, path: str | os.PathLike | None = None) -> Tokenizer:
        """GPT-2's tokenizer: from a local `gpt2.tiktoken` (argument or $MINIGPT_GPT2_TIKTOKEN),
        else from tiktoken, which downloads and caches it."""
        path = path or os.environ.get(GPT2_ENV) or None
        if path is not None:
            tok = cls.load(path)
            if not tok.is_gpt2:
                raise TokenizerError(
                    f"{path}: sha256 {tok.ranks_sha256} is not GPT-2's rank file "
                    f"({GPT2_RANKS_SHA256}); point it at GPT-2's gpt2.tiktoken (r50k_base)"
                )
            return tok
        import tiktoken

        try:
            enc = tiktoken.get_encoding("gpt2")
        except OSError as e:  # requests' ConnectionError is an OSError
            raise RuntimeError(
                "cannot download GPT-2's tokenizer (no network?): pass the path of a local "
                f"gpt2.tiktoken (r50k_base.tiktoken, sha256 {GPT2_RANKS_SHA256}) as "
                f"--tokenizer_path / Tokenizer.gpt2(path), or set ${GPT2_ENV} to it ({e})"
            ) from e
        tok = cls(dict(enc._mergeable_ranks), enc._pat_str, dict(enc._special_tokens))
        if not tok.is_gpt2:
            raise RuntimeError(f"tiktoken's 'gpt2' encoding has other ranks ({tok.ranks_sha256})")
        tok._encoding = enc
        return tok

    @classmethod
    def load(cls, path: str | os.PathLike, pattern: str = "gpt2") -> Tokenizer:
        """Our JSON tokenizer file, or a `.tiktoken` rank file.

        A `.tiktoken` file holds only ranks: GPT-2's (recognised by its hash) gets GPT-2's pattern
        and `<|endoftext|>` = 50256; any other gets `pattern` and `<|endoftext|>` after the ranks.
        """
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(
                f"{path}: tokenizer file not found; train one with scripts/train_tokenizer.py"
            )
        data = path.read_bytes()
        if data.lstrip()[:1] == b"{":
            return cls._from_json(data, path)
        try:
            ranks = parse_tiktoken_bytes(data, path)
        except TokenizerError as e:
            raise TokenizerError(
                f"{e} (neither a minigpt_jax tokenizer file nor a .tiktoken rank file)"
            ) from None
        if hashlib.sha256(data).hexdigest() == GPT2_RANKS_SHA256:
            return cls(ranks, GPT2_PATTERN, {EOT_TEXT: GPT2_EOT_ID})
        return cls(ranks, PATTERNS.get(pattern, pattern), name=path.stem)

    @classmethod
    def _from_json(cls, data: bytes, path: Path) -> Tokenizer:
        def bad(why: str) -> TokenizerError:
            return TokenizerError(
                f"{path}: damaged tokenizer file ({why}); "
                "re-create it with scripts/train_tokenizer.py"
            )

        try:
            spec = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad(f"not valid JSON: {e}") from e
        if not isinstance(spec, dict) or spec.get("format") != FILE_FORMAT:
            raise TokenizerError(f"{path}: not a {FILE_FORMAT} file (no matching 'format' key)")
        if spec.get("version") != FILE_VERSION:
            raise TokenizerError(
                f"{path}: tokenizer file version {spec.get('version')!r}; this code reads version "
                f"{FILE_VERSION} (upgrade minigpt_jax or re-create the file)"
            )
        try:
            byte_order = spec["byte_ranks"] or list(range(256))
            if sorted(byte_order) != list(range(256)):
                raise bad("byte_ranks is not a permutation of 0..255")
            vocab = [b""] * 256
            for byte, rank in enumerate(byte_order):
                vocab[rank] = bytes([byte])
            for k, (left, right, text) in enumerate(spec["merges"]):
                if not (0 <= left < len(vocab) and 0 <= right < len(vocab)):
                    raise bad(f"merge {k} refers to a token not defined before it")
                tok = vocab[left] + vocab[right]
                if _token_text(tok) != text:
                    raise bad(f"merge {k} spells {_token_text(tok)!r}, the file says {text!r}")
                vocab.append(tok)
            ranks = {tok: i for i, tok in enumerate(vocab)}
            if len(ranks) != len(vocab):
                raise bad("two merges spell the same token")
            if regex.compile(spec["pattern"]).fullmatch(""):
                raise bad("its pattern matches the empty string")
            tok = cls(ranks, spec["pattern"], spec["special_tokens"], name=spec.get("name"))
            tok.to_tiktoken()  # tiktoken's regex engine must accept the pattern too
            return tok
        except TokenizerError:
            raise
        except (KeyError, TypeError, ValueError, regex.error) as e:
            raise bad(f"{type(e).__name__}: {e}") from e

    # -- saving -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """One human-readable, versioned JSON file: pattern, special tokens and one merge per line.

        Merge k builds token 256+k from two earlier tokens: `[left id, right id, "text"]`.
        """
        byte_order = [self.ranks[bytes([b])] for b in range(256)]
        by_rank = sorted(self.ranks, key=self.ranks.__getitem__)
        merges = [self._split_token(tok, rank) for rank, tok in enumerate(by_rank) if rank >= 256]
        head = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "byte_ranks": None if byte_order == list(range(256)) else byte_order,
        }
        fields = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in head.items()]
        merge_lines = [
            "  " + json.dumps([a, b, _token_text(self._token_bytes(a) + self._token_bytes(b))],
                              ensure_ascii=False)
            for a, b in merges
        ]
        fields.append(' "merges": [\n' + ",\n".join(merge_lines) + "\n ]")
        text = "{\n" + ",\n".join(fields) + "\n}\n"
        write_bytes_atomic(path, text.encode("utf-8"))

    def save_tiktoken(self, path: str | os.PathLike) -> None:
        """tiktoken's rank file (ranks only: the pattern and special tokens are not part of it)."""
        write_bytes_atomic(path, ranks_to_tiktoken_bytes(self.ranks))

    def _token_bytes(self, token_id: int) -> bytes:
        if not hasattr(self, "_inverse"):
            self._inverse = {rank: tok for tok, rank in self.ranks.items()}
        return self._inverse[token_id]

    def _split_token(self, tok: bytes, rank: int) -> tuple[int, int]:
        """Two lower-ranked tokens that spell `tok` (any split does: ranks define the encoding)."""
        for k in range(1, len(tok)):
            left, right = self.ranks.get(tok[:k], rank), self.ranks.get(tok[k:], rank)
            if left < rank and right < rank:
                return left, right
        raise ValueError(
            f"token {rank} ({tok!r}) is not two lower-ranked tokens; save it with save_tiktoken"
        )

    # -- encoding -----------------------------------------------------------------------------

    def to_tiktoken(self):  # -> tiktoken.Encoding
        """The same ranks, pattern and special tokens as a `tiktoken.Encoding` (the fast path)."""
        if self._encoding is None:
            import tiktoken

            self._encoding = tiktoken.Encoding(
                self.name,
                pat_str=self.pattern,
                mergeable_ranks=self.ranks,
                special_tokens=self.special_tokens,
                explicit_n_vocab=self.vocab_size,
            )
        return self._encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it are ordinary text. A lone surrogate
        raises `TokenizerError` (tiktoken alone would replace it with U+FFFD)."""
        check_text(text)
        return self.to_tiktoken().encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a uint32 array straight from tiktoken's buffer: no Python int per token,
        and the GIL is released throughout, so threads encode in parallel (data preparation)."""
        try:
            return self.to_tiktoken().encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError as e:
            raise lone_surrogate(text, e.start) from None

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        """`encode` of many texts; tiktoken releases the GIL, so threads run in parallel."""
        for text in texts:
            check_text(text)
        return self.to_tiktoken().encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_reference(self, text: str) -> list[int]:
        """The encoding in plain Python (slow; the specification `encode` is tested against)."""
        check_text(text)
        ids: list[int] = []
        for chunk in self._split.findall(text):
            ids.extend(self._bpe(chunk.encode("utf-8")))
        return ids

    def _bpe(self, chunk: bytes) -> list[int]:
        """Merge the adjacent pair with the lowest rank (leftmost on ties) until none is a token."""
        parts = [chunk[i : i + 1] for i in range(len(chunk))]
        while len(parts) > 1:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                rank = self.ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best_rank is None:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        return [self.ranks[p] for p in parts]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Exact bytes of any id sequence (special tokens decode to their text)."""
        return self.to_tiktoken().decode_bytes(list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; byte sequences that are not UTF-8 (a cut character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    @property
    def identity(self) -> dict[str, Any]:
        """What shards and runs record. GPT-2's sha256 is its rank file's, as tiktoken pins it;
        any other tokenizer hashes its ranks together with its pattern and special tokens."""
        if self.is_gpt2:
            digest = GPT2_RANKS_SHA256
        else:
            canon = json.dumps(
                {"ranks": self.ranks_sha256, "pattern": self.pattern,
                 "special": self.special_tokens},
                sort_keys=True,
            )
            digest = hashlib.sha256(canon.encode("utf-8")).hexdigest()
        return {"name": self.name, "sha256": digest, "vocab_size": self.vocab_size,
                "eot_id": self.eot_id}

    def __getstate__(self) -> dict[str, Any]:  # pickles for data-loader workers without tiktoken
        state = dict(self.__dict__)
        state["_encoding"] = None
        state.pop("_inverse", None)
        return state

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"
