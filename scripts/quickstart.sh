#!/usr/bin/env bash
# Quick start, end to end with no download: set up, tokenize the documentation that ships inside
# CPython (byte-level), train configs/quickstart.py for a few minutes on the CPU, evaluate next to
# what gzip and xz achieve on the same held-out bytes, and sample (the real-word rate first, the
# sample last). Extra arguments go to the trainer, e.g. `bash scripts/quickstart.sh
# --config.total_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .

# glibc 2.35+: back malloc with huge pages, a tenth to a fifth less CPU per step (docs/training.md);
# older glibc ignores the unknown tunable.
case "${GLIBC_TUNABLES:-}" in
  *glibc.malloc.hugetlb*) ;;  # the caller's choice stands
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
python scripts/download_data.py --dataset=pydoc --tokenizer_path=byte --out_dir=data/pydoc \
  --val_tokens=65536
python -m minigpt_jax.train --config configs/quickstart.py "$@"
python -m minigpt_jax.evaluate --run_dir runs/quickstart --baselines
python -m minigpt_jax.generate --run_dir runs/quickstart --prompt "The with statement" \
  --max_new_tokens 200 --temperature 0.8 --top_k 40 --word_rate
