"""The deliberately under-trained supervised run that RL starts from (configs/arithmetic_rl.py).

    python scripts/make_arithmetic_data.py --out_dir data/arithmetic_all      # all four operations
    python -m minigpt_jax.train --config configs/arithmetic_weak.py

configs/arithmetic.py's model on the default mixture (+ - x / with worked steps), stopped early so
that the harder cells (2x2 x, division) sit well below 100% greedy: room for RL to show what it
adds over more supervised steps (configs/arithmetic_sft_more.py, the equal-compute control).
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic.py"))
    c.data_dir = "data/arithmetic_all"
    c.run_dir = "runs/arithmetic_weak"
    c.total_steps = 400
    c.eval_every = 200
    c.checkpoint_every = 100
    return c
