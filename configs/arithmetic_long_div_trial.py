"""÷ alone in the trial layout (issue 17): the headline's model and digit ids, on the one family
it could not learn (÷ by two digits was 0 there). Each quotient digit is found by writing the
divisor's products down from the estimate until one fits, then the step's remainder
(docs/arithmetic.md, "trial"); the lines carry up to 64 segments and the digit ids count from the
left, so a step's columns line up with its partial dividend.

    python scripts/make_arithmetic_data.py --preset long_div_trial \
        --out_dir data/arithmetic_long_div_trial --train_tokens 25000000 --block_size 512
    python -m minigpt_jax.train --config configs/arithmetic_long_div_trial.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/div_trial_2x --sets heldout --samples 0 \
        --max_per_cell 100

The best models so far continue it at the cosine's last rate, then on a warmup-stable-decay
schedule (`lr_schedule=wsd`, docs/training.md): 3,000 more steps at 1e-4, then 3,000 stable and
2,000 cooldown steps, then from that run's stable checkpoint (step 3,000) the same 5,000 steps
again (each start resets the optimizer's moments, hence the 10 warmup steps):

    python -m minigpt_jax.train --config configs/arithmetic_long_div_trial.py \
        --config.init_from=checkpoint:runs/div_trial_2x --config.lr=1e-4 --config.min_lr=1e-4 \
        --config.warmup_steps=10 --config.total_steps=3000 --config.seed=1 \
        --config.run_dir=runs/div_trial_2x_more
    python -m minigpt_jax.train --config configs/arithmetic_long_div_trial.py \
        --config.init_from=checkpoint:runs/div_trial_2x_more@3000 --config.lr=1e-4 \
        --config.min_lr=0 --config.lr_schedule=wsd --config.cooldown_frac=0.4 \
        --config.warmup_steps=10 \
        --config.total_steps=5000 --config.seed=4 --config.run_dir=runs/div_trial_wsd_1e-4
    python -m minigpt_jax.train --config configs/arithmetic_long_div_trial.py \
        --config.init_from=checkpoint:runs/div_trial_wsd_1e-4@3000 --config.lr=1e-4 \
        --config.min_lr=0 --config.lr_schedule=wsd --config.cooldown_frac=0.4 \
        --config.warmup_steps=10 --config.total_steps=5000 --config.seed=7 \
        --config.run_dir=runs/div_trial_wsd2_1e-4

Measured (BENCHMARKS.md, sessions 23-25; greedy, one core, one seed): this config alone (24.6M
tokens, 87 CPU minutes): 4/1 and 6/1 1.00, 4/2 0.74, 6/2 0.58 (100 held-out problems per cell);
the chain (69.6M tokens, about 278 CPU minutes), on 500 problems per cell (`eval_arithmetic
--fresh 400` beside the 100): 4/2 0.90, 6/2 0.81 (the same at a stable rate of 3e-4: 0.90 /
0.83; verified@8 0.97 / 0.96), where it has levelled off, short of the issue's 95% greedy.
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("arithmetic_long.py"))
    c.model.line_segment_max = 64  # a 6/2 trial line has up to 51 segments
    c.model.digit_pos_from_left = True
    c.data_dir = "data/arithmetic_long_div_trial"
    c.run_dir = "runs/div_trial_2x"
    c.total_steps = 6_000
    c.eval_every = 1_000
    c.checkpoint_every = 1_000
    c.keep_checkpoints = 7
    return c
