"""Can the input pipeline alone feed a GPU? Tokens/s of the trainer's Grain pipeline on one core.

    python bench/input_pipeline_bench.py                       # GPT-2 124M's batch: 16 x 1024
    python bench/input_pipeline_bench.py --batch 64 --seconds 10 --json out.json

Batches come from `input_pipeline.train_dataset` exactly as `minigpt_jax.train` builds it
(shuffled windows of llm.c uint16 shards, memory-mapped, checked against the vocabulary), in its
default in-process mode (no worker processes: Grain's read threads share the one core). The process
pins itself to one core with `os.sched_setaffinity` before anything starts a thread, so every
thread Grain starts competes for that core. Shards are random GPT-2-range tokens written with the
project's shard writer into a temporary directory (`--data_dir` reads existing shards instead).
Goal: >= 3M tokens/s (a single H100 trains GPT-2 124M at ~1.5M tokens/s at best).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--core", type=int, default=None, help="core to pin to (default: the last)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--shard_tokens", type=int, default=20_000_000)
    p.add_argument("--data_dir", default="", help="existing shards instead of random ones")
    p.add_argument("--seconds", type=float, default=3.0, help="per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})  # before numpy or Grain start a thread

    import numpy as np

    from minigpt_jax.input_pipeline import train_dataset
    from minigpt_jax.shards import find_shards, write_shard

    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as tmp:
        data_dir = Path(args.data_dir or tmp)
        if not args.data_dir:
            rng = np.random.default_rng(0)
            for i in range(args.shards):
                tokens = rng.integers(0, 50257, args.shard_tokens, dtype=np.uint16)
                write_shard(data_dir / f"train_{i:06d}.bin", tokens)
        paths = find_shards(data_dir, "train")
        ds = train_dataset(paths, args.block, args.batch, seed=0, vocab_size=50257)
        it = iter(ds)
        for _ in range(20):  # fill the prefetch buffer, open the maps
            next(it)
        tokens_per_batch = args.batch * args.block
        rates = []
        for _ in range(args.rounds):
            n, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < args.seconds:
                batch = next(it)
                n += 1
            rates.append(n * tokens_per_batch / elapsed)
        assert batch["inputs"].shape == (args.batch, args.block)

    result = {
        "core": core,
        "batch": args.batch,
        "block": args.block,
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_rounds": rates,
        "batches_per_s": statistics.median(rates) / tokens_per_batch,
    }
    print(
        f"one core ({core}), batch {args.batch} x {args.block}: "
        f"{result['tokens_per_s'] / 1e6:.2f}M tokens/s median "
        f"({min(rates) / 1e6:.2f}–{max(rates) / 1e6:.2f}M), {result['batches_per_s']:.0f} batches/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
