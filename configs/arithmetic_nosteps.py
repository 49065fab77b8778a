"""The answers-only control for configs/arithmetic.py: same model, same training tokens, no steps.

python scripts/make_arithmetic_data.py --preset addsubmul --no_steps \
    --out_dir data/arithmetic_nosteps
python -m minigpt_jax.train --config configs/arithmetic_nosteps.py
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic.py"))
    c.data_dir = "data/arithmetic_nosteps"
    c.run_dir = "runs/arithmetic_nosteps"
    return c
