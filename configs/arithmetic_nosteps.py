"""The answers-only control for configs/arithmetic.py: same model, same training tokens, no steps.

python scripts/make_arithmetic_data.py --preset addsubmul --no_steps \
    --out_dir data/arithmetic_nosteps
python -m minigpt_jax.train --config configs/arithmetic_nosteps.py
"""

import importlib.util
from pathlib import Path


def get_config():
    # Loaded by path: config files are not a package, and this one must stay in step with that one.
    spec = importlib.util.spec_from_file_location(
        "arithmetic", Path(__file__).with_name("arithmetic.py")
    )
    steps_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps_config)
    c = steps_config.get_config()
    c.data_dir = "data/arithmetic_nosteps"
    c.run_dir = "runs/arithmetic_nosteps"
    return c
