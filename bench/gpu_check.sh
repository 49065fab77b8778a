#!/usr/bin/env bash
# One check for the day a CUDA machine is at hand: offline, nothing but this checkout.
#
#   bash bench/gpu_check.sh [OUT.json]        # or GPU_CHECK_JSON=OUT.json; default gpu_check.json
#
# Parts, each under its own `timeout`, the whole within 8 minutes; the JSON is rewritten after every
# part (a part that times out is recorded as such):
#   env         JAX version, backend, devices (first installs the `cuda` extra, jax[cuda12] at the
#               installed JAX version, only if nvidia-smi sees a GPU that JAX does not and a
#               package registry answers within 10 s)
#   pytest_gpu  tests marked `gpu`
#   attention   cuDNN flash attention vs XLA attention, bf16, within tolerance
#   train_step  GPT-2 124M train step, bf16: tokens/s and MFU against the vendor peak
#   data        pydoc shards (GPT-2 BPE if its ranks load offline, else bytes: the JSON says which)
#   train50     50 steps of configs/gpt2_124m.py on them
#   memory      bench/memory_report.py for that step
set -u
cd "$(dirname "$0")/.." || exit 2

OUT="${1:-${GPU_CHECK_JSON:-gpu_check.json}}"
export GPU_CHECK_JSON="$OUT"
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="${GPU_CHECK_WORK:-$(mktemp -d)}"
BUDGET_S=430  # 8 minutes less margins: the tokenizer probe (30 s) and kill grace (5 s) run outside parts
START=$SECONDS
rm -f "$OUT"

# Run part NAME with at most LIMIT seconds (less when the overall budget has less left).
part() {
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 10 ]; then
    "$PY" bench/gpu_check.py record "$name" skipped --detail "8-minute budget spent" --out "$OUT"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit}s)"
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    "$PY" bench/gpu_check.py record "$name" timeout --detail "stopped after ${limit}s" --out "$OUT"
  fi
  return 0
}

# The cuda extra, only on a machine with an NVIDIA GPU whose JAX does not see it, and only when a
# registry answers quickly (GPU_CHECK_NO_INSTALL=1: never install).
backend="$(timeout 60 "$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)"
if [ "$backend" != "gpu" ] && [ -z "${GPU_CHECK_NO_INSTALL:-}" ] \
  && timeout 20 nvidia-smi -L >/dev/null 2>&1; then
  if timeout 10 "$PY" -m pip download --no-deps --quiet -d "$WORK/probe" six >/dev/null 2>&1; then
    jax_version="$("$PY" -c 'import jax; print(jax.__version__)')"
    echo "== installing jax[cuda12]==$jax_version (the cuda extra)"
    timeout 120 "$PY" -m pip install --quiet "jax[cuda12]==$jax_version" || true
  else
    echo "== no GPU backend and no registry: using the installed JAX as it is"
  fi
fi

part env 60 "$PY" bench/gpu_check.py env --out "$OUT"

part pytest_gpu 90 "$PY" bench/gpu_check.py pytest_gpu --out "$OUT"
part attention 60 "$PY" bench/gpu_check.py attention --out "$OUT"
part train_step 100 "$PY" bench/gpu_check.py train_step --out "$OUT"

TOKENIZER="$("$PY" bench/gpu_check.py tokenizer)"
DATA="$WORK/pydoc_$TOKENIZER"
part data 45 "$PY" bench/gpu_check.py data --data_dir "$DATA" --tokenizer "$TOKENIZER" --out "$OUT"
part train50 120 "$PY" bench/gpu_check.py train50 --run_dir "$WORK/run" --data_dir "$DATA" \
  --tokenizer "$TOKENIZER" --out "$OUT"
part memory 45 "$PY" bench/gpu_check.py memory --tokenizer "$TOKENIZER" --out "$OUT"

echo "== done in $((SECONDS - START))s: $OUT (scratch files in $WORK)"
