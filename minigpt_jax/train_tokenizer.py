"""Train a byte-level BPE tokenizer on text files and report its compression on held-out text.

    python scripts/train_tokenizer.py --input ../shared/data/classics/austen.jsonl \
        ../shared/data/classics/shakespeare.jsonl --vocab_size 8192 --out tokenizers/classics8k.json

Every `--heldout_every`-th document is kept out of training (up to `--heldout_mb` MB) and used to
print bytes per token. Use the file with `--tokenizer_path` when preparing data; a `.tiktoken`
output holds the ranks only (tiktoken's format has no pattern or special tokens).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from minigpt_jax.bpe import PATTERNS, Tokenizer
from minigpt_jax.documents import iter_documents
from minigpt_jax.errors import DataError, TokenizerError, exit_on_interrupt, exit_on_user_error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/train_tokenizer.py", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help=".txt, .jsonl or .parquet files")
    p.add_argument("--vocab_size", type=int, required=True, help="bytes + merges + <|endoftext|>")
    p.add_argument("--out", required=True, help="tokenizer file to write (.json, or .tiktoken)")
    p.add_argument("--pattern", default="gpt2", choices=sorted(PATTERNS), help="regex pre-split")
    p.add_argument("--text_field", default="text", help="field of .jsonl / column of .parquet")
    p.add_argument("--name", default=None, help="name recorded in the tokenizer's identity")
    p.add_argument("--heldout_every", type=int, default=20, help="hold out every N-th document")
    p.add_argument("--heldout_mb", type=float, default=1.0, help="at most this much held-out text")
    return p.parse_args(argv)


def _check_out(out: Path) -> None:
    """Before training: a target that cannot be written fails now, not after the work."""
    if out.is_dir():
        raise TokenizerError(f"--out={out}: is a directory; name the tokenizer file to write")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise TokenizerError(f"--out={out}: {parent} is not a writable directory")


def main(argv: list[str] | None = None) -> Tokenizer:
    args = parse_args(argv)
    with exit_on_interrupt("no tokenizer was written"), exit_on_user_error():
        return _train(args)


def _train(args: argparse.Namespace) -> Tokenizer:
    if args.vocab_size < 257:
        raise TokenizerError(
            f"--vocab_size={args.vocab_size}: must be at least 257 (256 bytes + <|endoftext|>)"
        )
    out = Path(args.out)
    _check_out(out)
    heldout: list[str] = []
    has_text = False
    budget = int(args.heldout_mb * 1e6)

    def training_documents() -> Iterator[str]:
        nonlocal budget, has_text
        for k, doc in enumerate(iter_documents(args.input, args.text_field)):
            held = args.heldout_every > 0 and k % args.heldout_every == args.heldout_every - 1
            if held and budget > 0:
                heldout.append(doc)
                budget -= len(doc.encode("utf-8"))
            else:
                has_text = has_text or (bool(doc) and not doc.isspace())
                yield doc

    start = time.perf_counter()
    tok = Tokenizer.train(training_documents(), args.vocab_size, pattern=args.pattern,
                          name=args.name, progress=sys.stderr.isatty())
    if not has_text:
        raise DataError(
            f"--input {' '.join(args.input)}: no text to train on (no documents, only blank "
            f"ones, or all held out by --heldout_every); pass more text"
        )
    seconds = time.perf_counter() - start
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".tiktoken":
            tok.save_tiktoken(out)
        else:
            tok.save(out)
    except OSError as e:
        raise TokenizerError(f"--out={out}: cannot write it: {e.strerror or e}") from e
    print(f"trained {tok.vocab_size} tokens in {seconds:.1f} s -> {out}")
    print(f"identity: {tok.identity}")
    if heldout:
        n_bytes = sum(len(d.encode("utf-8")) for d in heldout)
        n_tokens = sum(len(ids) for ids in tok.encode_batch(heldout))
        print(f"held-out: {len(heldout)} documents, {n_bytes:,} bytes, {n_tokens:,} tokens, "
              f"{n_bytes / max(n_tokens, 1):.3f} bytes per token")
    else:
        print("held-out: none (fewer documents than --heldout_every)")
    return tok
