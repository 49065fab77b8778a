"""Length generalisation on + and - alone: the mechanism of configs/arithmetic_long.py at a fraction
of its cost (issue 17). Abacus digit positions (the measured options are flags) and no absolute
positions; the `small`
arithmetic size (4 layers, width 128, as configs/arithmetic.py) so that 90 single-core minutes buy
~3,600 steps; trained on operands of 1-10 digits, tested at 5, 10, 20 and 30.

    python scripts/make_arithmetic_data.py --preset long_addsub \
        --out_dir data/arithmetic_long_addsub --train_tokens 16000000
    python -m minigpt_jax.train --config configs/arithmetic_long_addsub.py
    python -m minigpt_jax.train --config configs/arithmetic_long_addsub.py \
        --config.model.pos_emb=rope --config.run_dir=runs/arithmetic_long_addsub_rope
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long_addsub --samples 0

The RoPE row asks whether relative positions (every + and - step line has a fixed width, so "the
previous step" is a constant offset back) let the Abacus indices drive a length-independent
lookup that no-position attention cannot express. Measured: it learns the trained lengths
(100%) but not 20 or 30 digits (0%); BENCHMARKS.md and docs/arithmetic.md.
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_long.py"))
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_embd = 128
    # The digit positions these runs started from (Abacus ids, a random offset per row); the
    # measured options are flags (BENCHMARKS.md), and arithmetic_long.py has the best of them.
    c.model.digit_pos_max = 128
    c.model.digit_pos_offset_max = 100
    c.model.digit_pos_doc_block = 0
    c.model.digit_pos_scheme = "abacus"
    c.model.digit_pos_from_left = False
    c.model.line_segment_max = 0
    c.batch_size = 16
    c.block_size = 256
    c.data_dir = "data/arithmetic_long_addsub"
    c.run_dir = "runs/arithmetic_long_addsub"
    c.total_steps = 3_600
    c.lr = 3e-3  # configs/arithmetic.py's rate at this size
    c.warmup_steps = 100
    c.eval_every = 600
    c.checkpoint_every = 300
    return c
