"""HellaSwag, scored as build-nanogpt and llm.c score it (GPT-2 124M: acc_norm 0.2955).

Each example is a context and 4 endings. Every ending is scored by the model's cross-entropy on the
tokens of `" " + ending` that follow the tokens of the context (no other text preprocessing); the
prediction is the ending with the lowest summed loss (`acc`) or the lowest mean loss per token
(`acc_norm`, which does not favour short endings).

Rows are padded to one static length (the longest row, at most the model's context; longer rows
lose context tokens from the left) and a fixed number of examples per batch, so the scoring
function compiles once.

Data: a local jsonl in the original format (`ctx`, `endings`, `label`; e.g. rowanz/hellaswag's
`hellaswag_val.jsonl`), read without touching the network; or anything `datasets.load_dataset`
opens (the hub dataset `Rowan/hellaswag` by default, or a local dataset directory), split
`validation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from minigpt_jax.errors import DataError
from minigpt_jax.files import read_jsonl as read_json_lines
from minigpt_jax.model import GPT, GPTConfig

HUB_DATASET = "Rowan/hellaswag"
VAL_JSONL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
NUM_ENDINGS = 4


class HellaSwagError(DataError):
    """Task data that cannot be read; the message names the file or dataset and what to do."""


@dataclass(frozen=True)
class Example:
    ctx: str
    endings: tuple[str, ...]
    label: int


def _example(raw: Any, where: str) -> Example:
    try:
        endings = tuple(raw["endings"])
        example = Example(str(raw["ctx"]), endings, int(raw["label"]))
    except (KeyError, TypeError, ValueError) as e:
        raise HellaSwagError(
            f"{where}: needs ctx, endings (4 strings) and label (0-3), the original format ({e!r})"
        ) from e
    if len(endings) != NUM_ENDINGS or not 0 <= example.label < NUM_ENDINGS:
        raise HellaSwagError(
            f"{where}: {len(endings)} endings, label {example.label}; expected 4 and 0-3"
        )
    return example


def read_jsonl(path: str | Path) -> list[Example]:
    return [_example(raw, where) for where, raw in read_json_lines(path, HellaSwagError)]


def load_with_datasets(source: str, split: str = "validation") -> list[Example]:
    """A hub dataset name or a local dataset directory, through `datasets.load_dataset`."""
    import datasets

    try:
        rows = datasets.load_dataset(source, split=split)
    except Exception as e:  # offline, unknown name, no such split: one message for all
        raise HellaSwagError(
            f"could not load {source!r} split {split!r} with datasets ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Offline, download {VAL_JSONL_URL} "
            f"where the network allows and pass it as --task_data FILE.jsonl"
        ) from e
    return [_example(row, f"{source} [{split}] row {i}") for i, row in enumerate(rows)]


def load_examples(source: str | None = None, limit: int | None = None) -> list[Example]:
    """The validation examples: a local .jsonl file as is, else through `datasets`."""
    source = source or HUB_DATASET
    if source.endswith(".jsonl"):
        if not Path(source).is_file():
            raise HellaSwagError(f"{source}: no such file (download it from {VAL_JSONL_URL})")
        examples = read_jsonl(source)
    else:
        examples = load_with_datasets(source)
    if not examples:
        raise HellaSwagError(f"{source}: no examples")
    return examples[:limit] if limit else examples


def encode_example(example: Example, tokenizer: Any) -> tuple[list[int], list[list[int]]]:
    """(context ids, ids of " " + each ending): GPT-2's BPE merges the space into the word."""
    return tokenizer.encode(example.ctx), [tokenizer.encode(" " + e) for e in example.endings]


def pack_rows(
    encoded: Sequence[tuple[list[int], list[list[int]]]], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of shape (examples * 4, seq_len): context then ending, zero-padded; mask 1
    where the token is part of the ending. Rows longer than seq_len keep their last tokens."""
    tokens = np.zeros((len(encoded) * NUM_ENDINGS, seq_len), np.int32)
    mask = np.zeros((len(encoded) * NUM_ENDINGS, seq_len), np.float32)
    for i, (ctx, endings) in enumerate(encoded):
        for j, end in enumerate(endings):
            row = (ctx + end)[-seq_len:]
            n_end = min(len(end), seq_len)
            r = i * NUM_ENDINGS + j
            tokens[r, : len(row)] = row
            mask[r, len(row) - n_end : len(row)] = 1.0
    return tokens, mask


def make_score_fn(model: GPT):
    """jit(params, tokens, mask) -> (summed loss, tokens counted) per row: the cross-entropy of
    each token predicted from the ones before it, over the positions where `mask` is 1."""

    def score(params, tokens_RT: jax.Array, mask_RT: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits_RTV = model.apply({"params": params}, tokens_RT)[:, :-1]
        targets_RT = tokens_RT[:, 1:]
        target_logit_RT = jnp.take_along_axis(logits_RTV, targets_RT[..., None], axis=-1)[..., 0]
        nll_RT = jax.nn.logsumexp(logits_RTV, axis=-1) - target_logit_RT
        counted_RT = mask_RT[:, 1:]
        return (nll_RT * counted_RT).sum(axis=1), counted_RT.sum(axis=1)

    return jax.jit(score)


def _batches(n: int, per_batch: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, per_batch):
        yield start, min(start + per_batch, n)


def score_examples(
    model_cfg: GPTConfig,
    params: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """{n, acc, acc_norm, ..., sum_loss, mean_loss} over `examples`; `batch_size` examples
    (4 rows each) per call of the one compiled scoring function."""
    encoded = [encode_example(e, tokenizer) for e in examples]
    longest = max(len(c) + len(e) for c, ends in encoded for e in ends)
    seq_len = min(longest, model_cfg.block_size)
    score = make_score_fn(GPT(model_cfg))
    sums, counts = [], []
    bar = tqdm(total=len(examples), desc="hellaswag", disable=not progress, dynamic_ncols=True)
    for start, stop in _batches(len(encoded), batch_size):
        chunk = list(encoded[start:stop])
        pad = batch_size - len(chunk)  # the last batch keeps the static shape
        tokens, mask = pack_rows(chunk + [chunk[-1]] * pad, seq_len)
        loss_sum, n_tokens = jax.device_get(score(params, tokens, mask))
        rows = len(chunk) * NUM_ENDINGS
        sums.append(loss_sum[:rows])
        counts.append(n_tokens[:rows])
        bar.update(len(chunk))
    bar.close()
    sum_loss = np.concatenate(sums).reshape(-1, NUM_ENDINGS)
    mean_loss = sum_loss / np.concatenate(counts).reshape(-1, NUM_ENDINGS)
    labels = np.array([e.label for e in examples])
    correct = sum_loss.argmin(axis=1) == labels
    correct_norm = mean_loss.argmin(axis=1) == labels
    n = len(examples)
    acc, acc_norm = float(correct.mean()), float(correct_norm.mean())
    return {
        "n": n,
        "acc": acc,
        "acc_norm": acc_norm,
        # binomial standard errors: the spread to expect from the finite number of examples
        "acc_stderr": math.sqrt(acc * (1 - acc) / n),
        "acc_norm_stderr": math.sqrt(acc_norm * (1 - acc_norm) / n),
        "seq_len": int(seq_len),
        "cropped_rows": int(sum(len(c) + len(e) > seq_len for c, ends in encoded for e in ends)),
        "sum_loss": sum_loss,
        "mean_loss": mean_loss,
    }


def evaluate_hellaswag(
    run_dir: str | None = None,
    hf_dir: str | None = None,
    task_data: str | None = None,
    step: int | str | None = None,
    tokenizer_spec: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> tuple[dict[str, Any], Path]:
    """Load a run's checkpoint (or Hugging Face GPT-2 weights), score HellaSwag; returns the
    JSON-ready result and where it belongs (`<run_dir or hf_dir>/eval_hellaswag.json`)."""
    from minigpt_jax.tokenizer import load_tokenizer

    examples = load_examples(task_data, limit)  # bad data fails before weights load
    if hf_dir:
        from minigpt_jax.hf import _default_tokenizer_spec, load_hf_gpt2

        model_cfg, params = load_hf_gpt2(hf_dir)
        spec = tokenizer_spec or _default_tokenizer_spec(model_cfg)
        if spec is None:
            raise HellaSwagError(f"{hf_dir}: name its tokenizer with --tokenizer byte|gpt2|PATH")
        tokenizer = load_tokenizer(spec)
        out_dir = Path(hf_dir) if Path(hf_dir).is_dir() else Path(".")
        source: dict[str, Any] = {"hf_dir": str(hf_dir)}
    else:
        from minigpt_jax.inference import inference_tokenizer, load_finite_params

        params, record = load_finite_params(run_dir, step)
        model_cfg = record["model"]
        tokenizer = inference_tokenizer(record, tokenizer_spec, record["config"].get("data_dir"))
        out_dir = Path(run_dir)
        source = {"run_dir": str(run_dir), "step": record["step"]}
    scores = score_examples(model_cfg, params, tokenizer, examples, batch_size)
    result = {k: v for k, v in scores.items() if k not in ("sum_loss", "mean_loss")}
    result.update(source, task="hellaswag", task_data=task_data or HUB_DATASET)
    return result, out_dir / "eval_hellaswag.json"
