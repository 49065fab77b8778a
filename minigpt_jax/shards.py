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

Writers never clobber data they did not make: `claim_out_dir` refuses a directory holding another
writer's data, another tokenizer's, or anything else, unless the user passed `--overwrite`, and
`clear_data_files` removes the old shards before new ones are written, so no stale shard outlives
its manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
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
# What to rerun to finish a directory, by `manifest_writer`.
WRITER_COMMANDS = {
    "data_prep": "scripts/download_data.py", "sft": "python -m minigpt_jax.sft",
    "arithmetic": "scripts/make_arithmetic_data.py",
}
# llm.c's header stores a shard's token count as an int32.
MAX_SHARD_TOKENS = 2**31 - 1


def check_shard_size(shard_size: int) -> None:
    if not 1 <= shard_size <= MAX_SHARD_TOKENS:
        raise DataError(
            f"--shard_size={shard_size}: must be between 1 and {MAX_SHARD_TOKENS:,} tokens (the "
            f"shard header stores the count as an int32); the default is 100,000,000"
        )


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id of a vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> None:
    """Write a `.bin` shard atomically: a crash leaves the old file or none, never half of one."""
    tokens = np.asarray(tokens)
    if tokens.dtype not in _MAGIC_FOR_DTYPE:
        raise DataError(f"{path}: tokens must be uint16 or uint32, got {tokens.dtype}")
    if tokens.size > MAX_SHARD_TOKENS:
        raise DataError(f"{path}: {tokens.size:,} tokens do not fit one shard's int32 count")
    magic, version = _MAGIC_FOR_DTYPE[tokens.dtype]
    header = np.zeros(HEADER_INTS, np.int32)
    header[:3] = (magic, version, tokens.size)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(memoryview(np.ascontiguousarray(tokens)))  # no copy of a 200 MB shard

    atomic_write(path, write)


def remake_command(data_dir: str | os.PathLike) -> str:
    """What to rerun to re-create a data directory's shards, from its manifest or progress record:
    a damaged arithmetic shard is not fixed by the web-text downloader. Only ever part of an
    error message, so a record it cannot read falls back to the generic hint."""
    for name in (MANIFEST, PROGRESS):
        try:
            record = _read_record(Path(data_dir) / name)
        except (DataError, OSError, ValueError, RecursionError):
            continue
        if record is not None:
            return WRITER_COMMANDS.get(manifest_writer(record), "the command that made it")
    return "the command that made it (ours: scripts/download_data.py)"


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
                f"of shape {tokens.shape}; re-create the data: rerun {remake_command(path.parent)} "
                f"with its arguments and --overwrite"
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
            f"20240520/1 or 20240801/7); re-create the data: rerun {remake_command(path.parent)} "
            f"with its arguments and --overwrite"
        )
    dtype, count = _LAYOUTS[layout], int(header[2])
    expected = HEADER_BYTES + count * dtype.itemsize
    if size != expected:
        raise DataError(
            f"{path}: truncated or corrupt: the header promises {count} tokens ({expected} "
            f"bytes) but the file has {size} bytes; re-create the data: rerun "
            f"{remake_command(path.parent)} with its arguments and --overwrite"
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


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        record = e
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: damaged (not a JSON object: {record}); re-create the data by rerunning the "
            f"command that made it with --overwrite"
        )
    return record


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any] | None:
    return _read_record(Path(data_dir) / MANIFEST)


def manifest_writer(record: dict[str, Any]) -> str:
    """The command that made a manifest or progress record ("data_prep", "sft" or a task name);
    manifests written before the `writer` field are recognised by their fields."""
    if record.get("writer"):
        return str(record["writer"])
    if record.get("format") == "sft":
        return "sft"
    if isinstance(record.get("task"), dict):
        return str(record["task"].get("name"))
    if isinstance(record.get("arithmetic"), dict):  # before the task record had its name
        return "arithmetic"
    return "data_prep"



def write_manifest(
    out_dir: str | os.PathLike,
    tokenizer: dict[str, Any],
    dtype: str,
    shards: list[dict[str, Any]],
    *,
    writer: str,
    **fields: Any,
) -> dict[str, Any]:
    """Write `manifest.json` (atomically, last) and return it as readers will see it.

    `shards` lists {file, split, tokens, ...; mask: the mask file, if any}; the sha256 of each
    shard and mask is computed here unless the writer already has it. `writer` names the command
    (see `claim_out_dir`); `fields` are the writer's own (args, documents, packing, ...).
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
        "version": MANIFEST_VERSION, "writer": writer, "tokenizer": tokenizer, "dtype": dtype,
        **fields,
        "shards": listed,
    }
    write_json_atomic(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)
    return json.loads(json.dumps(manifest))  # tuples become lists, as any reader sees them


# ------------------------------------------------------------------------------------------------
# Claiming an output directory


def claim_out_dir(
    out_dir: str | os.PathLike, writer: str, tokenizer: dict[str, Any], overwrite: bool
) -> dict[str, Any] | None:
    """May `writer` write into `out_dir`? Returns the record (manifest, else progress) of data this
    writer made there with this tokenizer; None when there is none (absent or empty directory, or
    `overwrite`, which first removes the old data files).

    Anything else is refused with one error naming what is there: another writer's data (an SFT
    run over a pretraining corpus), another tokenizer's, a damaged record, or files no writer made.
    """
    from minigpt_jax.tokenizer import same_tokenizer

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out_dir={out}: is a file, not a directory; pass another --out_dir")
    if not out.is_dir():
        return None
    try:
        record = read_manifest(out) or _read_record(out / PROGRESS)
    except DataError:
        if not overwrite:
            raise
        record = None
    entries = sorted(p.name for p in out.iterdir() if not p.name.endswith(".tmp"))
    if record is not None and entries == [PROGRESS] and not record.get("shards"):
        return None  # a run that failed before its first shard left nothing to keep
    if record is not None:
        theirs = manifest_writer(record)
        tok = record.get("tokenizer") or {}
        if theirs == writer and same_tokenizer(tok, tokenizer):
            return record
        n = len(record.get("shards", []))
        what = f"{theirs} data (tokenizer {tok.get('name')!r}, {n} shards)"
    else:
        if not entries:
            return None
        what = f"files no data writer made ({', '.join(entries[:3])}{', ...' * (len(entries) > 3)})"
    if not overwrite:
        raise DataError(
            f"--out_dir={out}: holds {what}; this {writer} run (tokenizer "
            f"{tokenizer.get('name')!r}) will not overwrite it: pass another --out_dir, or "
            f"--overwrite to replace it"
        )
    clear_data_files(out)
    return None


def clear_data_files(out_dir: str | os.PathLike) -> None:
    """Remove what data writers put in `out_dir`: the manifest first (so a crash in between leaves
    an unfinished directory, never a manifest over missing shards), then progress, shards, masks,
    tokenizer copies, the files a manifest lists, and temporary files. Other files stay."""
    out = Path(out_dir)
    listed: set[str] = set()
    with contextlib.suppress(DataError):
        record = read_manifest(out) or {}
        for shard in record.get("shards", []):
            listed.update(str(shard.get(k)) for k in ("file", "mask") if shard.get(k))
        listed.update(map(str, ((record.get("task") or {}).get("test_files") or {}).values()))
        spec = (record.get("tokenizer") or {}).get("spec")
        listed.update([spec] if spec and spec not in ("byte", "gpt2") else [])
    (out / MANIFEST).unlink(missing_ok=True)
    (out / PROGRESS).unlink(missing_ok=True)
    shard_name = re.compile(r"(^|_)(train|val)_\d+\.(bin|npy)$|\.mask\.bin$|\.tmp$|^tokenizer\.")
    for path in out.iterdir():
        if (path.name in listed or shard_name.search(path.name)) and path.is_file():
            path.unlink()


def start_writing(out_dir: str | os.PathLike, writer: str, tokenizer: dict[str, Any]) -> None:
    """Before a one-pass writer (SFT, a task) writes its shards: the old data files go, and a
    progress record says whose unfinished directory this is until `write_manifest` replaces it,
    so a rerun after a crash is recognised as the same writer's."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_data_files(out)
    write_json_atomic(out / PROGRESS, {"writer": writer, "tokenizer": tokenizer, "shards": []})


@contextlib.contextmanager
def writing_data(out_dir: str | os.PathLike, then: str) -> Iterator[None]:
    """Around a writer's output: a read-only directory or a full disk (`OSError`) becomes one
    `DataError` naming the file; `then` says what to do after fixing it."""
    try:
        yield
    except OSError as e:
        where = e.filename or out_dir
        raise DataError(f"{where}: {e.strerror or e} (writing {out_dir}); {then}") from e


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
        progress = _read_record(data_dir / PROGRESS)
        if progress is not None:
            command = WRITER_COMMANDS.get(manifest_writer(progress), "the command that made it")
            raise DataError(
                f"{data_dir}: data preparation is unfinished ({PROGRESS}, no {MANIFEST}); rerun "
                f"{command} with the same arguments to finish it"
            )
        return None
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(
            f"{data_dir / MANIFEST}: manifest version {manifest.get('version')!r}, this code reads "
            f"version {MANIFEST_VERSION}; re-create the data: rerun {remake_command(data_dir)} "
            f"with its arguments and --overwrite"
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
                f"{'missing' if not path.is_file() else 'of another size'}; re-create the data: "
                f"rerun {remake_command(data_dir)} with its arguments and --overwrite"
            )
        if verify_checksums:
            for name, key in ((shard["file"], "sha256"), (shard.get("mask"), "mask_sha256")):
                if name and shard.get(key) and sha256_file(data_dir / name) != shard[key]:
                    raise DataError(
                        f"{data_dir / name}: changed since it was written (its sha256 differs "
                        f"from {MANIFEST}'s); re-create the data: rerun "
                        f"{remake_command(data_dir)} with its arguments and --overwrite"
                    )
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
