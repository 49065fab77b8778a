"""bench/gpu_check: the flow runs on a CPU with the GPU-only parts recorded as skipped; the GPU
test compares cuDNN and XLA attention where there is a GPU."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import jax
import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

ON_GPU = jax.default_backend() == "gpu"


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
def test_cudnn_attention_matches_xla_in_bf16():
    result = gpu_check.attention_agreement()
    assert result["status"] == "ok", result


@pytest.mark.skipif(ON_GPU, reason="checks the CPU fallbacks")
def test_each_part_writes_the_json_and_gpu_parts_skip_on_cpu(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["env", "--out", str(out)]) == 0
    for part in ("attention", "train_step", "train50", "memory"):
        assert gpu_check.main([part, "--out", str(out)]) == 0
    gpu_check.main(["record", "pytest_gpu", "timeout", "--detail", "stopped", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["env"]["backend"] == "cpu" and data["env"]["jax"] == jax.__version__
    for part in ("attention", "train_step", "train50", "memory"):
        assert data[part]["status"] == "skipped" and "no CUDA GPU" in data[part]["reason"]
    assert data["pytest_gpu"] == {"status": "timeout", "detail": "stopped"}


def test_train50_command_is_a_valid_run_on_offline_pydoc_shards(tmp_path):
    """The data part makes byte-level pydoc shards offline; the train50 overrides, applied to
    configs/gpt2_124m.py, pass the trainer's own checks against them."""
    data_dir = tmp_path / "pydoc"
    result = gpu_check.make_data(str(data_dir), "byte")
    assert result["status"] == "ok", result["output_tail"]
    overrides = gpu_check.train_overrides(str(tmp_path / "run"), str(data_dir), "byte")
    # parsed as `python -m minigpt_jax.train` parses them, then the trainer's own checks
    proc = subprocess.run(
        [sys.executable, "-c", _PARSE_AND_VALIDATE, "--config", "configs/gpt2_124m.py", *overrides],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [50, "bfloat16", "gpt2", 257, 257]


_PARSE_AND_VALIDATE = """
import json, sys
from minigpt_jax import train
from minigpt_jax.config import validate_config
train.parse_flags(sys.argv)
c = train.CONFIG_FLAG.value
validate_config(c, num_devices=1)
vocab = train.resolve_tokenizer(c)["vocab_size"]
print(json.dumps([c.total_steps, c.compute_dtype, c.model.preset, c.model.vocab_size, vocab]))
"""


def test_train50_result_reads_the_runs_own_metrics(tmp_path):
    records = [
        {"step": 5, "train_loss": 5.6, "tokens_per_s": 0.0, "mfu": 0.0},
        {"step": 10, "train_loss": 4.0, "tokens_per_s": 9e5, "mfu": 0.4},
        {"step": 15, "train_loss": 3.5, "tokens_per_s": 1e6, "mfu": 0.45},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = gpu_check.train50_result(tmp_path, "byte", ["python", "-m", "x"])
    losses = (result["first_train_loss"], result["last_train_loss"])
    assert result["steps"] == 15 and losses == (5.6, 3.5)
    assert result["tokens_per_s_median"] == 1e6 and result["mfu_last"] == 0.45


def test_script_is_shellcheck_clean():
    script = REPO / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert sys.executable  # the script picks .venv/bin/python or $PYTHON, never a bare guess
