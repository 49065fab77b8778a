"""Fine-tune OpenAI's GPT-2 (124M) on Shakespeare: nanoGPT's finetune_shakespeare.py in JAX.

The weights come from the Hugging Face format (`hf:gpt2` downloads them where the network allows;
`hf:<dir>` reads a local directory with config.json + model.safetensors). A small constant learning
rate for a few steps is all it takes; the 1024-token context of GPT-2 is kept.

    python scripts/download_data.py --data_files ../shared/data/classics/shakespeare.jsonl \
        --tokenizer_path=gpt2 --val_tokens=131072 --out_dir=data/shakespeare
    python -m minigpt_jax.train --config configs/finetune_gpt2.py
    # gpt2-medium/-large/-xl: --config.model.preset=gpt2-xl --config.init_from=hf:gpt2-xl
"""

from minigpt_jax.config import default_config, model_fields


def get_config():
    c = default_config()
    c.model = model_fields("gpt2")  # vocab 50257: the same shapes as the checkpoint
    c.init_from = "hf:gpt2"
    c.freeze = "none"
    c.data_dir = "data/shakespeare"
    c.run_dir = "runs/finetune_gpt2"
    c.total_steps = 20
    c.batch_size = 32  # x 1024 tokens per step, 4 sequences per device per micro-batch
    c.micro_batch_size = 4
    c.block_size = 1024
    c.lr = 3e-5  # constant, as nanoGPT: min_lr = lr
    c.min_lr = 3e-5
    c.warmup_steps = 0
    c.weight_decay = 0.0
    c.compute_dtype = "bfloat16"  # --config.compute_dtype=float32 on CPU
    c.log_every = 1
    c.eval_every = 5
    c.eval_tokens = 131_072
    c.checkpoint_every = 0
    return c
