"""RL past the trained lengths on the four-operation model (issues 17 and 18).

The start is the headline run of configs/arithmetic_long.py (+ and - trained to 10 digits, x to
5x2, / to 6/2). As for + and - alone (configs/arithmetic_rl_long_addsub.py), the frontier
proposer opens each operation's next-longer cell as the shorter ones pass `proposer_unlock`, up
to 20-digit + and -, 10x2 x and 12/2 /: twice the longest trained length of every operation, the
issue's 2x test cells. Rewards are exact answers; nothing is labelled.

    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long \
        --train_tokens 24000000 --block_size 512
    python -m minigpt_jax.train --config configs/arithmetic_long.py
    python -m minigpt_jax.rl --config configs/arithmetic_rl_long_all.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_rl_long_all --samples 0 \
        --max_per_cell 50

`max_new_tokens` fits a worked 10x2 product (340 tokens with <eot>), the longest cell the
curriculum may draw; the 3x cells (30 digits, 15xb, 18/b) are left to `eval_arithmetic`.
"""

from pathlib import Path

from minigpt_jax.config import add_rl_keys, load_config_file


def get_config():
    c = add_rl_keys(load_config_file(Path(__file__).with_name("arithmetic_long.py")))
    c.init_from = "checkpoint:runs/arithmetic_long"
    c.run_dir = "runs/arithmetic_rl_long_all"
    c.task_options.max_digits = "+:20,-:20,*:10,/:12"
    c.proposer = "frontier"
    c.prompts_per_step = 32
    c.group_size = 4
    c.max_new_tokens = 352
    c.lr = 3e-5  # configs/arithmetic_rl_long_addsub.py's rate
    c.min_lr = 3e-5
    c.warmup_steps = 5
    c.weight_decay = 0.0
    c.total_steps = 40
    c.eval_every = 0  # only at the end: eval_arithmetic scores the cells in full
    c.eval_per_cell = 10
    c.log_every = 1
    c.checkpoint_every = 10
    return c
