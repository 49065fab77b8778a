"""Can RL teach a model longer numbers than it was trained on? (issues 17 and 18)

The start is a + and - model whose positions extend past its training lengths (coupled digit
ids, line segments, document blocks of 32 ids, no token positions; BENCHMARKS.md, "Arithmetic
that generalizes"): trained on operands of 1-10 digits, it already gets some 20-digit sums right
greedily. RL lets the frontier proposer open 11- to 20-digit cells one length at a time as the
shorter ones pass `proposer_unlock`, and rewards right answers, so every length it practises is
one that supervised training never showed. The judge is greedy accuracy at 20 digits before and
after, against the start's sampled success there (pass@G): sharpening what the model could
sample, or learning what it could not.

    python scripts/make_arithmetic_data.py --preset long_addsub \
        --out_dir data/arithmetic_long_addsub --train_tokens 16000000
    python -m minigpt_jax.train --config configs/arithmetic_long_addsub.py \
        --config.model.digit_pos_scheme=coupled --config.model.pos_emb=none \
        --config.model.line_segment_max=8 --config.model.digit_pos_max=256 \
        --config.model.digit_pos_offset_max=0 --config.model.digit_pos_doc_block=32 \
        --config.total_steps=3000 --config.seed=1 --config.run_dir=runs/addsub_b32_s1_fl_false
    python -m minigpt_jax.rl --config configs/arithmetic_rl_long_addsub.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_rl_long_addsub --samples 0

The greedy check every `eval_every` steps scores the data's held-out (5 and 10 digits) and long
(20 and 30 digits) sets; `max_new_tokens` fits a 20-digit solution (9 tokens a column), so the
check's 30-digit cells are cut short: `eval_arithmetic` scores them in full.
"""

from pathlib import Path

from minigpt_jax.config import add_rl_keys, load_config_file


def get_config():
    c = add_rl_keys(load_config_file(Path(__file__).with_name("arithmetic_long_addsub.py")))
    # The start's model (the session-14 blocks-of-32 run; the train command above).
    c.model.digit_pos_scheme = "coupled"
    c.model.pos_emb = "none"
    c.model.line_segment_max = 8
    c.model.digit_pos_max = 256
    c.model.digit_pos_offset_max = 0
    c.model.digit_pos_doc_block = 32
    c.init_from = "checkpoint:runs/addsub_b32_s1_fl_false"
    c.run_dir = "runs/arithmetic_rl_long_addsub"
    c.task_options.max_digits = "+:20,-:20"
    c.proposer = "frontier"
    c.prompts_per_step = 32
    c.group_size = 4
    c.max_new_tokens = 224
    c.lr = 3e-5
    c.min_lr = 3e-5
    c.warmup_steps = 5
    c.weight_decay = 0.0
    c.total_steps = 60
    c.eval_every = 30
    c.eval_per_cell = 20
    c.log_every = 1
    c.checkpoint_every = 10
    return c
