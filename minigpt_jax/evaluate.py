"""`python -m minigpt_jax.evaluate --run_dir DIR [--step N|best] [--data_dir D] [--eval_tokens K]
[--baselines]`

Owns the evaluation loop training uses (`eval_batches`, `evaluate_sums`, `evaluate`), so a
checkpoint is scored exactly as training scored it (the same batches and jitted eval step: the
number matches the run's logged val_loss) and adds what compares across tokenizers:
perplexity per token, and bits per byte = total loss in bits / UTF-8 bytes of the evaluated text.
The bytes come from decoding the evaluated target tokens with the run's own tokenizer (end-of-text
markers count zero bytes). The eval windows are consecutive, so their targets are one contiguous
stretch of the val shards and decode without splitting a character.

`--baselines` scores the same evaluated bytes with gzip and xz given the training text (see
`compressor_bits_per_byte`): a language model that cannot beat a general-purpose compressor on
its own data has learned little. `real_word_rate` is the other plain-terms check, on samples
(`generate --word_rate`): the share of a sample's words that occur in the training text.

Prints the numbers, then writes them to `<run_dir>/eval_step<N>.json` (a run directory that cannot
be written loses only the record, not the result). A diverged checkpoint (non-finite parameters) is
never scored: the latest finite one is, with a note, unless a step was asked for.
"""

from __future__ import annotations

import argparse
import lzma
import math
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging

from minigpt_jax import input_pipeline, sharding
from minigpt_jax.config import accumulation_steps
from minigpt_jax.errors import CheckpointError, DataError, UserError, exit_on_user_error
from minigpt_jax.files import write_json_atomic
from minigpt_jax.inference import inference_tokenizer, load_finite_params
from minigpt_jax.model import GPT
from minigpt_jax.shards import find_split, open_shard
from minigpt_jax.train_state import make_eval_step


def eval_batches(
    cfg: ml_collections.ConfigDict, val_paths: list[Path], vocab_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """This process's validation batches: the first `eval_tokens` of the val shards, in order."""
    num_micro = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, jax.device_count())
    per_process = cfg.batch_size // num_micro // jax.process_count()  # a micro-batch's memory
    return input_pipeline.eval_batches(
        val_paths,
        cfg.block_size,
        per_process,
        cfg.eval_tokens,
        vocab_size,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )


def check_eval_data(cfg: ml_collections.ConfigDict, val_paths: list[Path], vocab_size: int) -> None:
    """Read every batch an evaluation will read, before training: a val split smaller than one
    batch, ids past the vocabulary, or (SFT) windows without one counted token fail now, with the
    file named, rather than at the first evaluation."""
    counted = 0.0
    for batch in eval_batches(cfg, val_paths, vocab_size):
        counted += float(batch["weights"].sum()) if "weights" in batch else batch["targets"].size
    if counted == 0:
        raise DataError(
            f"{val_paths[0].parent}: the first {cfg.eval_tokens} validation tokens have no "
            f"token the loss counts (their loss masks are all zero); raise config.eval_tokens "
            f"or re-make the data with answers in the val split"
        )


def evaluate_sums(eval_step, params, batches, mesh) -> tuple[float, float]:
    """(summed loss, token count) over `batches`; sums so that any split averages exactly."""
    sums = [eval_step(params, sharding.global_batch(b, mesh)) for b in batches]
    loss_sum = sum(float(m["loss_sum"]) for m in sums)
    tokens = sum(float(m["tokens"]) for m in sums)
    return loss_sum, tokens


def evaluate(eval_step, params, cfg, val_paths, vocab_size, mesh) -> float:
    """Mean validation loss per token over the first `eval_tokens` of the val shards."""
    loss_sum, tokens = evaluate_sums(
        eval_step, params, eval_batches(cfg, val_paths, vocab_size), mesh
    )
    return loss_sum / tokens


def evaluated_bytes(
    target_batches: list[np.ndarray], tokenizer: Any, weight_batches: list[np.ndarray] | None = None
) -> bytes:
    """The evaluated text: the targets in order (only those the loss counts, when the shards have
    loss masks), end-of-text markers left out.

    Raw token bytes where the tokenizer gives them (BPE `decode_bytes`; the byte tokenizer's ids
    are bytes), so invalid UTF-8 is not inflated into 3-byte replacement characters.
    """
    ids_N = np.concatenate([b.reshape(-1) for b in target_batches])
    counted_N = ids_N != tokenizer.eot_id
    if weight_batches is not None:
        counted_N &= np.concatenate([w.reshape(-1) for w in weight_batches]) > 0
    return token_bytes(ids_N[counted_N], tokenizer)


def token_bytes(ids_N: np.ndarray, tokenizer: Any) -> bytes:
    """The bytes of token ids without end-of-text markers."""
    if tokenizer.identity.get("name") == "byte":
        return np.asarray(ids_N, np.uint8).tobytes()
    if hasattr(tokenizer, "decode_bytes"):
        return tokenizer.decode_bytes(ids_N.tolist())
    return tokenizer.decode(ids_N.tolist()).encode("utf-8")


# The compressors and the word rate see at most the last this many bytes of the train split: xz
# takes seconds per 10 MB, and a compressor's memory of the past is bounded anyway (gzip 32 KB,
# xz -9 64 MB).
TRAIN_TEXT_CAP = 8_000_000


def train_text(
    data_dir: str | Path, tokenizer: Any, cap: int = TRAIN_TEXT_CAP
) -> tuple[bytes, int]:
    """(the last `cap` bytes of the train split's text, the split's token count).

    End-of-text markers are left out, as in the evaluated bytes. Reads back from the end only
    until it has `cap` other tokens (each at least one byte): a huge split is never decoded whole.
    """
    shards = [open_shard(p) for p in find_split(data_dir, "train")]
    pieces, need = [], cap
    for shard in reversed(shards):
        end = shard.size
        while need > 0 and end > 0:
            start = max(end - need, 0)
            piece = np.asarray(shard[start:end])
            pieces.insert(0, piece[piece != tokenizer.eot_id])
            need, end = need - pieces[0].size, start
    ids_N = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return token_bytes(ids_N, tokenizer)[-cap:], sum(s.size for s in shards)


def compressor_bits_per_byte(context: bytes, text: bytes) -> dict[str, float]:
    """{gzip, xz}: bits per byte of `text` when the compressor has already seen `context`.

    Conditional size = compressed(context + text) - compressed(context), the extra bytes the text
    costs after the training text, as the model's loss is the cost after training on it. Both at
    their strongest settings (zlib level 9, xz preset 9).
    """
    if not text:
        raise ValueError("no text to compress")
    sizes = {
        "gzip": lambda b: len(zlib.compress(b, 9)),
        "xz": lambda b: len(lzma.compress(b, preset=9)),
    }
    return {
        name: (size(context + text) - size(context)) * 8 / len(text)
        for name, size in sizes.items()
    }


_WORD = re.compile(r"[^\W\d_]{2,}")  # runs of 2+ letters: one-letter "words" are in any text


def words(text: str) -> set[str]:
    """The distinct words of `text` (runs of two or more letters, case kept)."""
    return set(_WORD.findall(text))


def real_word_rate(text: str, vocabulary: set[str], start: int = 0) -> tuple[int, int]:
    """(words of `text` found in `vocabulary`, words counted): how much of a sample is real words.

    Counts the words that end after `start` (the generated part of prompt + sample), except one
    that runs to the end of the text: the length limit may have cut it.
    """
    found = [
        m.group() for m in _WORD.finditer(text) if m.end() > start and m.end() < len(text)
    ]
    return sum(w in vocabulary for w in found), len(found)


def evaluate_checkpoint(
    run_dir: str | Path,
    step: int | str | None = None,
    data_dir: str | None = None,
    eval_tokens: int | None = None,
    tokenizer: str | None = None,
    baselines: bool = False,
) -> dict[str, Any]:
    """{step, loss, perplexity, bits_per_byte, tokens, bytes, ...} of one checkpoint on val data.

    `tokenizer` overrides the run's own (byte, gpt2 or a path) and must fit the model.
    `baselines` adds {"baselines": {gzip, xz, train_bytes, train_tokens}}: what the compressors
    take for the same bytes given the train split's text (its last TRAIN_TEXT_CAP bytes).
    """
    if eval_tokens is not None and eval_tokens <= 0:
        raise UserError(f"--eval_tokens {eval_tokens}: must be a positive number of tokens")
    mesh = sharding.make_mesh()  # data-parallel over the devices at hand, whatever trained it
    params, record = load_finite_params(run_dir, step, mesh=mesh)
    cfg = ml_collections.ConfigDict(record["config"])
    if data_dir:
        cfg.data_dir = data_dir
    if eval_tokens is not None:
        cfg.eval_tokens = eval_tokens
    tok = (
        inference_tokenizer(record, tokenizer, cfg.data_dir)
        if tokenizer or record["tokenizer"]
        else None
    )
    model_cfg = record["model"]
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    eval_step = jax.jit(
        make_eval_step(GPT(model_cfg), cfg.get("loss_chunks", 0)),
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    val_paths = find_split(cfg.data_dir, "val")
    if baselines:  # refused before the evaluation, not after it
        if tok is None or jax.process_count() > 1:
            raise UserError(
                f"--baselines needs the run's tokenizer and one process (got "
                f"{jax.process_count()} processes, tokenizer {'found' if tok else 'none'}); "
                f"pass --tokenizer byte|gpt2|<path>, or run without --baselines"
            )
        find_split(cfg.data_dir, "train")
    batches = list(eval_batches(cfg, val_paths, model_cfg.vocab_size))
    loss_sum, tokens = evaluate_sums(eval_step, params, batches, mesh)
    loss = loss_sum / tokens
    if not math.isfinite(loss):
        raise CheckpointError(
            f"{run_dir} step {record['step']}: its validation loss is not finite although its "
            f"parameters are; evaluate another step, or check {cfg.data_dir}'s val shards"
        )
    result: dict[str, Any] = {
        "step": record["step"],
        "loss": loss,
        "perplexity": math.exp(loss),
        "tokens": int(tokens),
        "data_dir": str(cfg.data_dir),
        "eval_tokens": int(cfg.eval_tokens),
    }
    if tok is not None and jax.process_count() == 1:
        weights = [b["weights"] for b in batches] if "weights" in batches[0] else None
        text = evaluated_bytes([b["targets"] for b in batches], tok, weights)
        result["bytes"] = len(text)
        result["bits_per_byte"] = loss_sum / math.log(2) / len(text)
        if baselines:
            context, train_tokens = train_text(cfg.data_dir, tok)
            result["baselines"] = {
                **compressor_bits_per_byte(context, text),
                "train_bytes": len(context),
                "train_tokens": train_tokens,
            }
    return result


def baselines_report(result: dict[str, Any]) -> str:
    """The model's bits/byte next to gzip's and xz's on the same bytes, in one short paragraph."""
    b = result["baselines"]
    whole = b["train_bytes"] < TRAIN_TEXT_CAP
    given = (
        f"the whole train split ({b['train_bytes']:,} bytes)"
        if whole
        else f"the last {b['train_bytes']:,} bytes of the {b['train_tokens']:,}-token train split"
    )
    return (
        f"the same {result['bytes']:,} val bytes, given {given}, in bits/byte:\n"
        f"  model {result['bits_per_byte']:.3f}   gzip -9 {b['gzip']:.3f}   xz -9 {b['xz']:.3f}"
    )


def write_record(path: Path, result: dict[str, Any]) -> None:
    """The result as JSON, after it was printed: a failure to write loses only this record."""
    try:
        write_json_atomic(path, result, indent=2)
    except OSError as e:
        raise UserError(
            f"{path}: not written ({e.strerror or e}); the result is printed above; make "
            f"{path.parent} writable to keep it"
        ) from e


def main(argv: list[str] | None = None) -> dict[str, Any]:
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's notes on read-only restores
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the validation shards.")
    parser.add_argument("--run_dir", help="a training run (required unless --hf_dir)")
    parser.add_argument("--step", default=None, help="a step number, latest (default) or best")
    parser.add_argument("--data_dir", default=None, help="default: the run's config.data_dir")
    parser.add_argument("--eval_tokens", type=int, default=None, help="default: the run's")
    parser.add_argument("--tokenizer", default=None, help="override: byte, gpt2 or a path")
    parser.add_argument(
        "--baselines", action="store_true",
        help="also score the same bytes with gzip and xz given the train split's text",
    )
    parser.add_argument("--task", choices=("val_loss", "hellaswag"), default="val_loss")
    parser.add_argument(
        "--task_data",
        help="hellaswag: a .jsonl (ctx, endings, label) or a "
        "datasets name/directory; default: the hub's Rowan/hellaswag",
    )
    parser.add_argument("--hf_dir", help="hellaswag: score Hugging Face GPT-2 weights instead")
    parser.add_argument("--limit", type=int, default=None, help="hellaswag: first N examples")
    args = parser.parse_args(argv)
    if args.task == "hellaswag":
        if args.baselines:
            print("error: --baselines scores --task val_loss's bytes; drop it with --task "
                  "hellaswag", file=sys.stderr)
            sys.exit(2)
        return _hellaswag(args)
    if not args.run_dir:
        parser.error("--run_dir is required")

    with exit_on_user_error(OSError):
        result = evaluate_checkpoint(
            args.run_dir, args.step, args.data_dir, args.eval_tokens, args.tokenizer,
            args.baselines,
        )
        line = f"step {result['step']}  loss {result['loss']:.4f}  ppl {result['perplexity']:.3f}"
        if "bits_per_byte" in result:
            line += f"  bits/byte {result['bits_per_byte']:.4f}"
        print(line + f"  ({result['tokens']} tokens of {result['data_dir']})", flush=True)
        if "baselines" in result:
            print(baselines_report(result), flush=True)
        if jax.process_index() == 0:
            out = Path(args.run_dir) / f"eval_step{result['step']}.json"
            write_record(out, result)
            print(f"wrote {out}")
    return result


def _hellaswag(args: argparse.Namespace) -> dict[str, Any]:
    from minigpt_jax.hellaswag import evaluate_hellaswag

    if bool(args.run_dir) == bool(args.hf_dir):
        print("error: --task hellaswag takes one of --run_dir or --hf_dir", file=sys.stderr)
        sys.exit(2)
    with exit_on_user_error(OSError):
        result, out = evaluate_hellaswag(
            args.run_dir, args.hf_dir, args.task_data, args.step, args.tokenizer, args.limit
        )
        print(f"hellaswag  acc {result['acc']:.4f}  acc_norm {result['acc_norm']:.4f}  "
              f"n {result['n']}", flush=True)
        write_record(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
