"""RL from the greedy policy's own first wrong lines, on ÷ near 50% (issue 18, session 39).

The start is the four-operation model after its second stage with ÷ read from the left through
shifted ids (issue 17's session 34): ÷ 4/1 0.507 and 6/1 0.377 greedy on 300 problems per cell,
+ − × at their trained lengths 0.97-1.00. Commands, in order (the data a few minutes, the two
supervised stages about 139 CPU minutes, RL 20):

    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long \
        --train_tokens 24000000 --block_size 512
    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long_s1 \
        --train_tokens 16000000 --block_size 512 --seed 1
    F='--config.model.left_op_ids=(47,) --config.model.answer_mark_ids=(58,)
       --config.model.left_read_shift=true'
    python -m minigpt_jax.train --config configs/arithmetic_long.py $F \
        --config.run_dir=runs/arithmetic_long_shift
    python -m minigpt_jax.train --config configs/arithmetic_long_more.py $F \
        --config.init_from=checkpoint:runs/arithmetic_long_shift \
        --config.run_dir=runs/arithmetic_long_more_shift
    python -m minigpt_jax.rl --config configs/arithmetic_rl_div_branch.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_rl_div_branch --sets heldout \
        --samples 0 --max_per_cell 100

Each step decodes 32 ÷ problems (3/1 to 6/1, frontier proposer) greedily; for each one greedy gets
wrong, 8 samples of its first wrong line alone (at most 16 tokens) are drawn from the lines it got
right and scored by the step checker, the group mean as baseline (`rollout_mode="greedy_branch"`,
docs/post-training.md). A step costs about 2 CPU seconds on one core, so 580 steps are the
issue's 20 CPU minutes.

Measured (BENCHMARKS.md, post-training, "Session 39"; single-threaded, about 20 CPU min, 300
problems per ÷ cell): ÷ 4/1 0.507 -> 0.690 / 0.707 and 6/1 0.377 -> 0.577 / 0.543 (seeds 0 / 1,
steps 580 / 540), with + − × kept (the mean of the 12 trained test cells 0.735 -> 0.758 / 0.761).
Supervised steps on a ÷-heavy mixture, rate swept, reach 0.663 / 0.550 (mean 0.743) in as many
CPU minutes. At lr 1e-4 ÷ rose to 0.783 / 0.627 (seed 0), but 10-digit + fell to 0.40 and ×
to 0.53-0.68; at 5e-5, 0.737 / 0.593 with + − × at 0.90-1.00 (mean 0.748).
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_rl_long_more.py"))
    c.model.left_op_ids = (47,)  # "/": its dividend read from the left
    c.model.answer_mark_ids = (58,)  # ":"
    c.model.left_read_shift = True
    c.init_from = "checkpoint:runs/arithmetic_long_more_shift"
    c.run_dir = "runs/arithmetic_rl_div_branch"
    c.proposer_cells = "div 3/1,div 4/1,div 5/1,div 6/1"
    c.rollout_mode = "greedy_branch"
    c.branch_tokens = 16  # a ÷-by-one-digit line is at most 10 characters
    c.prompts_per_step = 32
    c.group_size = 8
    c.rollout_first_tokens = 64
    c.total_steps = 580
    c.checkpoint_every = 20
    c.keep_checkpoints = 100
    return c
