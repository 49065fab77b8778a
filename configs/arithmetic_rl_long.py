"""Self-play curriculum beyond the supervised lengths (issue 18): RL from the supervised control's
checkpoint at step 640 (configs/arithmetic_sft_more.py, about 11 CPU minutes past the weak run),
with the frontier proposer allowed to open longer cells (up to 6-digit + and -, 4x2 x, 6-digit /
dividends) as the shorter ones are solved.

    python -m minigpt_jax.train --config configs/arithmetic_sft_more.py    # needs checkpoint 640
    python -m minigpt_jax.rl --config configs/arithmetic_rl_long.py
    python -m minigpt_jax.rl --config configs/arithmetic_rl_long.py --config.proposer=uniform \
        --config.run_dir=runs/arithmetic_rl_long_uniform                      # the comparison
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_rl_long --sets heldout,long \
        --samples 8 --sample_sets all --max_per_cell 50

The supervised data stop at 3-digit + and -, 2x2 x and 4/2 /; the data directory's long test set
(4- and 5-digit +, 4-digit -, 3x2 x, 5/1 /) is never drawn for training.
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_rl.py"))
    c.init_from = "checkpoint:runs/arithmetic_sft_more@640"
    c.run_dir = "runs/arithmetic_rl_long"
    c.proposer = "frontier"
    c.task_options.max_digits = "+:6,-:6,*:4,/:6"
    c.proposer_unlock = 0.6
    return c
