"""Control for configs/arithmetic_long.py at equal tokens: learned absolute positions (today's
model), no digit positions. Same data, model size, schedule and steps.

    python -m minigpt_jax.train --config configs/arithmetic_long_learned.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long_learned --sample_sets all
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
