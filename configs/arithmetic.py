"""Chain-of-thought arithmetic on CPU: a 4-layer, width-128 byte-level GPT on worked solutions.

Prepare the data first (seconds; see docs/arithmetic.md):
    python scripts/make_arithmetic_data.py --preset addsubmul --out_dir data/arithmetic
    python -m minigpt_jax.train --config configs/arithmetic.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic

block_size matches the data's packing: problems are packed whole into 256-token chunks, so every
training window starts at a problem; document masking (model.doc_sep_id) makes each one start at
position 0 too. Measured on the 2-core CPU: 14 minutes, 100% on held-out 3-digit + and -.
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    # doc_sep_id = the byte tokenizer's <eot>: each packed problem sees only itself, from
    # position 0, as the evaluator prompts it.
    c.model = model_fields(
        "small", vocab_size=257, n_layer=4, n_head=4, n_embd=128, block_size=256, doc_sep_id=256
    )
    c.data_dir = "data/arithmetic"
    c.run_dir = "runs/arithmetic"
    c.total_steps = 1500
    c.batch_size = 16
    c.block_size = 256
    c.lr = 3e-3
    c.min_lr = 1e-4
    c.warmup_steps = 30
    c.weight_decay = 0.1
    c.log_every = 10
    c.peak_tflops = 1.0  # skip the start-up matmul measurement (MFU is meaningless here)
    c.eval_every = 300
    c.eval_tokens = 16_384
    c.checkpoint_every = 100  # cheap at this size; lets two runs be compared at equal steps
    return c
