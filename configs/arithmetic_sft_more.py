"""The equal-compute control for configs/arithmetic_rl.py: more supervised steps from the same
under-trained checkpoint, on the same data (fresh order: another seed), at a constant learning
rate so that every checkpoint is the end of a shorter budget. Pick the rate by a sweep
(`--config.lr=...`, see BENCHMARKS.md) and read accuracy off the checkpoint at the RL run's CPU
minutes (`cpu_minutes` in both metrics.jsonl files).

    python -m minigpt_jax.train --config configs/arithmetic_sft_more.py --config.lr=1e-3
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_sft_more --step N --samples 0
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_weak.py"))
    c.init_from = "checkpoint:runs/arithmetic_weak"
    c.run_dir = "runs/arithmetic_sft_more"
    c.seed = 1  # the weak run's problems in another order, not the same first 400 batches again
    c.total_steps = 3000
    c.lr = 1e-3
    c.min_lr = c.get_ref("lr")  # constant after warmup
    c.warmup_steps = 10
    c.eval_every = 250
    c.checkpoint_every = 40  # 640: the step configs/arithmetic_rl_long.py starts from
    c.keep_checkpoints = 100
    return c
