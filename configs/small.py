"""A CPU config that learns visibly in minutes: a 4-layer byte-level GPT on CPython's documentation.

Prepare the data first (no download, the text ships with Python):
    python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    c.model = model_fields("small", vocab_size=257)  # 4 layers, 4 heads, width 256, context 256
    c.data_dir = "data/pydoc"
    c.run_dir = "runs/small"
    c.total_steps = 500
    c.batch_size = 8
    c.block_size = 256
    c.lr = 2e-3
    c.warmup_steps = 30
    c.log_every = 10
    c.eval_every = 100
    c.eval_tokens = 32_768
    c.checkpoint_every = 100
    return c
