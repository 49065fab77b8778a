"""Write arithmetic training shards and test problems for `configs/arithmetic.py`.

    python scripts/make_arithmetic_data.py --out_dir data/arithmetic
    python scripts/make_arithmetic_data.py --out_dir data/arithmetic_nosteps --no_steps

Each problem is one document, `<eot>` + problem + worked steps + answer line, in the built-in byte
tokenizer (every digit and operator is one token). Each document is padded with `<eot>` to a
multiple of `--slot` tokens and documents are packed whole into chunks of `block_size` tokens (the
rest of a chunk is `<eot>` padding), so every problem starts at a multiple of `slot`: with the
fixed-width format (see minigpt_jax/arithmetic.py) every digit then sits at one of a few absolute
positions, which a learned position embedding picks up quickly, and the evaluator's prompts (at
position 0) look exactly like training. The test problems (`test.jsonl`, and the longer-numbers
`test_long.jsonl`) are drawn first and never appear in the training or validation shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from minigpt_jax import arithmetic
from minigpt_jax.input_pipeline import MANIFEST, write_shard
from minigpt_jax.tokenizer import ByteTokenizer

TEST_FILES = {"heldout": "test.jsonl", "long": "test_long.jsonl"}


def default_slot(steps: bool) -> int:
    """Slot size that holds a 3-digit +/- problem: 43 tokens worked, 15 answer-only."""
    return 64 if steps else 16


def pack_documents(
    problems,
    steps: bool,
    block_size: int,
    target_tokens: int,
    tokenizer: ByteTokenizer,
    slot: int = 1,
) -> tuple[np.ndarray, int]:
    """Documents, each `<eot>`-padded to a multiple of `slot`, packed whole into block_size chunks
    until `target_tokens`; (tokens, #problems)."""
    if slot < 1 or block_size % slot:
        raise ValueError(f"slot={slot} must be >= 1 and divide block_size={block_size}")
    eot = tokenizer.eot_id
    chunks, chunk, n_problems, total = [], [], 0, 0
    for problem in problems:
        doc = [eot, *tokenizer.encode(arithmetic.document(problem, steps))]
        doc += [eot] * (-len(doc) % slot)
        if len(doc) > block_size:
            raise ValueError(
                f"a {len(doc)}-token problem ({problem.prompt.strip()}) does not fit block_size="
                f"{block_size}; raise --block_size or use fewer digits"
            )
        if len(chunk) + len(doc) > block_size:
            chunks.append(chunk + [eot] * (block_size - len(chunk)))
            total += block_size
            chunk = []
            if total >= target_tokens:
                break
        chunk.extend(doc)
        n_problems += 1
    else:
        raise ValueError("the problem stream ended early")
    return np.asarray(chunks, np.uint16).reshape(-1), n_problems


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def write_dataset(
    out_dir: str | Path,
    steps: bool = True,
    train_tokens: int = 8_000_000,
    val_tokens: int = 131_072,
    block_size: int = 256,
    slot: int | None = None,
    seed: int = 0,
    test_seed: int = 1234,
    mixture: arithmetic.Mixture | None = None,
    heldout_spec=arithmetic.HELDOUT_SPEC,
    long_spec=arithmetic.LONG_SPEC,
) -> dict:
    """Shards, test JSONL and manifest in `out_dir`; returns the manifest."""
    mixture = mixture or arithmetic.Mixture()
    slot = default_slot(steps) if slot is None else slot
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = ByteTokenizer()
    heldout = arithmetic.test_problems(test_seed, heldout_spec)
    long = arithmetic.test_problems(test_seed + 1, long_spec)
    tests = heldout + long

    shards, counts = [], {}
    for split, n_tokens, split_seed in (
        ("train", train_tokens, seed),
        ("val", val_tokens, seed + 1),
    ):
        stream = arithmetic.training_problems(split_seed, mixture, exclude=tests)
        tokens, n_problems = pack_documents(stream, steps, block_size, n_tokens, tokenizer, slot)
        name = f"{split}_000000.bin"
        write_shard(out / name, tokens)
        shards.append({"file": name, "split": split, "tokens": int(tokens.size)})
        counts[split] = n_problems
    for key, problems in (("heldout", heldout), ("long", long)):
        _write_jsonl(out / TEST_FILES[key], [p.to_json() for p in problems])

    manifest = {
        "version": 1,
        "tokenizer": {"spec": "byte", **tokenizer.identity},
        "dtype": "uint16",
        "shards": shards,
        "arithmetic": {
            "steps": steps,
            "block_size": block_size,
            "slot": slot,
            "seed": seed,
            "test_seed": test_seed,
            "mixture": dataclasses.asdict(mixture),
            "problems": counts,
            "test_files": TEST_FILES,
            "test_problems": {"heldout": len(heldout), "long": len(long)},
        },
    }
    text = json.dumps(manifest, indent=2)
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(text)
    tmp.replace(out / MANIFEST)
    return json.loads(text)  # as readers will see it (tuples become lists)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--no_steps", action="store_true", help="answers only, no worked steps")
    ap.add_argument("--train_tokens", type=int, default=8_000_000)
    ap.add_argument("--val_tokens", type=int, default=131_072)
    ap.add_argument("--block_size", type=int, default=256, help="match the config's block_size")
    ap.add_argument(
        "--slot",
        type=int,
        default=None,
        help="problems start at multiples of this (64; 16 no steps)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test_seed", type=int, default=1234)
    args = ap.parse_args(argv)
    try:
        manifest = write_dataset(
            args.out_dir,
            steps=not args.no_steps,
            train_tokens=args.train_tokens,
            val_tokens=args.val_tokens,
            block_size=args.block_size,
            slot=args.slot,
            seed=args.seed,
            test_seed=args.test_seed,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    info, (train, val) = manifest["arithmetic"], manifest["shards"]
    print(
        f"{args.out_dir}: steps={info['steps']} train {train['tokens']:,} tokens "
        f"({info['problems']['train']:,} problems), val {val['tokens']:,} tokens, "
        f"test {info['test_problems']}"
    )


if __name__ == "__main__":
    main()
