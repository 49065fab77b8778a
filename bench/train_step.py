"""Train-step throughput and MFU, against the machine's measured matmul peak and a PyTorch baseline.

    python bench/train_step.py                       # the issue's CPU config, float32
    python bench/train_step.py --n_layer 12 --n_embd 768 --n_head 12 --block 1024 --batch 16 \
        --dtype bfloat16 --no-torch                  # GPT-2 124M on a GPU

The PyTorch side is nanoGPT's model and step (eager: forward, cross-entropy, backward, clip, AdamW)
written out here so that it needs nothing but `torch` (the optional `bench` extra). Both frameworks
are timed in alternating rounds in one process, so machine noise hits both alike; medians reported.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.train_state import (
    create_train_state,
    flops_per_token,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
    measure_matmul_peak,
)


def jax_runner(cfg: GPTConfig, batch: int, block: int, loss_chunks: int = 0):
    model = GPT(cfg)
    tx = make_optimizer(make_lr_schedule(6e-4, 6e-5, 10, 1000))
    state = create_train_state(model, tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, loss_chunks=loss_chunks), donate_argnums=0)
    rng = np.random.default_rng(0)
    windows = rng.integers(0, cfg.vocab_size, (batch, block + 1)).astype(np.int32)
    data = {"inputs": jnp.asarray(windows[:, :-1]), "targets": jnp.asarray(windows[:, 1:])}
    holder = {"state": state}

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            holder["state"], metrics = step(holder["state"], data)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - t0) / n

    return run


def torch_runner(cfg: GPTConfig, batch: int, block: int, threads: int):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    D, H = cfg.n_embd, cfg.n_head

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(D), tnn.LayerNorm(D)
            self.c_attn, self.attn_proj = tnn.Linear(D, 3 * D), tnn.Linear(D, D)
            self.c_fc, self.mlp_proj = tnn.Linear(D, 4 * D), tnn.Linear(4 * D, D)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
            q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, D))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class NanoGPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(cfg.vocab_size, D), tnn.Embedding(block, D)
            self.h = tnn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = tnn.LayerNorm(D)
            self.lm_head = tnn.Linear(D, cfg.vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight  # tied, as GPT-2

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block_ in self.h:
                x = block_(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    model = NanoGPT()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, cfg.vocab_size, (batch, block + 1), generator=g)
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / n

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument(
        "--loss_chunks",
        type=int,
        nargs="+",
        default=[0, 8],
        help="JAX variants to time: 0 = full logits, n = fused head + loss in n time slices",
    )
    p.add_argument("--no-torch", dest="torch", action="store_false")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    cfg = GPTConfig(
        vocab_size=args.vocab,
        block_size=args.block,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        compute_dtype=args.dtype,
    )
    tokens = args.batch * args.block
    flops = flops_per_token(cfg, args.block) * tokens
    runners = {
        ("jax" if n == 0 else f"jax/{n}"): jax_runner(cfg, args.batch, args.block, n)
        for n in args.loss_chunks
    }
    if args.torch:
        import os

        runners["torch"] = torch_runner(cfg, args.batch, args.block, args.threads or os.cpu_count())
    for run in runners.values():
        run(2)  # compile / warm up
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks = []
    for _ in range(args.rounds):  # alternate, so that noise hits every side alike
        peaks.append(measure_matmul_peak(args.dtype, repeats=3))
        for name, run in runners.items():
            times[name].append(run(args.steps))
    peak = statistics.median(peaks)

    results = {
        "device": jax.devices()[0].device_kind,
        "config": vars(args),
        "matmul_peak_gflops": peak / 1e9,
        "flops_per_step": flops,
    }
    print(f"device {results['device']}  measured {args.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'':10}{'s/step':>10}{'tokens/s':>12}{'GFLOP/s':>10}{'MFU':>8}")
    for name, ts in times.items():
        t = statistics.median(ts)
        results[name] = {"s_per_step": t, "tokens_per_s": tokens / t, "mfu": flops / t / peak}
        print(f"{name:10}{t:10.4f}{tokens / t:12.0f}{flops / t / 1e9:10.1f}{flops / t / peak:8.1%}")
    if "torch" in times:
        for name in times:
            if name != "torch":
                ratio = statistics.median(times["torch"]) / statistics.median(times[name])
                results[f"{name}_over_torch"] = ratio
                print(f"{name} / torch tokens/s: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    assert math.isfinite(peak)


if __name__ == "__main__":
    main()
