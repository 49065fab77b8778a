"""What a checkpoint save costs the train loop (issue 5 target: async adds < 10% to the saving step)

The `small` CPU config (configs/small.py: 4 layers, width 256, batch 16 x 256 tokens) runs the real
jitted, donated train step on the real Grain pipeline, saving with `RunCheckpoints` every
`--every` steps, the way `train.py` does. Every step is timed to its end (block_until_ready), so a
save's blocking part and any slowdown from the background write land in the steps' times. Modes
run side by side in one process: no saves, async saves, synchronous saves.

    python bench/checkpoint_bench.py [--steps 60] [--every 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from minigpt_jax import input_pipeline, sharding, shards
from minigpt_jax.checkpoint import RunCheckpoints
from minigpt_jax.config import config_record
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.train_state import (
    create_train_state,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_random_shards  # noqa: E402


def run(mode: str, steps: int, every: int, data_dir: Path, root: Path) -> dict[str, float]:
    cfg = GPTConfig.preset("small", vocab_size=257)
    model = GPT(cfg)
    tx = make_optimizer(make_lr_schedule(1e-3, 1e-4, 10, steps))
    mesh = sharding.make_mesh()
    _, _, init, step_fn = sharding.jit_sharded(
        lambda rng: create_train_state(model, tx, rng), make_train_step(model, tx),
        jax.random.key(0), mesh,
    )
    state = init(jax.random.key(0))
    paths = shards.find_shards(data_dir, "train")
    it = iter(input_pipeline.train_dataset(paths, 256, 16, seed=0, vocab_size=257))
    ckpts = None
    if mode != "none":
        ckpts = RunCheckpoints(root / mode, keep=2, async_save=(mode == "async"))
    from minigpt_jax.config import default_config

    config = config_record(default_config())
    times, saving, save_calls = [], [], []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, sharding.global_batch(next(it), mesh))
        if ckpts is not None and step % every == 0:
            jax.block_until_ready(state)  # save() waits for the step anyway; time only the save
            t_save = time.perf_counter()
            ckpts.save(step, state, it, config, None)
            save_calls.append(time.perf_counter() - t_save)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        saving.append(step % every == 0)
    if ckpts is not None:
        ckpts.close()
    times_arr, saving_arr = np.array(times[1:]), np.array(saving[1:])  # step 1 compiles
    after = np.roll(saving_arr, 1) & ~saving_arr  # the step right after a save
    return {
        "plain": float(np.median(times_arr[~saving_arr & ~after])),
        "saving": float(np.median(times_arr[saving_arr])) if saving_arr.any() else float("nan"),
        "after": float(np.median(times_arr[after])) if after.any() else float("nan"),
        "total": float(times_arr.sum()),
        "save_call": float(np.median(save_calls)) if save_calls else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt_bench_"))
    try:
        data = write_random_shards(root / "data", train_tokens=400_000, val_tokens=10_000)
        results = {m: run(m, args.steps, args.every, data, root) for m in ("none", "async", "sync")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"device: {jax.devices()[0].device_kind}  config: small, batch 16 x 256, "
          f"{args.steps} steps, a save every {args.every}")
    print("| saves | median step s (no save) | saving step s | step after a save s | "
          "saving step vs no-save step | blocking save() call s | save() / step |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        over = "" if mode == "none" else f"{(r['saving'] / r['plain'] - 1) * 100:+.1f}%"
        call = "" if mode == "none" else f"{r['save_call']:.3f}"
        share = "" if mode == "none" else f"{r['save_call'] / r['plain'] * 100:.1f}%"
        print(f"| {mode} | {r['plain']:.3f} | {r['saving']:.3f} | {r['after']:.3f} | {over} | "
              f"{call} | {share} |")


if __name__ == "__main__":
    main()
