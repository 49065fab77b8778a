"""GPT-2 (124M) on FineWeb-Edu sample-10BT: the build-nanogpt / llm.c reproduction.

19,073 steps of 524,288 (2^19) tokens = 10B tokens, one epoch. Max lr 6e-4 with 715 warmup steps and
cosine decay to 6e-5, AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, bf16 compute. 64 sequences per
micro-batch fit an 80 GB GPU; with fewer devices the step accumulates more micro-batches, with more
it accumulates fewer: the optimizer sees the same batch either way.

    python scripts/download_data.py            # ~10B GPT-2 tokens into data/fineweb-edu
    python -m minigpt_jax.train --config configs/gpt2_124m.py
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    c.model = model_fields("gpt2")  # vocab 50257, padded to 50304 in the embedding
    c.data_dir = "data/fineweb-edu"
    c.run_dir = "runs/gpt2_124m"
    c.total_steps = 19_073
    c.batch_size = 512  # x 1024 tokens = 524,288 tokens per step
    c.micro_batch_size = 64  # per device
    c.block_size = 1024
    c.lr = 6e-4
    c.min_lr = 6e-5
    c.warmup_steps = 715
    c.weight_decay = 0.1
    c.compute_dtype = "bfloat16"
    c.log_every = 10
    c.eval_every = 250
    c.eval_tokens = 10_485_760  # 20 batches of 512 x 1024, as build-nanogpt
    c.checkpoint_every = 1000
    c.data_workers = 4
    return c
