"""Download (or read locally), tokenize and shard text for training: see docs/data.md.

    python scripts/download_data.py                      # FineWeb-Edu sample-10BT, GPT-2 tokens
    python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc
    python scripts/download_data.py --data_files=a.jsonl,b.jsonl --val_data_files=c.jsonl
"""

import os
import sys

if __name__ == "__main__":  # worker processes are spawned: they must not rerun the command
    # `datasets` imports PyTorch when it is installed (~1.5 CPU-s, ~200 MB) though it is never used
    # here; its own switch turns that off for this process only.
    os.environ.setdefault("USE_TORCH", "0")
    from minigpt_jax.data_prep import main

    sys.exit(main())
