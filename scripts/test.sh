#!/usr/bin/env bash
# Set up a virtual environment with the test extras and run the whole test suite (slow tests too).
# The `bench` extra brings the references the tests compare against (CPU torch, transformers and
# Hugging Face tokenizers); `plot`, `tensorboard` and `wandb` let the plotting and logger tests run. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev,bench,plot,tensorboard,wandb]'
python -m pytest -n 2 --durations=15 "$@"
