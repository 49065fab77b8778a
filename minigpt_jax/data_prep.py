"""Text -> token shards: FineWeb-Edu from the hub, local files, or the docs that ship with Python.

Every source goes through one path: a `datasets` dataset (hub, local `.jsonl`/`.txt`/`.parquet`
through the same builders, or the built-in `pydoc` corpus) -> batches of documents -> tokenizer
threads or worker processes (ordered, a bounded number in flight) -> a writer that cuts the token
stream into `val_NNNNNN.bin` / `train_NNNNNN.bin` shards (llm.c's format, see input_pipeline.py).

Each document becomes `<|endoftext|>` + its tokens (GPT-2's convention). The stream is cut at
fixed token positions, as build-nanogpt and llm.c do: the first `val_tokens` are validation (unless
a separate validation split or files are given), the rest is training, `shard_size` tokens per
shard, the last one shorter. Because positions, not timing, define the cuts, the output is the same
bytes whatever `num_proc` is, and a run killed mid-way resumes exactly: `progress.json` records,
for every finished shard, the document and token where the next one starts, and its sha256, which
a rerun checks first (a deleted or changed shard is made again from its recorded position).
`manifest.json` is written last; a directory without it is an unfinished run. A directory holding
anything else is refused unless `--overwrite` (`shards.claim_out_dir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from minigpt_jax.documents import PYDOC, expand_files, load_documents, text_batches
from minigpt_jax.errors import (
    DataError,
    TokenizerError,
    UserError,
    exit_on_interrupt,
    exit_on_user_error,
)
from minigpt_jax.files import copy_atomic, sha256_file, write_json_atomic
from minigpt_jax.shards import (
    MANIFEST,
    MANIFEST_VERSION,
    PROGRESS,
    check_manifest,
    check_shard_size,
    claim_out_dir,
    clear_data_files,
    token_dtype,
    write_manifest,
    write_shard,
    writing_data,
)
from minigpt_jax.tokenizer import data_dir_tokenizer, load_tokenizer

# Arguments that decide the bytes of the output; a rerun must match them to resume.
_OUTPUT_ARGS = (
    "dataset", "name", "split", "val_split", "data_files", "val_data_files", "text_field",
    "sample_by", "shard_size", "val_tokens", "tokens_threshold", "seed",
)
# Inputs of fewer tasks than this are tokenized in threads, larger ones in processes (see
# encode_stream).
_THREADED_BATCHES = 128


@dataclasses.dataclass(frozen=True)
class PrepArgs:
    """The command line's flags (their help is in `parse_args`); frozen so a run cannot drift."""

    dataset: str = "HuggingFaceFW/fineweb-edu"
    name: str | None = "sample-10BT"
    split: str = "train"
    val_split: str | None = None
    data_files: tuple[str, ...] = ()
    val_data_files: tuple[str, ...] = ()
    text_field: str = "text"
    sample_by: str = "document"
    streaming: bool = False
    tokens_threshold: int | None = None
    shard_size: int = 100_000_000
    val_tokens: int | None = None
    tokenizer_path: str = "gpt2"
    out_dir: str | None = None
    num_proc: int = 0
    seed: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    overwrite: bool = False

    def resolved_out_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        if self.data_files:
            stem = Path(self.data_files[0]).name.split(".")[0] or "local"
            return Path("data") / stem
        return Path("data") / self.dataset.rstrip("/").split("/")[-1]


# ------------------------------------------------------------------------------------------------
# Tokenization in threads or worker processes


@dataclasses.dataclass
class Encoded:
    """A batch of documents as one token array: per document, EOT then its tokens."""

    tokens: np.ndarray  # uint16/uint32, the concatenated documents
    lengths: np.ndarray  # int64 tokens per document, EOT included
    nbytes: np.ndarray  # int64 UTF-8 bytes per document


def encode_documents(tokenizer, texts: list[str], dtype: np.dtype) -> Encoded:
    """Tokenize straight into the shard dtype (2 bytes a token, never a Python int's 28+)."""
    eot = np.asarray([tokenizer.eot_id], dtype)
    parts = []
    for text in texts:
        parts += [eot, tokenizer.encode_array(text).astype(dtype, copy=False)]
    lengths = np.fromiter((p.size for p in parts[1::2]), np.int64, len(texts)) + 1
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype)
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), np.int64, len(texts))
    return Encoded(tokens, lengths, nbytes)


# One tokenizer per worker process, set by the pool initializer: a process is the unit of state.
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer, dtype_str: str) -> None:
    # Ctrl-C reaches the whole process group: the main process reports it once, workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(tokenizer=tokenizer, dtype=np.dtype(dtype_str))
    tokenizer.encode("warm up")  # builds tiktoken's tables before the first task


def _encode_in_worker(texts: list[str]) -> Encoded:
    return encode_documents(_WORKER["tokenizer"], texts, _WORKER["dtype"])


def encode_stream(
    batches: Iterator[list[str]], tokenizer, dtype: np.dtype, num_proc: int
) -> Iterator[Encoded]:
    """Encoded batches in input order, `num_proc` at a time; at most 2 per worker in flight, so
    memory stays bounded.

    An input that ends within `_THREADED_BATCHES` tasks (64 MB of text) is encoded in threads:
    tiktoken releases the GIL, and a thread starts at once, where a process costs ~0.2 CPU-s (an
    interpreter, imports, the tokenizer's tables; BENCHMARKS.md): much of the budget of a corpus
    that raw tiktoken encodes in a second. A larger input gets spawned processes (not forked: safe
    beside threads and JAX), which measured ~15% faster at scale because the reading thread shares
    no GIL with them.
    Either way the output is the same bytes.
    """
    batches = iter(batches)
    if num_proc <= 1:
        for texts in batches:
            yield encode_documents(tokenizer, texts, dtype)
        return
    head = deque(itertools.islice(batches, _THREADED_BATCHES))
    everything = itertools.chain(_drain(head), batches)  # the look-ahead is freed as it goes
    if len(head) < _THREADED_BATCHES:
        tokenizer.encode("warm up")  # build tiktoken's tables once, not in every thread
        with ThreadPoolExecutor(num_proc, thread_name_prefix="tokenize") as threads:
            futures = (
                threads.submit(encode_documents, tokenizer, texts, dtype) for texts in everything
            )
            yield from (f.result() for f in _bounded(futures, 2 * num_proc))
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(num_proc, _init_worker, (tokenizer, dtype.str)) as processes:
        results = (processes.apply_async(_encode_in_worker, (texts,)) for texts in everything)
        yield from (r.get() for r in _bounded(results, 2 * num_proc))


def _drain(items: deque) -> Iterator:
    while items:
        yield items.popleft()


def _bounded(submitted: Iterator, in_flight: int) -> Iterator:
    """The submitted tasks in order, never more than `in_flight` submitted and not yet taken."""
    pending: deque = deque()
    for task in submitted:
        pending.append(task)
        if len(pending) >= in_flight:
            yield pending.popleft()
    yield from pending


# ------------------------------------------------------------------------------------------------
# Shards


class ShardWriter:
    """Cuts one source's token stream into shards at fixed positions and records each one.

    `plan` lists (split, token budget) in stream order, e.g. [("val", 10M), ("train", inf)]. The
    stream position after each shard is saved as (document index, token offset in it), which is
    all a rerun needs to continue with the same bytes.
    """

    def __init__(self, out_dir: Path, source: str, plan: list[tuple[str, float]],
                 shard_size: int, dtype: np.dtype, progress: dict[str, Any], on_shard):
        self.out_dir, self.source, self.shard_size = out_dir, source, shard_size
        self.progress, self.on_shard = progress, on_shard
        shards = progress["shards"]
        self.written = {split: sum(s["tokens"] for s in shards if s["split"] == split)
                        for split, _ in plan}
        self.count = {split: sum(s["split"] == split for s in shards) for split, _ in plan}
        self.plan = [(split, budget) for split, budget in plan if self.written[split] < budget]
        mine = [s for s in shards if s["source"] == source]
        self.doc, self.offset = mine[-1]["end"] if mine else (0, 0)
        self.first_doc = self.doc  # the document the current shard starts in
        try:
            self.buffer = np.empty(shard_size, dtype)
        except MemoryError:
            raise DataError(
                f"--shard_size={shard_size:,}: a shard of {shard_size * dtype.itemsize:,} bytes "
                f"does not fit in memory; lower --shard_size"
            ) from None
        self.fill = 0
        # Documents that start in the current shard: their position in it and their UTF-8 bytes.
        self.doc_pos: list[np.ndarray] = []
        self.doc_bytes: list[np.ndarray] = []

    @property
    def done(self) -> bool:
        return not self.plan

    def _target(self) -> int:
        split, budget = self.plan[0]
        return int(min(self.shard_size, budget - self.written[split]))

    def feed(self, enc: Encoded) -> None:
        """Append a batch whose first document is `self.doc` (its first `self.offset` tokens are
        already in earlier shards)."""
        starts = np.concatenate([[0], np.cumsum(enc.lengths)])  # doc starts within the batch
        pos = self.offset  # position within the batch's tokens
        batch_doc = self.doc
        total = int(starts[-1])
        while pos < total and self.plan:
            take = min(self._target() - self.fill, total - pos)
            self.buffer[self.fill : self.fill + take] = enc.tokens[pos : pos + take]
            lo, hi = np.searchsorted(starts[:-1], [pos, pos + take], side="left")
            self.doc_pos.append(starts[lo:hi] - pos + self.fill)
            self.doc_bytes.append(enc.nbytes[lo:hi])
            self.fill += take
            pos += take
            doc = int(np.searchsorted(starts, pos, side="right")) - 1
            self.doc, self.offset = batch_doc + doc, pos - int(starts[doc])
            if pos == total:  # the batch is used up: the next one starts at its first document
                self.doc, self.offset = batch_doc + len(enc.lengths), 0
            if self.fill == self._target():
                self.flush()

    def finish(self, default_val: bool) -> None:
        """Write what is left at the end of the input.

        With the default `val_tokens` (one shard) an input smaller than one shard would all be
        held out; it is then all in the buffer, and its first tenth becomes validation instead.
        """
        holds_everything = self.fill >= 10 and not self.progress["shards"]
        if default_val and len(self.plan) == 2 and self.plan[0][0] == "val" and holds_everything:
            tokens = self.buffer[: self.fill].copy()
            pos, nbytes = np.concatenate(self.doc_pos), np.concatenate(self.doc_bytes)
            end = (self.doc, self.offset)
            n_val = self.fill // 10
            in_val = int(np.searchsorted(pos, n_val, side="left"))  # docs starting in val
            last = int(np.searchsorted(pos, n_val, side="right")) - 1  # doc holding token n_val
            self.plan[0] = ("val", n_val)
            self.fill, self.doc_pos, self.doc_bytes = n_val, [pos[:in_val]], [nbytes[:in_val]]
            self.doc, self.offset = self.first_doc + last, n_val - int(pos[last])
            self.flush()
            self.buffer[: tokens.size - n_val] = tokens[n_val:]
            self.fill = tokens.size - n_val
            self.doc_pos, self.doc_bytes = [pos[in_val:] - n_val], [nbytes[in_val:]]
            self.doc, self.offset = end
        self.flush()

    def flush(self) -> None:
        if not self.fill:
            return

        split, budget = self.plan[0]
        path = self.out_dir / f"{split}_{self.count[split]:06d}.bin"
        write_shard(path, self.buffer[: self.fill])
        self.progress["shards"].append({
            "file": path.name, "split": split, "tokens": self.fill, "sha256": sha256_file(path),
            "documents": int(sum(p.size for p in self.doc_pos)),
            "bytes": int(sum(int(b.sum()) for b in self.doc_bytes)),
            "source": self.source, "end": [self.doc, self.offset],
        })
        self.written[split] += self.fill
        self.count[split] += 1
        self.fill, self.doc_pos, self.doc_bytes = 0, [], []
        self.first_doc = self.doc
        if self.written[split] >= budget:
            self.plan.pop(0)
        self.on_shard()


# ------------------------------------------------------------------------------------------------
# A run


def _output_args(args: PrepArgs, data_files: list[str], val_files: list[str]) -> dict[str, Any]:
    record = {k: getattr(args, k) for k in _OUTPUT_ARGS}
    record.update(data_files=data_files, val_data_files=val_files)
    if data_files or args.dataset == PYDOC:  # the hub name and config do not apply
        record.update(dataset=PYDOC if not data_files else None, name=None, split=None)
    return record


def _input_sizes(files: list[str]) -> list[dict[str, Any]]:
    return [{"path": f, "bytes": os.path.getsize(f)} for f in files]


def _check_args(args: PrepArgs) -> None:
    check_shard_size(args.shard_size)
    if args.val_tokens is not None and args.val_tokens < 0:
        raise DataError(f"--val_tokens={args.val_tokens}: must be >= 0")
    if args.tokens_threshold is not None and args.tokens_threshold < args.shard_size:
        raise DataError(
            f"--tokens_threshold={args.tokens_threshold:,} is below one shard "
            f"(--shard_size={args.shard_size:,}): raise it, or lower --shard_size to at most "
            f"the threshold"
        )
    if args.val_split and (args.data_files or args.dataset == PYDOC):
        raise DataError("--val_split names a hub split; with local files use --val_data_files")


def _plans(args: PrepArgs) -> list[tuple[str, list[tuple[str, float]]]]:
    """(source, [(split, budget), ...]) in the order the sources are read."""
    train_budget = math.inf if args.tokens_threshold is None else args.tokens_threshold
    if args.val_split or args.val_data_files:
        val_budget = math.inf if args.val_tokens is None else args.val_tokens
        return [("val", [("val", val_budget)]), ("train", [("train", train_budget)])]
    val_budget = args.shard_size if args.val_tokens is None else args.val_tokens
    return [("train", [("val", val_budget), ("train", train_budget)])]


def _start(out_dir: Path, fresh: dict[str, Any], overwrite: bool) -> tuple[dict[str, Any], str]:
    """The record to continue from, and whether the run is "new", to "resume" or "complete"."""
    old = claim_out_dir(out_dir, "data_prep", fresh["tokenizer"], overwrite)
    if old is None:
        return fresh, "new"
    path = out_dir / (MANIFEST if (out_dir / MANIFEST).is_file() else PROGRESS)
    key = lambda rec: (rec.get("args"), rec.get("inputs"), rec.get("tokenizer", {}).get("sha256"))
    if key(old) != key(fresh):
        if overwrite:
            clear_data_files(out_dir)
            return fresh, "new"
        differ = [k for k in ("args", "inputs", "tokenizer") if old.get(k) != fresh.get(k)]
        raise DataError(
            f"{path}: {out_dir} holds a run with other {', '.join(differ)} (there: "
            f"{ {k: old.get(k) for k in differ} }); pass another --out_dir, or --overwrite to "
            f"replace it"
        )
    if path.name == MANIFEST:
        return old, "complete"
    if not old.get("shards"):  # a run that failed before its first shard: nothing to keep
        return fresh, "new"
    return old, "resume"


def _check_recorded_shards(out_dir: Path, progress: dict[str, Any], args: PrepArgs) -> None:
    """Keep the recorded shards up to the first one that is missing or changed since it was
    written; the run then makes it and the rest again from its recorded stream position."""
    shards = progress["shards"]
    for i, shard in enumerate(shards):
        path = out_dir / shard["file"]
        if path.is_file() and sha256_file(path) == shard["sha256"]:
            continue
        why = "missing" if not path.is_file() else "changed since it was written"
        print(f"{path}: {why}; making it and the {len(shards) - i - 1} shards after it again",
              file=sys.stderr)
        redo = [source for source, _ in _plans(args)]
        redo = redo[redo.index(shard["source"]):]  # its source and every source read after it
        progress["shards"] = shards[:i]
        progress["sources"] = {k: v for k, v in progress["sources"].items() if k not in redo}
        return


def _finalize(out_dir: Path, progress: dict[str, Any], tokenizer_src: Path | None) -> dict:
    shards = progress["shards"]
    splits = ("train", "val")
    total_tokens = sum(s["tokens"] for s in shards)
    total_bytes = sum(s["bytes"] for s in shards)
    if tokenizer_src is not None:
        copy_atomic(tokenizer_src, out_dir / progress["tokenizer"]["spec"])
    manifest = write_manifest(
        out_dir,
        progress["tokenizer"],
        progress["dtype"],
        [{k: s[k] for k in ("file", "split", "tokens", "sha256", "documents")} for s in shards],
        writer="data_prep",
        args=progress["args"],
        inputs=progress["inputs"],
        documents={sp: sum(s["documents"] for s in shards if s["split"] == sp) for sp in splits},
        tokens={sp: sum(s["tokens"] for s in shards if s["split"] == sp) for sp in splits},
        input_bytes=total_bytes,
        bytes_per_token=round(total_bytes / max(total_tokens, 1), 4),
    )
    return manifest


def _remove_run(out_dir: Path, progress: dict[str, Any], created_dir: bool) -> None:
    """Undo a run that failed on its input: no shard, progress or empty directory left."""
    for shard in progress["shards"]:
        (out_dir / shard["file"]).unlink(missing_ok=True)
    for name in (PROGRESS, PROGRESS + ".tmp"):
        (out_dir / name).unlink(missing_ok=True)
    for tmp in out_dir.glob("*.bin.tmp"):
        tmp.unlink()
    if created_dir and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


def prepare(args: PrepArgs) -> dict[str, Any]:
    """Make (or finish) the shards `args` describe; returns the manifest."""
    _check_args(args)
    out_dir = args.resolved_out_dir()
    data_files = expand_files(args.data_files, "data_files")
    val_files = expand_files(args.val_data_files, "val_data_files")
    args = dataclasses.replace(args, data_files=tuple(data_files), val_data_files=tuple(val_files))
    try:
        tokenizer = load_tokenizer(args.tokenizer_path)
    except (OSError, TokenizerError, RuntimeError) as e:
        raise DataError(f"--tokenizer_path={args.tokenizer_path}: {e}") from e
    tok_record, tok_src = data_dir_tokenizer(args.tokenizer_path, tokenizer)

    dtype = token_dtype(tokenizer.vocab_size)
    fresh = {
        "version": MANIFEST_VERSION, "writer": "data_prep", "tokenizer": tok_record,
        "dtype": dtype.name,
        "args": _output_args(args, data_files, val_files),
        "inputs": _input_sizes(data_files + val_files), "shards": [],
    }
    progress, state = _start(out_dir, fresh, args.overwrite)
    if state == "complete":
        check_manifest(out_dir, tokenizer.identity, verify_checksums=True)
        _log(args, f"{out_dir}: already complete ({len(progress['shards'])} shards)")
        return progress

    then = "make room or fix the permissions, then rerun the same command to resume"
    with writing_data(out_dir, then):
        created_dir = not out_dir.exists()
        for stale in out_dir.glob("*.tmp") if out_dir.is_dir() else ():
            stale.unlink()
        out_dir.mkdir(parents=True, exist_ok=True)
        progress = {**progress, "sources": progress.get("sources", {})}
        if state == "resume":
            _check_recorded_shards(out_dir, progress, args)
        write_json_atomic(out_dir / PROGRESS, progress)
        try:
            _run_sources(args, out_dir, progress, tokenizer, dtype)
        except UserError:
            if state == "new":
                _remove_run(out_dir, progress, created_dir)
            raise
        return _finalize(out_dir, progress, tok_src)


def _run_sources(args: PrepArgs, out_dir: Path, progress: dict, tokenizer, dtype) -> None:
    from tqdm import tqdm

    num_proc = args.num_proc or len(os.sched_getaffinity(0))
    save = lambda: write_json_atomic(out_dir / PROGRESS, progress)
    t0 = time.perf_counter()
    tokens_done = 0
    for source, plan in _plans(args):
        if progress["sources"].get(source, {}).get("done"):
            continue
        writer = ShardWriter(out_dir, source, plan, args.shard_size, dtype, progress, save)
        where = _describe(args, source)
        ds = load_documents(args, source)
        budget = sum(b for _, b in writer.plan)
        bar = tqdm(total=None if math.isinf(budget) else budget, unit="tok", unit_scale=True,
                   desc=where, disable=not args.progress, mininterval=1.0)
        docs = writer.doc
        files = args.val_data_files if source == "val" and args.val_data_files else args.data_files
        batches = text_batches(ds, args.text_field, writer.doc, where, files)
        stream = encode_stream(batches, tokenizer, dtype, num_proc)
        try:
            for enc in stream if writer.plan else ():
                writer.feed(enc)
                tokens_done += enc.tokens.size
                docs += len(enc.lengths)
                bar.update(enc.tokens.size)
                bar.set_postfix(docs=f"{docs:,}", refresh=False)
                if writer.done:
                    break
        finally:
            stream.close()  # stops the workers when the budget ends before the input
            bar.close()
        writer.finish(default_val=args.val_tokens is None)
        if docs == 0 and not any(s["source"] == source for s in progress["shards"]):
            raise DataError(f"{where}: no documents; check the files or the split name")
        progress["sources"][source] = {"done": True}
        save()
    if not any(s["split"] == "train" for s in progress["shards"]):
        val = sum(s["tokens"] for s in progress["shards"] if s["split"] == "val")
        raise DataError(
            f"{_describe(args, 'train')}: only {val:,} tokens, all held out as validation "
            f"(--val_tokens={args.val_tokens if args.val_tokens is not None else args.shard_size:,}"
            f"); lower --val_tokens or use more data"
        )
    _summary(args, out_dir, progress, tokens_done, time.perf_counter() - t0)


def _describe(args: PrepArgs, source: str) -> str:
    files = args.val_data_files if source == "val" and args.val_data_files else args.data_files
    if files:
        return files[0] + (f" (+{len(files) - 1} files)" if len(files) > 1 else "")
    if args.dataset == PYDOC:
        return "pydoc topics"
    split = args.val_split if source == "val" and args.val_split else args.split
    return f"{args.dataset}/{args.name or ''}[{split}]"


def _log(args: PrepArgs, message: str) -> None:
    if args.progress:
        print(message, file=sys.stderr)


def _summary(args: PrepArgs, out_dir: Path, progress: dict, tokens: int, seconds: float) -> None:
    shards = progress["shards"]
    total = {sp: sum(s["tokens"] for s in shards if s["split"] == sp) for sp in ("train", "val")}
    docs = sum(s["documents"] for s in shards)
    nbytes = sum(s["bytes"] for s in shards)
    _log(args,
         f"{out_dir}: {docs:,} documents -> {total['train']:,} train + {total['val']:,} val tokens "
         f"in {len(shards)} shards, {nbytes / max(sum(total.values()), 1):.3f} bytes/token; "
         f"this run {tokens:,} tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):,.0f} tok/s)")


# ------------------------------------------------------------------------------------------------
# Command line


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1/true/false, got {text!r}")


def _files(values: list[str] | None) -> tuple[str, ...]:
    return tuple(f for v in values or () for f in v.split(",") if f)


def parse_args(argv: list[str] | None = None) -> PrepArgs:
    d = PrepArgs()
    p = argparse.ArgumentParser(
        prog="download_data.py",
        description="Download (or read locally), tokenize and shard text for training.",
    )
    p.add_argument("--dataset", default=d.dataset,
                   help=f"hub dataset, or '{PYDOC}' for Python's built-in docs (no download)")
    p.add_argument("--name", default=d.name, help="hub dataset config ('' for none)")
    p.add_argument("--split", default=d.split)
    p.add_argument("--val_split", default=None,
                   help="a hub split for validation (default: the first --val_tokens tokens)")
    p.add_argument("--data_files", nargs="+", action="extend", default=None,
                   help="local .jsonl/.txt/.parquet files or globs (comma or space separated)")
    p.add_argument("--val_data_files", nargs="+", action="extend", default=None,
                   help="local validation files (default: the first --val_tokens tokens)")
    p.add_argument("--text_field", default=d.text_field)
    p.add_argument("--sample_by", default=d.sample_by, choices=("document", "paragraph", "line"),
                   help="what one document is in a .txt file")
    p.add_argument("--streaming", type=_bool, default=d.streaming,
                   help="read as it downloads (with --tokens_threshold: never download it all)")
    p.add_argument("--tokens_threshold", type=int, default=None, help="stop after N train tokens")
    p.add_argument("--shard_size", type=int, default=d.shard_size, help="tokens per shard")
    p.add_argument("--val_tokens", type=int, default=None,
                   help="validation tokens (default: one shard, or all of the validation split)")
    p.add_argument("--tokenizer_path", default=d.tokenizer_path,
                   help="'gpt2', 'byte' or a tokenizer file (scripts/train_tokenizer.py)")
    p.add_argument("--out_dir", default=None, help="default: data/<dataset name>")
    p.add_argument("--num_proc", type=int, default=0,
                   help="tokenizer threads or processes (0: all cores)")
    p.add_argument("--seed", type=int, default=None,
                   help="shuffle the documents with this seed (default: dataset order)")
    p.add_argument("--cache_dir", default=None, help="datasets' cache (default: HF_DATASETS_CACHE)")
    p.add_argument("--progress", type=_bool, default=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace whatever --out_dir holds (other data, other arguments)")
    ns = p.parse_args(argv)
    return dataclasses.replace(
        d, **{**vars(ns), "name": ns.name or None, "data_files": _files(ns.data_files),
              "val_data_files": _files(ns.val_data_files)},
    )


def main(argv: list[str] | None = None) -> int:
    with exit_on_interrupt("rerun the same command to resume"), exit_on_user_error():
        prepare(parse_args(argv))
    return 0
