"""configs/small.py with the modern stack and Muon: same data, tokenizer, steps, batch and context,
so the two configs compare directly (`small` stays the GPT-2 + AdamW baseline).

The stack (preset `small-modern`: RoPE, RMSNorm, no biases, QK-norm, ReLU^2, zero-initialised
output projections, untied head, logit soft-cap 15) is provisional until bench/speedrun.py's full
run picks the best one; the learning rates come from a short CPU sanity check, not a sweep.

    python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc
    python -m minigpt_jax.train --config=configs/small_modern.py
"""

from pathlib import Path

from minigpt_jax.config import load_config_file, model_fields


def get_config():
    c = load_config_file(Path(__file__).with_name("small.py"))
    c.model = model_fields("small-modern", vocab_size=257)
    c.run_dir = "runs/small_modern"
    c.optimizer = "muon"
    c.muon_lr = 0.02  # hidden matrices (Muon)
    c.lr = 2e-3  # embeddings, head, gains (AdamW), as small.py
    return c
