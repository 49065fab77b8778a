"""Arithmetic that generalizes (issue 17): one model, all four operations, longer numbers.

    python scripts/make_arithmetic_data.py --preset long --out_dir data/arithmetic_long \
        --train_tokens 60000000 --block_size 512
    python -m minigpt_jax.train --config configs/arithmetic_long.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic_long --sample_sets all

Training draws + and - with up to 10 digits per operand, x up to 5x2, / up to 6/2 (the data's
manifest records the ranges), written in the aligned layout (x one line per product column, the
quotient zero-padded); the test sets are the trained lengths and 2x and 3x the longest.
No token positions (`pos_emb="none"`): what the model knows of place is coupled digit ids (each
token's column), each token's segment within its line, and each digit's index from its number's
left end (docs/arithmetic.md). Training rows' documents see each other, each under its own block
of 64 ids (`digit_pos_doc_block`) from a start in the block's first half, so every id a 30-digit
problem reads is trained and contrasted with ids at every distance. Training windows are 512
tokens, so that a row holds at least two worked 5x2 products (about 4 documents on average); the
model's context, 1024, fits the full worked solution of a 30-digit problem after its prompt.

Budget: about 3 CPU hours on 2 cores (the headline run; not yet measured); see docs/arithmetic.md.
Measured risk (BENCHMARKS.md, session 14): on + and - alone, the small model with these blocks of
64 ids had not finished learning - at the trained lengths after 3,000 steps (blocks of 32 had), and
scored 0-4% on 20-digit sums against 80% with blocks of 32; this run's 12,000 steps of a larger
model are untested. Blocks of 64 over 256 ids (4 blocks) did better at the trained lengths but
also scored 0 at 20 digits (session 15): the block width itself is the cost. From-left ids,
which this config turns on for the benefit of /, made the answer line of + worse on the blocks
of 32 (10-digit sums 0.62 with 0.98 of the steps right; one seed; BENCHMARKS.md).

Each part was measured on one operation family at a time, the 4-layer width-128 model, about an
hour on one core (BENCHMARKS.md): + and - (`configs/arithmetic_long_addsub.py` with these
options), x (`--preset long_mul`) and / (`--preset long_div`). With blocks of 32 (session 16, one
seed each): x trained to 5x2 is 1.00 at its trained lengths and 0.56 / 0.22 at 10x1 / 10x2; / by
one digit 0.88-0.92 at trained lengths, by two digits 0.04 / 0, and 0 at 12 digits.
"""

from minigpt_jax.config import default_config, model_fields
from minigpt_jax.digit_positions import digit_token_ids, newline_token_ids
from minigpt_jax.tokenizer import ByteTokenizer

# Ids of a 30-digit sum reach 32, a 15x2 product's 19, an 18/2 quotient's 20: 8 blocks of 64.
DIGIT_POS_MAX = 512
DOC_BLOCK = 64


def get_config():
    c = default_config()
    c.model = model_fields(
        "small",
        vocab_size=257,
        n_layer=6,
        n_head=8,
        n_embd=256,
        block_size=1024,
        doc_sep_id=256,  # the byte tokenizer's <eot>: evaluation sees one problem at a time
        pos_emb="none",
        digit_pos_max=DIGIT_POS_MAX,
        digit_pos_offset_max=0,  # the document blocks replace one offset per row
        digit_pos_doc_block=DOC_BLOCK,
        digit_pos_doc_start="half",  # starts < 32: ids up to 32 + the trained span are trained
        digit_pos_scheme="coupled",
        digit_pos_from_left=True,
        line_segment_max=32,  # an aligned x line has 23 segments
        digit_ids=digit_token_ids(ByteTokenizer()),
        newline_ids=newline_token_ids(ByteTokenizer()),
    )
    c.data_dir = "data/arithmetic_long"
    c.run_dir = "runs/arithmetic_long"
    c.total_steps = 12_000
    c.batch_size = 8
    c.block_size = 512
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
