"""Arithmetic that generalizes (issue 17): one model, all four operations, Abacus digit positions.

    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long \
        --train_tokens 60000000
    python -m minigpt_jax.train --config configs/arithmetic_long.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long --sample_sets all

Training draws + and - with up to 10 digits per operand, x up to 5x2, / up to 6/2 (the data's
manifest records the ranges); the test sets are the trained lengths and 2x and 3x the longest.
No absolute positions (`pos_emb="none"`): causal attention plus each digit's index within its
number (random offset in training, so indices up to 100 are trained) is all the model knows of
place, so nothing ties a step to a column index seen in training. Training windows are 256 tokens
(every training problem fits); the model's context, 1024, fits the full worked solution of a
30-digit problem (30x2 multiplication: 963 tokens) after its prompt.

Budget: about 3 CPU hours on 2 cores (the headline run); see docs/arithmetic.md.

Measured on + and - alone (configs/arithmetic_long_addsub.py, BENCHMARKS.md): with no token
positions the 4-layer model had not learned even 5-digit sums after 2,300 steps; with RoPE it
learned the trained lengths but failed at 20 and 30 digits. Coupled ids + line segments +
document blocks (session 12: `digit_pos_scheme="coupled"`, `line_segment_max=8`,
`digit_pos_doc_block`, no offsets) reached 0.80 / 0.88 at 20 digits; set those here, with blocks
wide enough that every evaluated id is trained (docs/arithmetic.md), before spending the 3 hours.
"""

from minigpt_jax.config import default_config, model_fields
from minigpt_jax.digit_positions import digit_token_ids, newline_token_ids
from minigpt_jax.tokenizer import ByteTokenizer

# Longest trained number: a 10-digit operand or an 11-digit sum; offsets up to 100 train indices
# up to 111, beyond any test number (a 15x2 product has 17 digits, a 30-digit sum 31).
DIGIT_POS_OFFSET_MAX = 100
DIGIT_POS_MAX = 128


def get_config():
    c = default_config()
    c.model = model_fields(
        "small",
        vocab_size=257,
        n_layer=6,
        n_head=8,
        n_embd=256,
        block_size=1024,
        doc_sep_id=256,  # the byte tokenizer's <eot>: each packed problem sees only itself
        pos_emb="none",
        digit_pos_max=DIGIT_POS_MAX,
        digit_pos_offset_max=DIGIT_POS_OFFSET_MAX,
        digit_ids=digit_token_ids(ByteTokenizer()),
        newline_ids=newline_token_ids(ByteTokenizer()),  # used by digit_pos_scheme="coupled"
    )
    c.data_dir = "data/arithmetic_long"
    c.run_dir = "runs/arithmetic_long"
    c.total_steps = 12_000
    c.batch_size = 16
    c.block_size = 256
    c.lr = 1e-3
    c.min_lr = 1e-4
    c.warmup_steps = 200
    c.weight_decay = 0.1
    c.log_every = 50
    c.peak_tflops = 1.0  # skip the start-up matmul measurement (MFU is meaningless here)
    c.eval_every = 1000
    c.eval_tokens = 16_384
    c.checkpoint_every = 500
    return c
