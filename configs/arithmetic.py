"""Chain-of-thought arithmetic on CPU: a 4-layer, width-128 byte-level GPT on worked solutions.

Prepare the data first (seconds; see docs/arithmetic.md):
    python scripts/make_arithmetic_data.py --out_dir data/arithmetic
    python -m minigpt_jax.train --config configs/arithmetic.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic

block_size matches the data's packing (256 tokens hold about five whole problems), so every training
window starts at a problem, as the evaluator's prompts do.
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    c.model = model_fields("small", vocab_size=257, n_layer=4, n_head=4, n_embd=128, block_size=256)
    c.data_dir = "data/arithmetic"
    c.run_dir = "runs/arithmetic"
    c.total_steps = 600
    c.batch_size = 32
    c.block_size = 256
    c.lr = 3e-3
    c.min_lr = 3e-4
    c.warmup_steps = 20
    c.weight_decay = 0.1
    c.log_every = 10
    c.eval_every = 60
    c.eval_tokens = 32_768
    c.checkpoint_every = 20  # cheap at this size; lets two runs be compared at equal steps
    return c
