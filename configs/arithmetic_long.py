"""Arithmetic that generalizes (issue 17): one model, all four operations, longer numbers.

    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long \
        --train_tokens 24000000 --block_size 512
    python -m minigpt_jax.train --config configs/arithmetic_long.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long --samples 0 \
        --max_per_cell 50

Training draws + and - with up to 10 digits per operand, x up to 5x2, / up to 6/2 (the data's
manifest records the ranges), written in the aligned layout (x one line per product column, the
quotient zero-padded); the test sets are the trained lengths and 2x and 3x the longest.
No token positions (`pos_emb="none"`): what the model knows of place is coupled digit ids (each
token's column) and each token's segment within its line (docs/arithmetic.md). Training rows'
documents see each other, each under its own block of 32 ids (`digit_pos_doc_block`) from a start
in the block's first half, so that every id is contrasted with ids at every distance. Training
windows are 512 tokens, so that a row holds at least two worked 5x2 products; the model's
context, 1024, fits the full worked solution of a 30-digit problem after its prompt.

Every choice is the one measured best on one operation family at a time (the 4-layer width-128
model, 3,000 steps, one core; BENCHMARKS.md, sessions 12-16): blocks of 32 (blocks of 64 scored 0
on 20-digit sums), no from-left ids (they broke the + answer line: 10-digit sums 0.62), no
run-start marker (worse on both seeds). Known limits before the run: ids 28-31 are never trained
(block starts < 16, spans <= 12), so 30-digit + and - cannot be right; / by two digits was 0.04
alone; the 20-digit sums vary by seed (0.80 / 0.38).

Budget: 4,800 steps of 8 x 512 tokens (19.7M tokens): 104.6 single-core CPU minutes, within the
issue's 3 CPU hours. Measured (session 17, one seed; BENCHMARKS.md): + and - 1.00 and x 0.88-0.96
at the trained lengths, / 0.34 (4/1) and 0 by two digits, 20-digit sums 0: every family worse than
when the same model learned it alone in 3,000 steps.
"""

from minigpt_jax.config import default_config, model_fields
from minigpt_jax.digit_positions import digit_token_ids, newline_token_ids
from minigpt_jax.tokenizer import ByteTokenizer


def get_config():
    c = default_config()
    c.model = model_fields(
        "small",
        vocab_size=257,
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=1024,
        doc_sep_id=256,  # the byte tokenizer's <eot>: evaluation sees one problem at a time
        pos_emb="none",
        digit_pos_max=256,
        digit_pos_offset_max=0,  # the document blocks replace one offset per row
        digit_pos_doc_block=32,
        digit_pos_doc_start="half",
        digit_pos_scheme="coupled",
        line_segment_max=32,  # an aligned x line has 23 segments
        digit_ids=digit_token_ids(ByteTokenizer()),
        newline_ids=newline_token_ids(ByteTokenizer()),
    )
    c.data_dir = "data/arithmetic_long"
    c.run_dir = "runs/arithmetic_long"
    c.total_steps = 4_800
    c.batch_size = 8
    c.block_size = 512
    c.lr = 3e-3  # configs/arithmetic.py's rate at this size
    c.min_lr = 1e-4
    c.warmup_steps = 100
    c.weight_decay = 0.1
    c.log_every = 50
    c.peak_tflops = 1.0  # skip the start-up matmul measurement (MFU is meaningless here)
    c.eval_every = 800
    c.eval_tokens = 16_384
    c.checkpoint_every = 400
    return c
