"""What `bash scripts/quickstart.sh` trains: configs/small_modern.py (byte-level pydoc, the modern
stack with Muon), under its own run directory so that it never mixes with a `small_modern` run.

    python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc \
        --val_tokens=65536
    python -m minigpt_jax.train --config configs/quickstart.py
"""

from pathlib import Path

from minigpt_jax.config import load_config_file


def get_config():
    c = load_config_file(Path(__file__).with_name("small_modern.py"))
    c.run_dir = "runs/quickstart"
    return c
