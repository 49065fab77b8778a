"""Training throughput and MFU: the trainer users run, its bare step, and nanoGPT in PyTorch.

    python bench/train_step.py --json bench/train_step.json --md bench/train_step.md
    python bench/train_step.py --rows jax_step jax_step/flat_adam --rounds 5   # a lever, A/B
    python bench/train_step.py --rows trainer trainer/hugepages torch_eager torch_eager/hugepages

Every row runs in its own process, one at a time, in rounds whose order alternates (so drifting
load hits every row alike), pinned to the same cores (so XLA and PyTorch get the same thread count)
and fed the same GPT-2-tokenized text:
- trainer: `python -m minigpt_jax.train` with configs/small.py (L4 H4 C256, T256, B8, GPT-2's
  vocabulary padded to 50304, float32) over real shards; tokens/s is what it logs in metrics.jsonl
  (data loading, logging and all), the first record (warm-up) left out;
- jax_step: the same jitted, donated step, batches already on the device;
- torch_eager / torch_compile: nanoGPT's model and step (forward, cross-entropy, backward, clip,
  AdamW), vocabulary 50304; torch.compile's compile time is reported apart.
Rows named `jax_step/<lever>` are the bare step with one change (see LEVERS), for A/B runs; a lever
that only sets the environment (`trainer/hugepages`, `torch_eager/hugepages`) fits any row. Every
row also reports its process CPU seconds per step, which a loaded machine disturbs less than wall
time.

MFU is achieved FLOP/s (nanoGPT's 6N + 12·L·d·T per token, the same for every row) over the one
peak in minigpt_jax/peak.py, which the trainer's logged `mfu` also divides by; `--refresh_peak`
measures it again first (do that on an idle machine). Medians and min–max over the rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from minigpt_jax.host_memory import HUGEPAGES_KEY, HUGEPAGES_TUNABLE

if TYPE_CHECKING:
    from minigpt_jax.model import GPTConfig

ROOT = Path(__file__).resolve().parent.parent
RESULT_TAG = "BENCH_RESULT "
MAIN_ROWS = ("trainer", "jax_step", "torch_eager", "torch_compile")
# Bare-step variants: worker keyword arguments and extra environment.
LEVERS: dict[str, dict[str, Any]] = {
    "full_logits": {"loss_chunks": 0},
    "chunks_4": {"loss_chunks": 4},
    "chunks_16": {"loss_chunks": 16},
    "chunks_32": {"loss_chunks": 32},
    "chunks_64": {"loss_chunks": 64},
    "flat_adam": {"flatten": True},
    "xnnpack": {"env": {"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}},
    "onednn": {"env": {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}},
    "vector_512": {"env": {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=512"}},
    "dot_attention": {"attention": "manual"},
    # glibc's malloc hands large buffers back to the kernel on free and page-faults them in again
    # on the next step (4 KiB at a time); transparent huge pages for its memory cut those faults
    # ~50x. Environment only, so it also applies to `trainer` and the torch rows.
    "hugepages": {"env": {"GLIBC_TUNABLES": HUGEPAGES_TUNABLE}},
}
# configs/small.py on GPT-2 shards; `vocab_size` 50257 pads to nanoGPT's 50304.
CONFIG = {
    "model.vocab_size": 50257,
    "batch_size": 8,
    "block_size": 256,
    "compute_dtype": "float32",
    "warmup_steps": 1,
    "eval_every": 0,
    "eval_tokens": 2048,
    "checkpoint_every": 0,
    "peak_tflops": 0.0,
}
TORCH_VOCAB = 50304


# --- aggregation (pure: tested without running anything) ---------------------------------------


def parse_row(row: str) -> tuple[str, str | None]:
    """`row` or `row/lever`: any main row takes an environment-only lever, only `jax_step` the
    levers that change the step itself."""
    base, slash, lever = row.partition("/")
    if base not in MAIN_ROWS or (slash and lever not in LEVERS):
        levers = "|".join(LEVERS)
        raise ValueError(f"unknown row {row!r}; use {MAIN_ROWS}, each optionally /<{levers}>")
    if lever and base != "jax_step" and set(LEVERS[lever]) != {"env"}:
        raise ValueError(f"{row!r}: {lever!r} changes the step; only jax_step/{lever} takes it")
    return base, lever or None


def parse_result(stdout: str) -> dict[str, Any]:
    """The one result line a worker prints, among whatever else it printed."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if len(lines) != 1:
        raise ValueError(f"expected one {RESULT_TAG.strip()} line, got {len(lines)}:\n{stdout}")
    return json.loads(lines[0][len(RESULT_TAG) :])


def trainer_tokens_per_s(records: list[dict[str, Any]], tokens_per_step: int) -> float:
    """Tokens over seconds of every logged interval but the first (compile and warm-up).

    Each record's interval is its steps since the previous record at its logged tokens/s, so the
    result is total tokens / total seconds, not a mean of rates.
    """
    if len(records) < 2:
        raise ValueError("need at least two metrics records (the first is warm-up)")
    tokens = seconds = 0.0
    for prev, rec in zip(records[:-1], records[1:], strict=True):
        n = (rec["step"] - prev["step"]) * tokens_per_step
        tokens += n
        seconds += n / rec["tokens_per_s"]
    return tokens / seconds


def trainer_cpu_s_per_step(records: list[dict[str, Any]]) -> float:
    """Process CPU seconds (every thread, user and kernel) per step after the first record: under
    load, wall time measures the neighbours too, CPU time mostly the run itself."""
    if len(records) < 2:
        raise ValueError("need at least two metrics records (the first is warm-up)")
    first, last = records[0], records[-1]
    return (last["cpu_minutes"] - first["cpu_minutes"]) * 60 / (last["step"] - first["step"])


def summarize(
    samples: dict[str, list[dict[str, Any]]],
    flops_per_token: float,
    peak_flops: float,
    baseline: str = "torch_eager",
) -> dict[str, dict[str, Any]]:
    """Per row: median and min–max tokens/s over rounds, FLOP/s, MFU, and the ratio to baseline."""
    rows = {}
    for name, runs in samples.items():
        rates = [r["tokens_per_s"] for r in runs]
        median = statistics.median(rates)
        row = {
            "tokens_per_s": median,
            "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates),
            "rounds": len(rates),
            "gflops": median * flops_per_token / 1e9,
            "mfu": median * flops_per_token / peak_flops,
        }
        cpu = [r["cpu_s_per_step"] for r in runs if r.get("cpu_s_per_step") is not None]
        if cpu:
            row["cpu_s_per_step"] = statistics.median(cpu)
        compiles = [r["compile_s"] for r in runs if r.get("compile_s") is not None]
        if compiles:
            row["compile_s"] = compiles
        rows[name] = row
    if baseline in rows:
        for row in rows.values():
            row[f"over_{baseline}"] = row["tokens_per_s"] / rows[baseline]["tokens_per_s"]
    return rows


def markdown_table(rows: dict[str, dict[str, Any]], baseline: str = "torch_eager") -> str:
    head = (
        f"| row | tokens/s median (min–max) | GFLOP/s | MFU | × {baseline} | CPU s/step "
        "| compile s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = r.get(f"over_{baseline}")
        compile_s = r.get("compile_s")
        cpu = r.get("cpu_s_per_step")
        lines.append(
            f"| {name} | {r['tokens_per_s']:,.0f} ({r['tokens_per_s_min']:,.0f}–"
            f"{r['tokens_per_s_max']:,.0f}) | {r['gflops']:.1f} | {r['mfu']:.1%} | "
            + (f"{ratio:.2f}×" if ratio is not None else "–")
            + " | "
            + (f"{cpu:.3f}" if cpu is not None else "–")
            + " | "
            + (", ".join(f"{c:.0f}" for c in compile_s) if compile_s else "–")
            + " |"
        )
    return "\n".join(lines)


# --- workers (each in its own process) -------------------------------------------------------


def _batches(data_dir: Path, batch: int, block: int, count: int):
    """The first `count` batches of windows of the train shard, in order: the same for every row."""
    from minigpt_jax.input_pipeline import WindowSource
    from minigpt_jax.shards import find_shards

    source = WindowSource(find_shards(data_dir, "train"), block)
    out = []
    for i in range(count):
        w = np.stack([source[(i * batch + j) % len(source)] for j in range(batch)])
        out.append({"inputs": w[:, :-1], "targets": w[:, 1:]})
    return out


def _train_config(data_dir: Path, run_dir: Path, total_steps: int, log_every: int):
    from minigpt_jax.config import apply_overrides, load_config_file

    cfg = load_config_file(ROOT / "configs" / "small.py")
    settings = {
        **CONFIG,
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "total_steps": total_steps,
        "log_every": log_every,
    }
    return apply_overrides(cfg, settings)


def _manual_attention(q_BTHK, k_BTHK, v_BTHK, *_args, mask=None, is_causal=False, **_kw):
    """Softmax(QK^T)V written out, with the causal mask added as a constant: an A/B lever."""
    import jax
    import jax.numpy as jnp

    T, K = q_BTHK.shape[1], q_BTHK.shape[-1]
    s_BHTS = jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BTHK) / jnp.sqrt(K).astype(q_BTHK.dtype)
    causal_TS = jnp.tril(jnp.ones((T, T), bool))
    s_BHTS = jnp.where(causal_TS, s_BHTS, jnp.finfo(s_BHTS.dtype).min)
    p_BHTS = jax.nn.softmax(s_BHTS, axis=-1)
    return jnp.einsum("bhts,bshk->bthk", p_BHTS, v_BTHK)


def compiled_step(model_cfg, cfg, loss_chunks: int, flatten: bool = False, devices=None):
    """The trainer's jitted, donated step and a fresh state over one mesh: (state, step, mesh)."""
    import jax
    import optax

    from minigpt_jax import sharding
    from minigpt_jax.model import GPT
    from minigpt_jax.train_state import (
        create_train_state,
        make_lr_schedule,
        make_optimizer,
        make_train_step,
    )

    model = GPT(model_cfg)
    schedule = make_lr_schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.total_steps)
    tx = make_optimizer(schedule, cfg.weight_decay, cfg.grad_clip, cfg.adam_b1, cfg.adam_b2)
    if flatten:
        tx = optax.flatten(tx)
    mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp, devices)
    rng = jax.random.key(cfg.seed)
    _, _, init, step = sharding.jit_sharded(
        lambda r: create_train_state(model, tx, r),
        make_train_step(model, tx, 1, cfg.seed, loss_chunks),
        rng,
        mesh,
    )
    return init(rng), step, mesh


def jax_runner(
    model_cfg: GPTConfig, batch: int, block: int, loss_chunks: int = 0
) -> Callable[[int], float]:
    """`run(n)`: seconds per step over n steps of the trainer's step on random tokens already on
    the first device (bench/gpu_check.py's train_step part, at GPT-2 124M's shape: one device, so
    its MFU divides by one device's peak)."""
    import jax

    from minigpt_jax import sharding

    cfg = _train_config(Path("/tmp/unused"), Path("/tmp/unused"), 1000, 10)
    state, step, mesh = compiled_step(model_cfg, cfg, loss_chunks, devices=jax.devices()[:1])
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, (batch, block + 1))
    data = sharding.global_batch(
        {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)},
        mesh,
    )

    def run(n: int) -> float:
        nonlocal state
        if n < 1:
            raise ValueError(f"run(n) needs n >= 1 steps, got {n}")
        t0 = time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t0) / n

    return run


def worker_jax_step(args) -> dict[str, Any]:
    import jax

    from minigpt_jax import sharding
    from minigpt_jax.config import model_config

    if args.attention == "manual":
        jax.nn.dot_product_attention = _manual_attention  # this process only
    cfg = _train_config(Path(args.data_dir), Path(args.run_dir), 1000, 10)
    loss_chunks = cfg.loss_chunks if args.loss_chunks is None else args.loss_chunks
    state, step, mesh = compiled_step(model_config(cfg), cfg, loss_chunks, args.flatten)
    batches = [
        sharding.global_batch(b, mesh)
        for b in _batches(Path(args.data_dir), cfg.batch_size, cfg.block_size, args.steps + 1)
    ]
    t0 = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for b in batches[1:]:
        state, metrics = step(state, b)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - t0
    tokens = args.steps * cfg.batch_size * cfg.block_size
    return {
        "tokens_per_s": tokens / seconds,
        "cpu_s_per_step": (time.process_time() - cpu0) / args.steps,
        "compile_s": compile_s,
        "loss": float(metrics["loss"]),
    }


def worker_torch(args, compiled: bool) -> dict[str, Any]:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    spec = json.loads(args.spec)  # configs/small.py's values, read by the driver
    L, H, D = spec["n_layer"], spec["n_head"], spec["n_embd"]
    B, T, V = spec["batch_size"], spec["block_size"], TORCH_VOCAB

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(D), tnn.LayerNorm(D)
            self.c_attn, self.attn_proj = tnn.Linear(D, 3 * D), tnn.Linear(D, D)
            self.c_fc, self.mlp_proj = tnn.Linear(D, 4 * D), tnn.Linear(4 * D, D)

        def forward(self, x):
            q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
            q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, D))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class NanoGPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(V, D), tnn.Embedding(T, D)
            self.h = tnn.ModuleList(Block() for _ in range(L))
            self.ln_f = tnn.LayerNorm(D)
            self.lm_head = tnn.Linear(D, V, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as GPT-2

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, V), targets.reshape(-1))

    model = NanoGPT()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec["lr"],
        betas=(spec["adam_b1"], spec["adam_b2"]),
        eps=1e-8,
    )
    forward = torch.compile(model) if compiled else model
    batches = [
        (torch.from_numpy(b["inputs"]).long(), torch.from_numpy(b["targets"]).long())
        for b in _batches(Path(args.data_dir), B, T, args.steps + 1)
    ]

    def step(x, y):
        loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    step(*batches[0])
    compile_s = time.perf_counter() - t0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for x, y in batches[1:]:
        loss = step(x, y)
    seconds = time.perf_counter() - t0
    return {
        "tokens_per_s": args.steps * B * T / seconds,
        "cpu_s_per_step": (time.process_time() - cpu0) / args.steps,
        "compile_s": compile_s if compiled else None,
        "loss": float(loss),
    }


# --- the driver --------------------------------------------------------------------------------


def run_trainer(args, tokens_per_step: int, env: dict[str, str]) -> dict[str, Any]:
    """The user's command on the real shards; tokens/s from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as run_dir:
        log_every = args.steps
        total = log_every * (args.trainer_records + 1)
        cfg_flags = [
            f"--config.{k}={v}"
            for k, v in {
                **CONFIG,
                "data_dir": args.data_dir,
                "run_dir": run_dir,
                "total_steps": total,
                "log_every": log_every,
            }.items()
        ]
        cmd = [sys.executable, "-m", "minigpt_jax.train", "--config", "configs/small.py"]
        proc = subprocess.run(
            cmd + cfg_flags,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=_env(env),
        )
        if proc.returncode:
            raise RuntimeError(f"trainer failed:\n{proc.stderr[-3000:]}")
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
    return {
        "tokens_per_s": trainer_tokens_per_s(records, tokens_per_step),
        "cpu_s_per_step": trainer_cpu_s_per_step(records),
        "logged_mfu": [r["mfu"] for r in records[1:]],
        "compile_s": None,
    }


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # A row without the hugepages lever runs without it, whatever the calling shell exported; a
    # row with it keeps the shell's other tunables, so the two rows differ by the lever alone.
    inherited = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    tunables = [t for t in inherited if not t.startswith(HUGEPAGES_KEY)]
    tunables += [t for t in extra.get("GLIBC_TUNABLES", "").split(":") if t]
    env = {**env, **extra}
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(tunables)
    else:
        env.pop("GLIBC_TUNABLES", None)
    env.setdefault("USE_TORCH", "0")  # `datasets` in the trainer's import chain need not load it
    return env


def run_worker(args, row: str, worker: str, lever_name: str | None, spec: str) -> dict[str, Any]:
    """One bare-step or torch row (`row`, already parsed into `worker` and `lever_name`)."""
    lever = LEVERS[lever_name] if lever_name else {}
    cmd = [sys.executable, __file__, "--worker", worker, "--steps", str(args.steps)]
    cmd += ["--data_dir", args.data_dir, "--spec", spec]
    if "loss_chunks" in lever:
        cmd += ["--loss_chunks", str(lever["loss_chunks"])]
    if lever.get("flatten"):
        cmd += ["--flatten"]
    if "attention" in lever:
        cmd += ["--attention", lever["attention"]]
    env = _env(lever.get("env", {}))
    if worker.startswith("torch"):
        env["USE_TORCH"] = "1"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{row} failed:\n{proc.stderr[-3000:]}")
    return parse_result(proc.stdout)


def ensure_data(data_dir: Path) -> None:
    """GPT-2-tokenized shards of the shared classics (Austen to train, the WEB Bible as val)."""
    if (data_dir / "manifest.json").is_file():
        return
    shared = ROOT.parent / "shared" / "data"
    if not (shared / "gpt2.tiktoken").is_file():
        shared = Path("/work/shared/data")
    cmd = [
        sys.executable,
        "scripts/download_data.py",
        "--data_files",
        str(shared / "classics" / "austen.jsonl"),
        "--val_data_files",
        str(shared / "classics" / "web.jsonl"),
        "--tokenizer_path",
        "gpt2",
        "--out_dir",
        str(data_dir),
        "--num_proc",
        "1",
        "--progress",
        "false",
    ]
    env = _env({"MINIGPT_GPT2_TIKTOKEN": str(shared / "gpt2.tiktoken")})
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(MAIN_ROWS), help="rows, in round order")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per row and round")
    p.add_argument("--trainer_records", type=int, default=2, help="counted metrics records")
    p.add_argument("--data_dir", default="data/bench_gpt2")
    p.add_argument("--cpus", default="", help="cores to pin every row to, e.g. 0,1 (default: all)")
    p.add_argument("--refresh_peak", action="store_true", help="measure the matmul peak again")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--md", help="write the markdown table here")
    # worker mode (internal)
    p.add_argument("--worker", choices=("jax_step", "torch_eager", "torch_compile"))
    p.add_argument("--run_dir", default="/tmp/unused")
    p.add_argument("--spec", default="{}")
    p.add_argument("--loss_chunks", type=int, default=None)
    p.add_argument("--flatten", action="store_true")
    p.add_argument("--attention", default="")
    args = p.parse_args()

    if args.worker:
        if args.worker == "jax_step":
            result = worker_jax_step(args)
        else:
            result = worker_torch(args, compiled=args.worker == "torch_compile")
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    parsed: dict[str, tuple[str, str | None]] = {}
    for row in args.rows:
        try:
            parsed[row] = parse_row(row)
        except ValueError as e:
            p.error(f"--rows: {e}")
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else os.sched_getaffinity(0)
    # Before anything starts a thread: every row inherits these cores, and the peak is measured
    # on them too, so XLA and PyTorch size their thread pools alike.
    os.sched_setaffinity(0, cpus)
    ensure_data(ROOT / args.data_dir)

    from minigpt_jax.config import model_config
    from minigpt_jax.peak import device_peak_flops
    from minigpt_jax.train_state import flops_per_token

    peak = device_peak_flops("float32", refresh=args.refresh_peak)
    cfg = _train_config(ROOT / args.data_dir, Path("/tmp/unused"), 1000, 10)
    model = dataclasses.replace(model_config(cfg), vocab_size=TORCH_VOCAB)  # nanoGPT's count
    fpt = flops_per_token(model, cfg.block_size)
    tokens_per_step = cfg.batch_size * cfg.block_size
    keys = ("batch_size", "block_size", "lr", "adam_b1", "adam_b2", "grad_clip")
    spec = json.dumps(
        {
            **{k: cfg[k] for k in keys},
            **{k: getattr(model, k) for k in ("n_layer", "n_head", "n_embd")},
        }
    )

    samples: dict[str, list[dict[str, Any]]] = {row: [] for row in args.rows}
    started = time.time()
    for r in range(args.rounds):
        order = args.rows if r % 2 == 0 else args.rows[::-1]
        for row in order:
            base, lever = parsed[row]
            if base == "trainer":
                result = run_trainer(args, tokens_per_step, LEVERS[lever]["env"] if lever else {})
            else:
                result = run_worker(args, row, base, lever, spec)
            samples[row].append(result)
            print(f"round {r + 1} {row}: {result['tokens_per_s']:,.0f} tokens/s", flush=True)
    rows = summarize(samples, fpt, peak)
    table = markdown_table(rows)
    print(
        f"\npeak {peak / 1e9:.1f} GFLOP/s (minigpt_jax/peak.py), {fpt / 1e6:.2f} MFLOP/token, "
        f"{len(cpus)} cores, {time.time() - started:.0f} s\n{table}"
    )
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cores": sorted(cpus),
        "peak_gflops": peak / 1e9,
        "flops_per_token": fpt,
        "wall_s": time.time() - started,
        "rows": rows,
        "samples": samples,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(table + "\n")


if __name__ == "__main__":
    main()
