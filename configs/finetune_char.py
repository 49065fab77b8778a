"""Fine-tune a byte-level GPT into a next-character model of Shakespeare: nanoGPT's
shakespeare_char, but starting from a pretrained byte-level model instead of from nothing.

The starting point is any byte-level run with the same model shape, e.g. configs/small.py (on
Python's docs). Fine-tuning keeps its shape, lowers the learning rate, warms up briefly, and trains
every weight (`--config.freeze=embeddings` holds the byte embeddings fixed):

    python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc
    python -m minigpt_jax.train --config configs/small.py              # the pretrained model
    python scripts/download_data.py --data_files ../shared/data/classics/shakespeare.jsonl \
        --tokenizer_path=byte --val_tokens=262144 --out_dir=data/shakespeare_char
    python -m minigpt_jax.train --config configs/finetune_char.py
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    c.model = model_fields("small", vocab_size=257)  # must match the pretrained run's shape
    c.init_from = "checkpoint:runs/small"  # or checkpoint:<run_dir>@best / @<step>, hf:<dir>
    c.freeze = "none"
    c.data_dir = "data/shakespeare_char"
    c.run_dir = "runs/finetune_char"
    c.total_steps = 300
    c.batch_size = 16
    c.block_size = 256
    c.lr = 5e-4  # a quarter of small.py's: move the pretrained weights, do not scramble them
    c.min_lr = 5e-5
    c.warmup_steps = 10
    c.weight_decay = 0.1
    c.log_every = 10
    c.eval_every = 50
    c.eval_tokens = 65_536
    c.checkpoint_every = 100
    return c
