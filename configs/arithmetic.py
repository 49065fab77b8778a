"""Chain-of-thought arithmetic on CPU: a 4-layer, width-128 byte-level GPT on worked solutions.

Prepare the data first (seconds; see docs/arithmetic.md):
    python scripts/make_arithmetic_data.py --out_dir data/arithmetic
    python -m minigpt_jax.train --config configs/arithmetic.py
    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic

block_size matches the data's packing: 256 tokens = four 64-token slots, each problem starting at a
slot boundary (a 2-digit multiplication takes two slots), so every training window starts at a
problem, as the evaluator's prompts do, and every digit sits at a fixed position within its slot.
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    c.model = model_fields("small", vocab_size=257, n_layer=4, n_head=4, n_embd=128, block_size=256)
    c.data_dir = "data/arithmetic"
    c.run_dir = "runs/arithmetic"
    # Measured (bench/results_arithmetic.md): 900 steps, then resumed to 1500 (a warm restart);
    # 3-digit add was 19% greedy at 1500 and still rising.
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
