"""Where the train step's seconds go: the step cut into jitted parts, each timed alone.

    python bench/step_profile.py                    # the benchmark config (configs/small.py)
    python bench/step_profile.py --trace /tmp/trace # also a jax.profiler trace of 3 full steps

Parts (each its own jitted function on the same params and batch, timed in alternating rounds,
best and median of the rounds): the full step; forward + backward (no optimizer); the optimizer
update alone (clip + AdamW over every leaf, and the same through `optax.flatten`); the fused head
+ loss forward + backward alone; the transformer blocks forward + backward with a trivial loss;
and the step's matmuls alone (the same GEMM shapes, forward and backward). Each part's FLOPs are
XLA's own count (`cost_analysis`), so its achieved rate sits beside its time. The difference
between the full step and its parts is what fusion or its absence costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "configs"))


def timed(fn, *args, reps: int) -> list[float]:
    jax.block_until_ready(fn(*args))
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=2, help="timings per part and round")
    p.add_argument("--trace", default="", help="write a jax.profiler trace of 3 steps here")
    p.add_argument("--json")
    args = p.parse_args()

    from small import get_config

    from minigpt_jax.config import model_config
    from minigpt_jax.loss import head_cross_entropy
    from minigpt_jax.model import GPT
    from minigpt_jax.peak import device_peak_flops
    from minigpt_jax.train_state import (
        batch_loss,
        create_train_state,
        make_lr_schedule,
        make_optimizer,
        make_train_step,
    )

    cfg = get_config()
    cfg.model.vocab_size = 50257
    mcfg = model_config(cfg)
    B, T, D, L = cfg.batch_size, cfg.block_size, mcfg.n_embd, mcfg.n_layer
    V = mcfg.padded_vocab_size
    model = GPT(mcfg)
    schedule = make_lr_schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.total_steps)
    tx = make_optimizer(schedule, cfg.weight_decay, cfg.grad_clip, cfg.adam_b1, cfg.adam_b2)
    state = create_train_state(model, tx, jax.random.key(0))
    rng = np.random.default_rng(0)
    w = rng.integers(0, 50257, (B, T + 1)).astype(np.int32)
    batch = {"inputs": jnp.asarray(w[:, :-1]), "targets": jnp.asarray(w[:, 1:])}
    chunks = cfg.loss_chunks

    step = jax.jit(make_train_step(model, tx, loss_chunks=chunks))  # no donation: reused state
    grad = jax.jit(
        jax.grad(lambda prm, b: batch_loss(model, prm, b, chunks)[0])
    )  # forward + backward
    grads = grad(state.params, batch)

    def update(g, opt_state, params, t=tx):
        u, s = t.update(g, opt_state, params)
        return optax.apply_updates(params, u), s

    flat_tx = optax.flatten(tx)
    flat_state = flat_tx.init(state.params)
    opt = jax.jit(update)
    opt_flat = jax.jit(lambda g, s, prm: update(g, s, prm, flat_tx))

    x_BTD = jax.random.normal(jax.random.key(1), (B, T, D))
    wte = state.params["wte"]["embedding"]
    head = jax.jit(
        jax.grad(
            lambda x, e: head_cross_entropy(
                x, e, batch["targets"], vocab_size=mcfg.vocab_size, chunks=chunks
            )[0],
            argnums=(0, 1),
        )
    )

    def blocks_loss(prm, b):
        h = model.apply({"params": prm}, b["inputs"], return_hidden=True)
        return (h * h).mean()

    blocks = jax.jit(jax.grad(blocks_loss))

    # The step's GEMMs alone: per layer qkv, proj, fc, fc-proj; plus the tied head; x3 for backward.
    gemms = [(B * T, D, 3 * D), (B * T, D, D), (B * T, D, 4 * D), (B * T, 4 * D, D)] * L
    gemms += [(B * T, D, V)]
    mats = [(jnp.ones((m, k)), jnp.ones((k, n))) for m, k, n in gemms]

    def all_gemms(ms):
        out = 0.0
        for a, b in ms:
            c = a @ b  # forward
            out += (c @ b.T).sum() + (a.T @ c).sum()  # the two backward GEMMs
        return out

    gemm = jax.jit(all_gemms)

    parts = {
        "full step": (step, (state, batch)),
        "forward+backward": (grad, (state.params, batch)),
        "optimizer (per leaf)": (opt, (grads, state.opt_state, state.params)),
        "optimizer (optax.flatten)": (opt_flat, (grads, flat_state, state.params)),
        "head+loss fwd+bwd": (head, (x_BTD, wte)),
        "blocks fwd+bwd": (blocks, (state.params, batch)),
        "GEMMs alone (fwd+bwd)": (gemm, (mats,)),
    }
    flops = {}
    for name, (fn, a) in parts.items():
        cost = fn.lower(*a).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops[name] = float(cost.get("flops", 0.0)) if cost else 0.0
    times: dict[str, list[float]] = {name: [] for name in parts}
    for r in range(args.rounds):
        order = list(parts) if r % 2 == 0 else list(parts)[::-1]
        for name in order:
            fn, a = parts[name]
            times[name] += timed(fn, *a, reps=args.reps)

    peak = device_peak_flops("float32")
    full = statistics.median(times["full step"])
    print(f"peak {peak / 1e9:.1f} GFLOP/s; B{B} T{T} D{D} L{L} V{V}, loss_chunks {chunks}")
    print(f"{'part':28}{'median ms':>10}{'best ms':>9}{'of step':>8}{'GFLOP':>10}{'GFLOP/s':>9}")
    rows = {}
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        rows[name] = {"median_s": med, "best_s": best, "xla_flops": flops[name]}
        print(
            f"{name:28}{med * 1e3:10.1f}{best * 1e3:9.1f}{med / full:8.0%}"
            f"{flops[name] / 1e9:10.1f}{flops[name] / med / 1e9:9.1f}"
        )

    if args.trace:
        jax.profiler.start_trace(args.trace)
        for _ in range(3):
            out = step(state, batch)
        jax.block_until_ready(out)
        jax.profiler.stop_trace()
        print(f"trace in {args.trace} (open with TensorBoard's profile plugin or Perfetto)")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "parts": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
