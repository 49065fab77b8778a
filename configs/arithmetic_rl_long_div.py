"""Can RL teach ÷ longer dividends than it was trained on? (issues 17 and 18)

The start is the ÷-alone model read from the left with shifted ids (`left_read_shift`) and no
from-left table (`digit_pos_from_left=false`; BENCHMARKS.md, "÷ without the from-left table"):
trained on dividends of 1-6 digits by divisors of 1-2 digits, it gets 12-digit ÷ by one digit
right 0.92 and 0.86 of the time (greedy, two seeds) and 18-digit almost never. RL lets the
frontier proposer open 7- to 14-digit cells one length at a time as the shorter ones pass
`proposer_unlock`, and rewards right answers (quotient and remainder), so every length past 6
that it practises is one supervised training never showed. The judges are greedy accuracy at 12
and 18 digits (2x and 3x the longest trained dividend) before and after.
Measured (BENCHMARKS.md, session 33, two seeds): 12/1 0.92 / 0.86 -> 1.00 / 1.00 and 18/1
0.02 / 0 -> 0.88 / 0 in 14.7 / 13.8 CPU minutes (seed 1's ladder had just opened 14/1).
Session 32's start kept the from-left table (`--config.model.digit_pos_from_left=true`, trained
as below with that flag and `--config.run_dir=runs/div_aligned_leftshift`): 12/1 0.57 / 0.24
-> 0.99 / 0.84, 18/1 0 after the same RL.

    python scripts/make_arithmetic_data.py --preset long_div --out_dir data/arithmetic_long_div \
        --train_tokens 16000000
    python -m minigpt_jax.train --config configs/arithmetic_long_addsub.py \
        --config.data_dir=data/arithmetic_long_div --config.model.digit_pos_scheme=coupled \
        --config.model.pos_emb=none --config.model.line_segment_max=16 \
        --config.model.digit_pos_max=256 --config.model.digit_pos_offset_max=0 \
        --config.model.digit_pos_doc_block=32 --config.model.digit_pos_doc_start=half \
        --config.model.digit_pos_from_left=false --config.model.left_op_ids="(47,)" \
        --config.model.answer_mark_ids="(58,)" --config.model.left_read_shift=true \
        --config.total_steps=3000 --config.eval_every=600 \
        --config.run_dir=runs/div_shift_nofl
    python -m minigpt_jax.rl --config configs/arithmetic_rl_long_div.py
    # seed 1: --config.seed=1 on both commands, with --config.run_dir=runs/div_shift_nofl_s1
    # for training and --config.init_from=checkpoint:runs/div_shift_nofl_s1 for RL
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_rl_long_div --samples 0 \
        --max_per_cell 100 --plot none

`max_new_tokens` fits the worked solution of a 14-digit ÷ by two digits (at most 187 tokens), so
the loop's greedy check cuts 18-digit ÷ by two digits short: `eval_arithmetic` scores it in full.
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    # The + and - recipe (32 prompts x 4 samples, lr 3e-5, 60 steps; not swept for ÷) on ÷.
    c = load_config_file(Path(__file__).with_name("arithmetic_rl_long_addsub.py"))
    c.data_dir = "data/arithmetic_long_div"
    # The start's model (the train command above).
    c.model.line_segment_max = 16
    c.model.left_op_ids = (47,)  # "/"
    c.model.answer_mark_ids = (58,)  # ":"
    c.model.left_read_shift = True
    c.init_from = "checkpoint:runs/div_shift_nofl"
    c.run_dir = "runs/arithmetic_rl_long_div"
    c.task_options.max_digits = "/:14"
    c.max_new_tokens = 192
    return c
