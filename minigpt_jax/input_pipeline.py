"""The Grain pipeline that turns token shards (format: shards.py) into batches.

Shards are memory-mapped: a batch touches only its own windows, never a whole shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grain

import numpy as np

from minigpt_jax.errors import DataError
from minigpt_jax.shards import mask_path, open_shard


def _mask_shards(paths: list[Path], counts: list[int]) -> list[Path] | None:
    """The paths' mask shards when every shard has one, None when none has; else one error."""
    masks = [mask_path(p) for p in paths]
    present = [m.is_file() for m in masks]
    if not any(present):
        return None
    if not all(present):
        missing = masks[present.index(False)]
        raise DataError(
            f"{missing}: missing, while other shards in the list have loss masks; re-create the "
            f"data so that every shard has its mask, or none does"
        )
    for mask, count in zip(masks, counts, strict=True):
        if open_shard(mask).size != count:
            raise DataError(
                f"{mask}: holds {open_shard(mask).size} entries for a shard of {count} tokens; "
                f"re-create the data"
            )
    return masks


class WindowSource:
    """Random access to the windows of `seq_len + 1` tokens in a list of shards.

    Window i starts seq_len tokens after window i-1 (inputs and targets overlap by one token, so no
    token is wasted); windows never straddle two shards. Memory maps open lazily in each process, so
    the source pickles cheaply into Grain's worker processes. Every window is checked against the
    vocabulary as it is read: an id past it names the shard instead of crashing inside the model.

    Shards with loss masks (see `mask_path`) give {"tokens", "mask"} windows instead of arrays.
    """

    def __init__(self, paths: list[Path], seq_len: int, vocab_size: int | None = None):
        if not paths:
            raise DataError("no shards given")
        self.paths = [Path(p) for p in paths]
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        counts = [open_shard(p).size for p in self.paths]
        windows = [max(n - 1, 0) // seq_len for n in counts]
        self._starts = np.concatenate([[0], np.cumsum(windows)])
        self.mask_paths = _mask_shards(self.paths, counts)
        if self._starts[-1] == 0:
            raise DataError(
                f"{self.paths[0].parent}: the shards hold {sum(counts)} tokens, fewer than one "
                f"window of {seq_len + 1}; use more data or a smaller block_size"
            )
        # (token maps, mask maps or None), opened on first use and published in one assignment:
        # Grain reads from several threads, and none may see the tokens open but not the masks.
        self._maps: tuple[list[np.ndarray], list[np.ndarray] | None] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray | dict[str, np.ndarray]:
        if self._maps is None:
            masks = [open_shard(p) for p in self.mask_paths] if self.mask_paths else None
            self._maps = ([open_shard(p) for p in self.paths], masks)
        shards, masks = self._maps
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        start = (int(index) - int(self._starts[shard])) * self.seq_len
        window = np.asarray(shards[shard][start : start + self.seq_len + 1], dtype=np.int32)
        if self.vocab_size is not None and window.max(initial=0) >= self.vocab_size:
            raise DataError(
                f"{self.paths[shard]}: token id {int(window.max())} near token {start} is past the "
                f"model's vocabulary of {self.vocab_size}; the shards were made with another "
                f"tokenizer, or set config.model.vocab_size to match them"
            )
        if masks is not None:
            mask = np.asarray(masks[shard][start : start + self.seq_len + 1], np.float32)
            return {"tokens": window, "mask": mask}
        return window

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}


def _to_batch(windows: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs and next-token targets; a mask becomes `weights`, aligned with the targets."""
    if isinstance(windows, dict):
        tokens_BT1, mask_BT1 = windows["tokens"], windows["mask"]
        return {
            "inputs": tokens_BT1[:, :-1],
            "targets": tokens_BT1[:, 1:],
            "weights": mask_BT1[:, 1:],
        }
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def train_dataset(
    paths: list[Path],
    seq_len: int,
    batch_size: int,
    seed: int,
    vocab_size: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    """Endless batches of shuffled windows; each epoch is a new permutation without replacement.

    `shard_index`/`shard_count` give each JAX process its own disjoint slice of the windows
    (multi-host); `batch_size` is this process's share of the global batch. Iterate with
    `iter(...)`; the iterator's `get_state()`/`set_state()` is a single index, saved with
    checkpoints for an exact resume.
    """
    import grain  # here, not at module level: data-prep workers write shards without loading Grain

    source = grain.MapDataset.source(WindowSource(paths, seq_len, vocab_size))
    ds = source[shard_index::shard_count].shuffle(seed=seed).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).map(_to_batch)
    read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch_batches)
    it = ds.to_iter_dataset(read_options)
    if worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it


def eval_batches(
    paths: list[Path],
    seq_len: int,
    batch_size: int,
    max_tokens: int,
    vocab_size: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """The first `max_tokens` of validation windows in file order: every evaluation sees the same
    data.

    At least one batch is returned even when max_tokens is smaller than a batch.
    """
    import grain

    source = grain.MapDataset.source(WindowSource(paths, seq_len, vocab_size))
    ds = source[shard_index::shard_count]
    num_batches = max(1, max_tokens // (batch_size * seq_len * shard_count))
    num_batches = min(num_batches, len(ds) // batch_size)
    if num_batches == 0:
        raise DataError(
            f"{paths[0].parent}: validation shards hold {len(ds)} windows of {seq_len + 1} "
            f"tokens per process, fewer than one batch of {batch_size}; lower the batch size or "
            f"add validation data"
        )
    ds = ds[: num_batches * batch_size].batch(batch_size, drop_remainder=True).map(_to_batch)
    return iter(ds.to_iter_dataset())
