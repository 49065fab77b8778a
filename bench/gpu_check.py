"""The Python parts of bench/gpu_check.sh, one subcommand each; every part merges its result into
one JSON file as soon as it ends, so a run stopped at any point keeps what it measured.

    python bench/gpu_check.py env|attention|train_step|memory --out gpu_check.json
    python bench/gpu_check.py tokenizer           # prints gpt2 or byte: what works offline
    python bench/gpu_check.py train50 --run_dir DIR --tokenizer gpt2|byte --out gpu_check.json
    python bench/gpu_check.py record PART STATUS [--detail TEXT] --out gpu_check.json

Parts that need a CUDA GPU record {"status": "skipped", "reason": ...} elsewhere, so the whole
flow runs (and is tested) on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)


def update_json(path: str | Path, part: str, result: dict[str, Any]) -> dict[str, Any]:
    """Merge {part: result} into the JSON at `path` (atomically: a kill leaves the old file)."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[part] = result
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return data


def has_gpu() -> bool:
    import jax

    return jax.default_backend() == "gpu"


def _skipped() -> dict[str, Any]:
    import jax

    return {"status": "skipped", "reason": f"no CUDA GPU (JAX backend: {jax.default_backend()})"}


def env_info() -> dict[str, Any]:
    import jax

    return {
        "status": "ok",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "python": sys.version.split()[0],
    }


def attention_agreement(
    n_layer: int = 2, n_embd: int = 256, n_head: int = 4, seq: int = 512, batch: int = 4
) -> dict[str, Any]:
    """GPT logits with cuDNN flash attention vs XLA attention, same params, bf16 compute.

    Tolerance: bf16 keeps 8 bits of mantissa, so the two kernels' different summation orders
    differ by ~1e-2 relative; a wrong mask or scale differs by O(1).
    """
    if not has_gpu():
        return _skipped()
    import jax
    import numpy as np

    from minigpt_jax.model import GPT, GPTConfig

    def config(impl: str) -> GPTConfig:
        return GPTConfig.preset(
            "small", n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=seq,
            vocab_size=50257, compute_dtype="bfloat16", attention_impl=impl,
        )

    tokens = np.random.default_rng(0).integers(0, 50257, (batch, seq)).astype(np.int32)
    params = GPT(config("xla")).init(jax.random.key(0), tokens[:, :8])["params"]
    out = {}
    for impl in ("xla", "cudnn"):
        logits = jax.jit(lambda p, t, impl=impl: GPT(config(impl)).apply({"params": p}, t))(
            params, tokens
        )
        out[impl] = np.asarray(logits[..., :50257], np.float32)
    diff = np.abs(out["cudnn"] - out["xla"])
    scale = float(np.abs(out["xla"]).max())
    rel = float(diff.max()) / scale
    return {
        "status": "ok" if rel < 2e-2 else "fail",
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "logit_scale": scale,
        "max_rel_diff": rel,
        "tolerance_rel": 2e-2,
        "shape": [batch, seq, n_layer, n_embd, n_head],
    }


def train_step_bench(batch: int = 16, rounds: int = 3, steps: int = 5) -> dict[str, Any]:
    """GPT-2 124M train step in bf16 (bench/train_step.py's runner): tokens/s and MFU against
    the vendor peak (peak.device_peak_flops)."""
    if not has_gpu():
        return _skipped()
    import statistics

    sys.path.insert(0, str(REPO / "bench"))
    from train_step import jax_runner

    from minigpt_jax.model import GPTConfig
    from minigpt_jax.peak import device_peak_flops
    from minigpt_jax.train_state import flops_per_token

    cfg = GPTConfig.preset("gpt2", compute_dtype="bfloat16")
    block = cfg.block_size
    run = jax_runner(cfg, batch, block, loss_chunks=8)
    run(1)  # compile
    times = [run(steps) for _ in range(rounds)]
    step_s = statistics.median(times)
    tokens_per_s = batch * block / step_s
    peak = device_peak_flops("bfloat16")
    return {
        "status": "ok",
        "batch": batch,
        "block": block,
        "step_s_median": step_s,
        "step_s_all": times,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops_per_token(cfg, block) / peak,
        "peak_tflops": peak / 1e12,
        "command": "python bench/gpu_check.py train_step",
    }


def offline_tokenizer() -> str:
    """gpt2 when its ranks load without a download (tiktoken's cache, $MINIGPT_GPT2_TIKTOKEN),
    else byte."""
    probe = "from minigpt_jax.tokenizer import load_tokenizer; load_tokenizer('gpt2')"
    try:  # a subprocess: tiktoken's download attempt may hang offline
        proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return "byte"
    return "gpt2" if proc.returncode == 0 else "byte"


def train_overrides(run_dir: str, data_dir: str, tokenizer: str, steps: int = 50) -> list[str]:
    """configs/gpt2_124m.py for `steps` steps on pydoc shards; byte shards need the vocabulary."""
    flags = {
        "data_dir": data_dir,
        "run_dir": run_dir,
        "total_steps": steps,
        "warmup_steps": 5,
        "log_every": 5,
        "eval_every": 0,
        "eval_tokens": 512 * 1024,
        "checkpoint_every": 0,
        "data_workers": 0,
        "resume": False,
    }
    if tokenizer == "byte":
        flags["model.vocab_size"] = 257
    return [f"--config.{k}={v}" for k, v in flags.items()]


def train50_result(run_dir: str | Path, tokenizer: str, command: list[str]) -> dict[str, Any]:
    """The finished run's last record: loss, tokens/s and MFU as training itself measured them."""
    records = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    timed = [r["tokens_per_s"] for r in records[1:] if r.get("tokens_per_s")]
    return {
        "status": "ok",
        "tokenizer": tokenizer,
        "steps": last["step"],
        "first_train_loss": records[0]["train_loss"],
        "last_train_loss": last["train_loss"],
        "val_loss": last.get("val_loss"),
        "tokens_per_s_median": sorted(timed)[len(timed) // 2] if timed else None,
        "mfu_last": last.get("mfu"),
        "command": " ".join(command),
    }


def train50(run_dir: str, data_dir: str, tokenizer: str, steps: int = 50) -> dict[str, Any]:
    if not has_gpu():
        return _skipped()
    command = [
        sys.executable, "-m", "minigpt_jax.train", "--config", "configs/gpt2_124m.py",
        *train_overrides(run_dir, data_dir, tokenizer, steps),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "fail", "rc": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    return {**train50_result(run_dir, tokenizer, command), "wall_s": time.perf_counter() - t0}


def _command_result(command: list[str], **extra: Any) -> dict[str, Any]:
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    return {
        "status": "ok" if proc.returncode == 0 else "fail",
        "rc": proc.returncode,
        "command": " ".join(command[1:]),
        "output_tail": (proc.stdout + proc.stderr)[-3000:],
        **extra,
    }


def pytest_gpu() -> dict[str, Any]:
    """The tests marked `gpu` (they skip themselves without one; rc 5: none collected)."""
    return _command_result(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    )


def make_data(data_dir: str, tokenizer: str) -> dict[str, Any]:
    """pydoc shards: the text ships inside CPython, so this needs no network."""
    return _command_result(
        [sys.executable, "scripts/download_data.py", "--dataset=pydoc",
         f"--tokenizer_path={tokenizer}", f"--out_dir={data_dir}"],
        tokenizer=tokenizer,
    )


def memory(tokenizer: str) -> dict[str, Any]:
    """bench/memory_report.py for the train50 run's shapes (one device, bf16, fused loss)."""
    if not has_gpu():
        return _skipped()
    command = [
        sys.executable, "bench/memory_report.py", "--model", "gpt2", "--mesh_data", "1",
        "--mesh_fsdp", "1", "--batch_size", "64", "--block_size", "1024",
        "--compute_dtype", "bfloat16", "--loss_chunks", "8",
    ]
    if tokenizer == "byte":
        command += ["--vocab_size", "257"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    status = "ok" if proc.returncode == 0 else "fail"
    return {"status": status, "command": " ".join(command[1:]), "report": proc.stdout[-6000:],
            **({"stderr_tail": proc.stderr[-2000:]} if status == "fail" else {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parts = ("env", "pytest_gpu", "attention", "train_step", "data", "train50", "memory")
    p.add_argument("part", choices=(*parts, "tokenizer", "record"))
    p.add_argument("args", nargs="*", help="record: PART STATUS")
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_JSON", "gpu_check.json"))
    p.add_argument("--run_dir", default="runs/gpu_check")
    p.add_argument("--data_dir", default="data/pydoc_gpu_check")
    p.add_argument("--tokenizer", default="byte", choices=("gpt2", "byte"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--detail", default="")
    a = p.parse_args(argv)
    if a.part == "tokenizer":
        print(offline_tokenizer())
        return 0
    if a.part == "record":
        name, status = a.args
        update_json(a.out, name, {"status": status, **({"detail": a.detail} if a.detail else {})})
        return 0
    run = {
        "env": env_info,
        "pytest_gpu": pytest_gpu,
        "data": lambda: make_data(a.data_dir, a.tokenizer),
        "attention": attention_agreement,
        "train_step": train_step_bench,
        "train50": lambda: train50(a.run_dir, a.data_dir, a.tokenizer, a.steps),
        "memory": lambda: memory(a.tokenizer),
    }[a.part]
    result = run()
    update_json(a.out, a.part, result)
    print(json.dumps({a.part: result}, indent=2)[:4000])
    return 1 if result.get("status") == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
