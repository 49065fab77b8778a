"""RL past the trained lengths from the headline trained to the issue's budget (issue 17).

configs/arithmetic_rl_long_all.py (frontier proposer up to 20-digit + and -, 10x2 x and 12/2 /;
exact-answer reward; 32 prompts x 4 samples; lr 3e-5, constant) started from
configs/arithmetic_long_more.py's final checkpoint and run for 260 steps instead of 40:

    python -m minigpt_jax.train --config configs/arithmetic_long.py
    python -m minigpt_jax.train --config configs/arithmetic_long_more.py
    python -m minigpt_jax.rl --config configs/arithmetic_rl_long_more.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_rl_long_more --samples 0 \
        --max_per_cell 100

The rate is constant, so stopping earlier (`--config.total_steps=180`) or resuming with a larger
`total_steps` gives the shorter or longer run. Why 260: 20-digit differences rose at every
evaluation up to it (0.47, 0.66, 0.79, 0.82 at steps 140, 180, 240, 260; BENCHMARKS.md, "RL to
180 steps" and "RL to 260 steps"). A step cost about 45 single-core CPU seconds, so 260 steps were
3.3 CPU hours on top of the supervised 2.9. The measured run updated on every row, before
`skip_no_signal` existed: with `--config.skip_no_signal=false` this config repeats it bit for bit
(and stopping or resuming gives exactly the shorter or longer run); the default computes the same
updates on fewer rows, equal to float rounding, which over many sampled steps can drift apart.

Measured (sessions 20-21, greedy, 100 held-out problems per cell, step 260): 20-digit + 0.96 and
- 0.82, 10x1 x 0.96 and 10x2 0.93, 3x2 x 0.95 and 4/1 / 0.97 at the trained lengths; / by two
digits and at 12 digits 0-0.01. A second seed matched the first within 0.04 on every cell at 60
and 100 steps.
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_rl_long_all.py"))
    start = load_config_file(Path(__file__).with_name("arithmetic_long_more.py"))
    c.init_from = f"checkpoint:{start.run_dir}"
    c.run_dir = "runs/arithmetic_rl_long_more"
    c.total_steps = 260
    return c
