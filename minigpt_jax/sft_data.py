"""Supervised fine-tuning data: prompt/response pairs -> packed token shards with loss masks.

    python -m minigpt_jax.sft --data_files qa.jsonl --tokenizer_path gpt2 --out_dir data/qa

(`minigpt_jax/sft.py` is that command; this module builds the data. Training needs no SFT code.)

Each JSONL line is {"prompt": ..., "response": ...}. An example becomes the chat template around the
prompt, then the response, then end-of-text, and the examples are packed back to back after one
leading end-of-text (the same "EOT before every document" stream pretraining sees). Beside every
token shard a mask shard (`shards.mask_path`) marks the tokens the loss counts: the
response and the end-of-text that closes it, so the model learns to answer and to stop, and is
never trained to write prompts. Training needs no new option: the pipeline reads the masks and
the train and eval steps weight the loss with them.

`format_chat` is the one template; generation applies it to a user's prompt (after an EOT) so
the model sees exactly the context it was fine-tuned on.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minigpt_jax.errors import DataError, TokenizerError
from minigpt_jax.files import copy_atomic, read_jsonl
from minigpt_jax.shards import (
    check_shard_size,
    claim_out_dir,
    mask_path,
    start_writing,
    token_dtype,
    write_manifest,
    write_shard,
    writing_data,
)
from minigpt_jax.tokenizer import TextTokenizer, check_text, data_dir_tokenizer, load_tokenizer

CHAT_TEMPLATE = "### Question:\n{prompt}\n\n### Answer:\n"


def format_chat(prompt: str) -> str:
    """The text before a response: what the model is fine-tuned to continue with an answer."""
    return CHAT_TEMPLATE.format(prompt=prompt)


def chat_prompt_tokens(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """The token context generation starts from: EOT, then the templated prompt (as in training)."""
    return [tokenizer.eot_id, *tokenizer.encode(format_chat(prompt))]


def encode_example(
    tokenizer: TextTokenizer, prompt: str, response: str
) -> tuple[list[int], list[int]]:
    """(tokens, mask) of one example: templated prompt (mask 0), response + EOT (mask 1).

    Prompt and response are encoded separately, so the prompt's tokens are exactly what
    `chat_prompt_tokens` gives at generation time, whatever the BPE would merge across the seam.
    """
    prompt_ids = tokenizer.encode(format_chat(prompt))
    response_ids = [*tokenizer.encode(response), tokenizer.eot_id]
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


def pack_examples(
    tokenizer: TextTokenizer, examples: Sequence[tuple[str, str]], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """One token stream (EOT, example, example, ...) and its uint16 0/1 loss mask."""
    tokens, mask = [tokenizer.eot_id], [0]
    for prompt, response in examples:
        t, m = encode_example(tokenizer, prompt, response)
        tokens.extend(t)
        mask.extend(m)
    return np.asarray(tokens, dtype), np.asarray(mask, np.uint16)


def read_examples(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(prompt, response) pairs of a JSONL file; the first bad line is one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    examples = []
    for where, record in read_jsonl(path, DataError):
        if not isinstance(record, dict):
            raise DataError(
                f'{where}: expected an object {{"prompt": ..., "response": ...}}'
            )
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str):
                raise DataError(
                    f'{where}: "{key}" must be a string, got {type(record.get(key)).__name__}; '
                    f'each line is {{"prompt": "...", "response": "..."}}'
                )
            try:
                check_text(record[key])
            except TokenizerError as e:
                raise DataError(f'{where}: "{key}": {e}') from None
        if not record["response"]:
            raise DataError(f'{where}: "response" is empty; there is nothing to learn')
        examples.append((record["prompt"], record["response"]))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _write_split(
    out_dir: Path, split: str, tokens: np.ndarray, mask: np.ndarray, documents: int,
    shard_size: int,
) -> list[dict[str, Any]]:
    shards = []
    for i, start in enumerate(range(0, tokens.size, shard_size)):
        path = out_dir / f"{split}_{i:06d}.bin"
        # The mask first: a token shard on disk always has its mask beside it.
        write_shard(mask_path(path), mask[start : start + shard_size])
        write_shard(path, tokens[start : start + shard_size])
        shards.append({
            "file": path.name, "split": split, "tokens": int(min(shard_size, tokens.size - start)),
            "mask": mask_path(path).name,
            "documents": documents if i == 0 else 0,
        })
    return shards


def prepare_sft(
    data_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    tokenizer_path: str = "gpt2",
    val_data_files: Sequence[str | os.PathLike] = (),
    val_examples: int | None = None,
    seed: int | None = None,
    shard_size: int = 100_000_000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write train/val token + mask shards and manifest.json (last); returns the manifest.

    Validation is `val_data_files`, else the first `val_examples` examples (default 5%, at least
    one) after an optional shuffle with `seed`. `out_dir` must be new, empty or earlier SFT data
    of the same tokenizer (whose shards are replaced), unless `overwrite`.
    """
    check_shard_size(shard_size)
    train = [ex for f in data_files for ex in read_examples(f)]
    if val_data_files:
        val = [ex for f in val_data_files for ex in read_examples(f)]
    else:
        if seed is not None:
            random.Random(seed).shuffle(train)
        n_val = max(1, len(train) // 20) if val_examples is None else val_examples
        if not 0 < n_val < len(train):
            raise DataError(
                f"{data_files[0]}: cannot hold out {n_val} of {len(train)} examples for "
                f"validation; pass --val_examples between 1 and {len(train) - 1} or "
                f"--val_data_files"
            )
        val, train = train[:n_val], train[n_val:]
    tokenizer = load_tokenizer(tokenizer_path)
    dtype = token_dtype(tokenizer.vocab_size)
    out = Path(out_dir)
    claim_out_dir(out, "sft", tokenizer.identity, overwrite)
    with writing_data(out, "make room or fix the permissions, then rerun"):
        return _write(out, tokenizer, tokenizer_path, dtype, train, val, shard_size,
                      [*data_files, *val_data_files])


def _write(out: Path, tokenizer: TextTokenizer, tokenizer_path: str, dtype: np.dtype,
           train: list[tuple[str, str]], val: list[tuple[str, str]], shard_size: int,
           inputs: list) -> dict[str, Any]:
    tok_record, tok_src = data_dir_tokenizer(tokenizer_path, tokenizer)
    start_writing(out, "sft", tok_record)  # no manifest, and no stale shard, until the new ones
    shards = []
    counts = {}
    for split, examples in (("train", train), ("val", val)):
        tokens, mask = pack_examples(tokenizer, examples, dtype)
        shards += _write_split(out, split, tokens, mask, len(examples), shard_size)
        counts[split] = {"tokens": int(tokens.size), "target_tokens": int(mask.sum())}
    if tok_src is not None:
        copy_atomic(tok_src, out / tok_record["spec"])
    return write_manifest(
        out,
        tok_record,
        dtype.name,
        shards,
        writer="sft",
        format="sft",
        chat_template=CHAT_TEMPLATE,
        inputs=[str(f) for f in inputs],
        documents={"train": len(train), "val": len(val)},
        tokens={k: v["tokens"] for k, v in counts.items()},
        target_tokens={k: v["target_tokens"] for k, v in counts.items()},
    )
