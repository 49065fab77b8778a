"""Control for configs/arithmetic_long.py at equal tokens: answers only, no worked steps. Same
model (digit positions on), schedule and steps; data from the same preset without steps.

    python scripts/make_arithmetic_data.py --preset long --no_steps \
        --out_dir data/arithmetic_long_nosteps --train_tokens 24000000 --block_size 512
    python -m minigpt_jax.train --config configs/arithmetic_long_nosteps.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long_nosteps --sample_sets all

Measured (session 18, one seed, 106 CPU minutes; BENCHMARKS.md): 0 in every cell but 3x1 and 5x1
x (0.10, 0.04). Coupled ids give answer digits no column without step lines before them, so this
measures the steps and the headline's position scheme together.
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_long.py"))
    c.data_dir = "data/arithmetic_long_nosteps"
    c.run_dir = "runs/arithmetic_long_nosteps"
    return c
