"""What `bash scripts/quickstart.sh` trains: configs/small_modern.py (byte-level pydoc, the modern
stack with Muon) for 350 steps instead of 500, under its own run directory.

Why 350: a small_modern step costs ~1.4x a small.py step on the CPU (BENCHMARKS.md, quick start),
so 350 steps take about the time small.py's 500 did, and still beat gzip on the val bytes (from
about step 115) with ~90% real words in the sample.

    python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc \
        --val_tokens=65536
    python -m minigpt_jax.train --config configs/quickstart.py
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("small_modern.py"))
    c.run_dir = "runs/quickstart"
    c.total_steps = 350
    return c
