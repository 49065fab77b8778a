"""Control for configs/arithmetic_long.py at equal tokens: learned absolute positions (today's
model), no digit positions. Same data, model size, schedule and steps.

    python -m minigpt_jax.train --config configs/arithmetic_long_learned.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long_learned --sample_sets all

Measured (session 18, one seed, about 104 CPU minutes; BENCHMARKS.md): 0 past the trained lengths
with no longer cell's steps right; at the trained lengths x 0.96-1.00 and / 4/1 0.54 (better than
the headline), 5-digit + and - 0.14 / 0.12 (absolute positions tie a lookup to the width).
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_long.py"))
    c.model.pos_emb = "learned"
    c.model.digit_pos_max = 0
    c.model.digit_pos_offset_max = 0
    c.model.digit_pos_doc_block = 0
    c.model.digit_pos_scheme = "abacus"
    c.model.digit_pos_from_left = False
    c.model.line_segment_max = 0
    c.model.digit_ids = ()
    c.run_dir = "runs/arithmetic_long_learned"
    return c
