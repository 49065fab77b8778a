"""The data directory on disk: token shards, their loss masks, and the manifest that lists them.

Shard format: llm.c's `.bin` — a 256 x int32 header (magic, version, token count, zeros) then the
tokens. GPT-2-sized vocabularies use llm.c's uint16 layout (magic 20240520, version 1); larger ones
its uint32 layout (magic 20240801, version 7). build-nanogpt's uint16 `.npy` shards read too. Shards
are memory-mapped: a batch touches only its own windows, never a whole shard.

`manifest.json` is written last by every data writer (data_prep, sft_data, the arithmetic task)
through `write_manifest`: the tokenizer record, the token dtype, every shard with its sha256 (and
its mask's), and whatever the writer adds. One optional field matters to training: `packing`
({"block_size": N, "whole_documents": true}) says whole documents were packed into N-token chunks,
so windows of another length would cut them (`packed_block_size`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from minigpt_jax.errors import DataError
from minigpt_jax.files import atomic_write, sha256_file, write_json_atomic

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) -> token dtype, as llm.c's dev/data/data_common.py writes them.
_LAYOUTS = {(20240520, 1): np.dtype(np.uint16), (20240801, 7): np.dtype(np.uint32)}
_MAGIC_FOR_DTYPE = {dtype: key for key, dtype in _LAYOUTS.items()}
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Data preparation in progress (data_prep.py); a directory with it and no manifest is unfinished.
PROGRESS = "progress.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id of a vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write a `.bin` shard atomically: a crash leaves the old file or none, never half of one."""
    tokens = np.asarray(tokens)
    if tokens.dtype not in _MAGIC_FOR_DTYPE:
        raise DataError(f"{path}: tokens must be uint16 or uint32, got {tokens.dtype}")
    magic, version = _MAGIC_FOR_DTYPE[tokens.dtype]
    header = np.zeros(HEADER_INTS, np.int32)
    header[:3] = (magic, version, tokens.size)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(memoryview(np.ascontiguousarray(tokens)))  # no copy of a 200 MB shard

    atomic_write(path, write)


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """A read-only memory map of a shard's tokens, after checking its header against its size."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard not found")
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable .npy shard ({e}); re-create it") from e
        if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
            raise DataError(
                f"{path}: .npy shards must be 1-D uint16 or uint32 tokens, got {tokens.dtype} "
                f"of shape {tokens.shape}; re-create it with scripts/download_data.py"
            )
        return tokens
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    layout = (int(header[0]), int(header[1]))
    if layout not in _LAYOUTS:
        raise DataError(
            f"{path}: not a token shard (magic {layout[0]}, version {layout[1]}; expected llm.c's "
            f"20240520/1 or 20240801/7); re-create it with scripts/download_data.py"
        )
    dtype, count = _LAYOUTS[layout], int(header[2])
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        raise DataError(
            f"{path}: truncated or corrupt: the header promises {count} tokens ({expected} "
            f"bytes) but the file has {size} bytes; delete it and re-run scripts/download_data.py"
        )
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def find_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """`<split>` shards in name order: ours (`train_000000.bin`), llm.c's and build-nanogpt's."""
    pattern = re.compile(rf"(^|_){re.escape(split)}_\d+\.(bin|npy)$")
    return sorted(p for p in Path(data_dir).iterdir() if pattern.search(p.name))


def mask_path(shard: str | os.PathLike) -> Path:
    """The loss-mask shard beside a token shard: `train_000000.bin` -> `train_000000.mask.bin`.

    Same format and length as the tokens (uint16 0/1 per token, 1 = count this token as a target);
    supervised fine-tuning writes them so the loss skips prompts. The name never matches
    `find_shards`, so a mask is never read as tokens.
    """
    shard = Path(shard)
    return shard.with_name(f"{shard.stem}.mask.bin")


# ------------------------------------------------------------------------------------------------
# The manifest


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run scripts/download_data.py") from e



def write_manifest(
    out_dir: str | os.PathLike,
    tokenizer: dict[str, Any],
    dtype: str,
    shards: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """Write `manifest.json` (atomically, last) and return it as readers will see it.

    `shards` lists {file, split, tokens, ...; mask: the mask file, if any}; the sha256 of each
    shard and mask is computed here unless the writer already has it. `fields` are the writer's
    own (args, documents, packing, ...).
    """
    out = Path(out_dir)
    listed = []
    for shard in shards:
        shard = dict(shard)
        shard.setdefault("sha256", sha256_file(out / shard["file"]))
        if shard.get("mask"):
            shard.setdefault("mask_sha256", sha256_file(out / shard["mask"]))
        listed.append(shard)
    manifest = {
        "version": MANIFEST_VERSION, "tokenizer": tokenizer, "dtype": dtype, **fields,
        "shards": listed,
    }
    write_json_atomic(out / MANIFEST, manifest)
    return json.loads(json.dumps(manifest))  # tuples become lists, as any reader sees them


def check_manifest(
    data_dir: str | os.PathLike, tokenizer_identity: dict[str, Any] | None,
    verify_checksums: bool = False,
) -> dict[str, Any] | None:
    """The data directory's manifest, after checking it fits the run; None if it has none.

    Raises one error when the preparation is unfinished, a listed shard is missing or has the wrong
    size, or the shards' tokenizer differs from `tokenizer_identity` (the run's).
    """
    from minigpt_jax.tokenizer import same_tokenizer

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if manifest is None:
        if (data_dir / PROGRESS).is_file():
            raise DataError(
                f"{data_dir}: data preparation is unfinished ({PROGRESS}, no {MANIFEST}); rerun "
                f"scripts/download_data.py with the same arguments to finish it"
            )
        return None
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(
            f"{data_dir / MANIFEST}: manifest version {manifest.get('version')!r}, this code reads "
            f"version {MANIFEST_VERSION}; re-create the data with scripts/download_data.py"
        )
    theirs = manifest.get("tokenizer", {})
    if tokenizer_identity is not None and not same_tokenizer(theirs, tokenizer_identity):
        raise DataError(
            f"{data_dir / MANIFEST}: the shards were made with tokenizer {theirs.get('name')!r} "
            f"(vocab {theirs.get('vocab_size')}, sha256 {str(theirs.get('sha256'))[:12]}), but "
            f"this run uses {tokenizer_identity.get('name')!r} (vocab "
            f"{tokenizer_identity.get('vocab_size')}, sha256 "
            f"{str(tokenizer_identity.get('sha256'))[:12]}); re-tokenize the data with "
            f"--tokenizer_path, or train with the shards' tokenizer ({theirs.get('spec')!r})"
        )
    itemsize = np.dtype(manifest.get("dtype", "uint16")).itemsize
    for shard in manifest.get("shards", []):
        path = data_dir / shard["file"]
        expected = HEADER_BYTES + shard["tokens"] * itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise DataError(
                f"{path}: listed in {MANIFEST} with {shard['tokens']} tokens but "
                f"{'missing' if not path.is_file() else 'of another size'}; re-run "
                f"scripts/download_data.py into a fresh --out_dir"
            )
        if verify_checksums:
            for name, key in ((shard["file"], "sha256"), (shard.get("mask"), "mask_sha256")):
                if name and shard.get(key) and sha256_file(data_dir / name) != shard[key]:
                    raise DataError(f"{data_dir / name}: sha256 differs from {MANIFEST}; corrupt")
    return manifest


def manifest_tokenizer_spec(data_dir: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """What `load_tokenizer` takes to rebuild the shards' tokenizer ("byte", "gpt2" or a path)."""
    spec = manifest["tokenizer"]["spec"]
    return spec if spec in ("byte", "gpt2") else str(Path(data_dir) / spec)


def packed_block_size(manifest: dict[str, Any] | None) -> int | None:
    """The chunk length whole documents were packed into, or None (a plain token stream).

    Manifests written before the generic `packing` field kept it under "arithmetic".
    """
    manifest = manifest or {}
    packing = manifest.get("packing") or manifest.get("arithmetic") or {}
    return packing.get("block_size")


def find_split(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The split's shards, or one error saying how to make them."""
    paths = find_shards(data_dir, split)
    if not paths:
        raise DataError(
            f"{data_dir}: no {split}_*.bin or *_{split}_*.npy shards; prepare them with "
            f"`python scripts/download_data.py --out_dir {data_dir}`"
        )
    return paths
