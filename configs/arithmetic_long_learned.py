"""Control for configs/arithmetic_long.py at equal tokens: learned absolute positions (today's
model), no digit positions. Same data, model size, schedule and steps.

    python -m minigpt_jax.train --config configs/arithmetic_long_learned.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long_learned --sample_sets all
"""

import importlib.util
from pathlib import Path


def get_config():
    # Loaded by path: config files are not a package, and this one must stay in step with that one.
    spec = importlib.util.spec_from_file_location(
        "arithmetic_long", Path(__file__).with_name("arithmetic_long.py")
    )
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    c = base.get_config()
    c.model.pos_emb = "learned"
    c.model.digit_pos_max = 0
    c.model.digit_pos_offset_max = 0
    c.model.digit_ids = ()
    c.run_dir = "runs/arithmetic_long_learned"
    return c
