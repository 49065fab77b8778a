"""The arithmetic task's data writer: training shards and test problems for `configs/arithmetic.py`.

    python scripts/make_arithmetic_data.py --out_dir data/arithmetic
    python scripts/make_arithmetic_data.py --out_dir data/arithmetic_nosteps --no_steps
    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long

`--preset` names a training mixture and its test sets (`problems.PRESETS`): "default" (all four
operations), "addsubmul" (the first 14-minute result's data, no division), "long" (operands up to
10 digits for + and -, tested at 2x and 3x the longest trained length; the aligned layout), and
its operations alone, "long_addsub", "long_mul", "long_div" (and "long_div_table",
"long_div_trial", "long_div_trial_sub", "long_div_trial_rem" and "long_div_trial_pad", in those
layouts). `--op_weights` changes only how often each operation is drawn. The manifest records the
whole mixture (`task.mixture`), the digit range of each operand it can draw
(`task.operand_ranges`) and its layout.

Each problem is one document, `<eot>` + problem + worked steps + answer line, in the built-in byte
tokenizer (every digit and operator is one token). Documents are packed whole and densely into
chunks of `block_size` tokens (the rest of a chunk is `<eot>` padding); the config's model separates
documents at `<eot>` (`model.doc_sep_id`), so every problem is trained at positions 0, 1, ... seeing
only itself, exactly as the evaluator prompts it (unless `model.digit_pos_doc_block` lets
training documents see each other's digit ids). A loss-mask shard beside each token shard counts
the solution and the `<eot>` that ends it, not the prompt: the operands are random by construction,
so their loss cannot fall and would only add noise to the gradients. The test problems
(`test.jsonl`, and the longer-numbers `test_long.jsonl`) are drawn first and never appear in the
training or validation shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from minigpt_jax.errors import DataError, exit_on_user_error
from minigpt_jax.files import atomic_write
from minigpt_jax.shards import (
    claim_out_dir,
    find_shards,
    mask_path,
    open_shard,
    start_writing,
    write_manifest,
    write_shard,
    writing_data,
)
from minigpt_jax.tasks.arithmetic import problems as arithmetic
from minigpt_jax.tokenizer import ByteTokenizer, tokenizer_record

TEST_FILES = {"heldout": "test.jsonl", "long": "test_long.jsonl"}


def pack_documents(
    problems,
    steps: bool,
    block_size: int,
    target_tokens: int,
    tokenizer: ByteTokenizer,
    layout: str = "classic",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Documents packed whole into block_size chunks until `target_tokens`: (tokens, loss mask,
    #problems). The mask is 1 on each solution and on the `<eot>` after it (the next document's
    first token, or the chunk's first padding token)."""
    eot = tokenizer.eot_id
    tokens: list[int] = []
    mask: list[int] = []
    chunk: list[int] = []
    chunk_mask: list[int] = []
    n_problems = 0
    last_chunk_full = False  # then the next chunk's first <eot> ends its last document

    def close_chunk() -> None:
        nonlocal last_chunk_full
        pad = block_size - len(chunk)
        tokens.extend(chunk + [eot] * pad)
        mask.extend(chunk_mask + [1] * min(pad, 1) + [0] * max(pad - 1, 0))
        last_chunk_full = pad == 0

    for problem in problems:
        prompt = tokenizer.encode(problem.prompt)
        answer = tokenizer.encode(arithmetic.solution(problem, steps, layout))
        doc = [eot, *prompt, *answer]
        if len(doc) > block_size:
            raise DataError(
                f"a {len(doc)}-token problem ({problem.prompt.strip()}) does not fit block_size="
                f"{block_size}; raise --block_size or use fewer digits"
            )
        if len(chunk) + len(doc) > block_size:
            close_chunk()
            chunk, chunk_mask = [], []
            if len(tokens) >= target_tokens:
                break
        # The leading <eot> ends the previous document; after padding it ends nothing.
        ends_previous = bool(chunk) or last_chunk_full
        chunk_mask += [int(ends_previous)] + [0] * len(prompt) + [1] * len(answer)
        chunk += doc
        n_problems += 1
    else:
        raise ValueError("the problem stream ended early")
    return np.asarray(tokens, np.uint16), np.asarray(mask, np.uint16), n_problems


# A document's start: <eot> (written as byte 0 below) and the problem line.
_DOC_START_RE = re.compile(rb"\0(\d+)([-+*/])(\d+)\n")


def problems_in_shards(data_dir: str | Path) -> set[arithmetic.Problem]:
    """Every problem the data dir's train and val shards hold, read back from their tokens (each
    document's first line), not replayed from the manifest's seed: a new test set can then avoid
    them whichever version or flags wrote the shards."""
    eot = ByteTokenizer().eot_id
    found: set[arithmetic.Problem] = set()
    for split in ("train", "val"):
        for shard in find_shards(data_dir, split):
            tokens = np.asarray(open_shard(shard))
            if tokens.size and (int(tokens.max()) > eot or not (tokens == eot).any()):
                raise DataError(f"{shard}: not byte-tokenized arithmetic documents; "
                                f"write the data with scripts/make_arithmetic_data.py")
            text = np.where(tokens == eot, 0, tokens).astype(np.uint8).tobytes()
            starts = [m.groups() for m in _DOC_START_RE.finditer(text)]
            try:
                found.update(arithmetic.Problem(op.decode(), int(a), int(b)) for a, op, b in starts)
            except ValueError as e:
                raise DataError(f"{shard}: {e}; rewrite the data with "
                                f"scripts/make_arithmetic_data.py") from e
            if tokens.size and not starts:
                raise DataError(f"{shard}: holds no arithmetic problem; write the data with "
                                f"scripts/make_arithmetic_data.py")
    return found


def _write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_dataset(
    out_dir: str | Path,
    steps: bool = True,
    train_tokens: int = 8_000_000,
    val_tokens: int = 131_072,
    block_size: int = 256,
    seed: int = 0,
    test_seed: int = 1234,
    mixture: arithmetic.Mixture | None = None,
    heldout_spec=None,
    long_spec=None,
    preset: str = "default",
    overwrite: bool = False,
) -> dict:
    """Shards, test JSONL and manifest in `out_dir`; returns the manifest. `preset` supplies what
    `mixture` and the specs leave unset. `out_dir` must be new, empty or earlier arithmetic data
    (whose files are replaced), unless `overwrite`."""
    if preset not in arithmetic.PRESETS:
        raise DataError(f"--preset {preset!r}: use one of {', '.join(arithmetic.PRESETS)}")
    preset_mix, preset_heldout, preset_long = arithmetic.PRESETS[preset]
    mixture = mixture or preset_mix
    heldout_spec = heldout_spec or preset_heldout
    long_spec = long_spec or preset_long
    out = Path(out_dir)
    tokenizer = ByteTokenizer()
    record = tokenizer_record("byte", tokenizer)
    claim_out_dir(out, "arithmetic", record, overwrite)
    with writing_data(out, "make room or fix the permissions, then rerun"):
        start_writing(out, "arithmetic", record)
        return _write(out, tokenizer, record, steps, train_tokens, val_tokens, block_size, seed,
                      test_seed, mixture, heldout_spec, long_spec, preset)


def _write(out: Path, tokenizer: ByteTokenizer, record: dict, steps: bool, train_tokens: int,
           val_tokens: int, block_size: int, seed: int, test_seed: int,
           mixture: arithmetic.Mixture, heldout_spec, long_spec, preset: str) -> dict:
    heldout = arithmetic.heldout_problems(test_seed, heldout_spec)
    long = arithmetic.heldout_problems(test_seed + 1, long_spec)
    tests = heldout + long

    shards, counts = [], {}
    for split, n_tokens, split_seed in (
        ("train", train_tokens, seed),
        ("val", val_tokens, seed + 1),
    ):
        stream = arithmetic.training_problems(split_seed, mixture, exclude=tests)
        tokens, mask, n_problems = pack_documents(
            stream, steps, block_size, n_tokens, tokenizer, mixture.layout
        )
        name = f"{split}_000000.bin"
        write_shard(mask_path(out / name), mask)  # first: a token shard always has its mask
        write_shard(out / name, tokens)
        shards.append(
            {
                "file": name,
                "split": split,
                "tokens": int(tokens.size),
                "mask": mask_path(out / name).name,
                "target_tokens": int(mask.sum()),
            }
        )
        counts[split] = n_problems
    for key, problems in (("heldout", heldout), ("long", long)):
        _write_jsonl(out / TEST_FILES[key], [p.to_json() for p in problems])

    return write_manifest(
        out,
        record,
        "uint16",
        shards,
        writer="arithmetic",
        packing={"block_size": block_size, "whole_documents": True},
        task={
            "name": "arithmetic",
            "preset": preset,
            "steps": steps,
            "seed": seed,
            "test_seed": test_seed,
            "mixture": dataclasses.asdict(mixture),
            "operand_ranges": {
                op: {"a": list(ra), "b": list(rb)}
                for op, (ra, rb) in mixture.operand_ranges().items()
            },
            "problems": counts,
            "test_files": TEST_FILES,
            "test_problems": {"heldout": len(heldout), "long": len(long)},
        },
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="scripts/make_arithmetic_data.py", description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--preset", default="default", choices=sorted(arithmetic.PRESETS),
                    help="training mixture and test sets (problems.PRESETS)")
    ap.add_argument("--no_steps", action="store_true", help="answers only, no worked steps")
    ap.add_argument("--op_weights", type=float, nargs=4, metavar=("ADD", "SUB", "MUL", "DIV"),
                    help="the mixture's share of problems per operation, + - x /, in place of "
                         "the preset's (relative weights; the test sets stay the preset's)")
    ap.add_argument("--train_tokens", type=int, default=8_000_000)
    ap.add_argument("--val_tokens", type=int, default=131_072)
    ap.add_argument("--block_size", type=int, default=256, help="match the config's block_size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test_seed", type=int, default=1234)
    ap.add_argument("--overwrite", action="store_true",
                    help="replace what --out_dir holds (only earlier arithmetic data is "
                         "replaced without it)")
    args = ap.parse_args(argv)
    with exit_on_user_error():
        for flag in ("train_tokens", "val_tokens", "block_size"):  # else a silent 1-chunk shard
            if getattr(args, flag) <= 0:
                raise DataError(f"--{flag} {getattr(args, flag)}: must be a positive number")
        mixture = None
        if args.op_weights is not None:
            try:  # the mixture checks its weights, so the CLI and the Python API refuse alike
                mixture = dataclasses.replace(
                    arithmetic.PRESETS[args.preset][0], op_weights=tuple(args.op_weights)
                )
            except ValueError:
                given = " ".join(f"{w:g}" for w in args.op_weights)
                raise DataError(f"--op_weights {given}: give four finite weights >= 0 for + - x /, "
                                "at least one of them > 0 and their sum finite") from None
        manifest = write_dataset(
            args.out_dir,
            steps=not args.no_steps,
            train_tokens=args.train_tokens,
            val_tokens=args.val_tokens,
            block_size=args.block_size,
            seed=args.seed,
            test_seed=args.test_seed,
            overwrite=args.overwrite,
            preset=args.preset,
            mixture=mixture,
        )
    info, (train, val) = manifest["task"], manifest["shards"]
    print(
        f"{args.out_dir}: steps={info['steps']} train {train['tokens']:,} tokens "
        f"({info['problems']['train']:,} problems), val {val['tokens']:,} tokens, "
        f"test {info['test_problems']}"
    )

