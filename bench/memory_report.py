"""Per-device memory of one train step: parameters, optimizer state, gradients and activations.

    python bench/memory_report.py --model gpt2-xl --mesh_fsdp 8 --batch_size 8 --block_size 1024
    python bench/memory_report.py --model gpt2 --meshes 8x1,1x8 --devices 8 --out bench/results.md

Nothing is allocated: the step is lowered and compiled from abstract inputs (ShapeDtypeStructs
carrying their shardings), so gpt2-xl's report runs on a laptop. On a CPU host `--devices N`
simulates N devices (--xla_force_host_platform_device_count); on GPUs the real ones are used.

Three sources, side by side per mesh:
- params / optimizer state / batch per device: each leaf's shard shape under the mesh's shardings
  (exact; cross-checked against the compiled step's argument bytes).
- activations saved for the backward pass, per device: the residuals `jax.vjp` keeps for one
  micro-batch (`saved_residuals`), with and without `model.remat`: the model's own number, whatever
  the backend.
- the compiled step's `memory_analysis()`: arguments, outputs, donated (aliased) bytes and XLA's
  temporary buffers (gradients, gathered FSDP weights, activations, workspace). XLA:CPU drops the
  optimization barriers that keep remat from being CSE'd away, so on CPU its temp does not show
  remat; XLA:GPU keeps them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2", help="GPTConfig preset (gpt2, gpt2-xl, small, ...)")
    p.add_argument("--vocab_size", type=int, default=0, help="0: the preset's (50257 for gpt2*)")
    p.add_argument("--mesh_data", type=int, default=None)
    p.add_argument("--mesh_fsdp", type=int, default=None)
    p.add_argument(
        "--meshes", default="-1x1,1x-1",
        help="comma-separated DATAxFSDP meshes to compare (unless --mesh_data/--mesh_fsdp)",
    )
    p.add_argument("--devices", type=int, default=8, help="simulated devices on a CPU host")
    p.add_argument("--batch_size", type=int, default=8, help="global sequences per optimizer step")
    p.add_argument(
        "--micro_batch_size", type=int, default=0,
        help="sequences per device per micro-batch, as config.micro_batch_size; 0: none",
    )
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true", help="compile the step with per-block remat")
    p.add_argument(
        "--loss_chunks",
        type=int,
        default=0,
        help="0: full logits (the tables in BENCHMARKS.md); 8: the training default, fused",
    )
    p.add_argument("--out", default="", help="also write the markdown table here")
    args = p.parse_args(argv)
    if args.mesh_data is not None or args.mesh_fsdp is not None:
        args.meshes = [(
            -1 if args.mesh_data is None else args.mesh_data,
            1 if args.mesh_fsdp is None else args.mesh_fsdp,
        )]
    else:
        args.meshes = [tuple(int(x) for x in m.split("x")) for m in args.meshes.split(",")]
    return args


def _simulate_devices(n: int) -> None:
    """Must run before JAX starts its CPU backend; a no-op on GPU/TPU hosts (their devices win)."""
    flag = f"--xla_force_host_platform_device_count={n}"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}" if n >= 2**20 else f"{n / 2**20:,.2f}"


def activation_bytes(model_cfg, local_batch: int, block_size: int) -> tuple[int, int]:
    """(all, T x T) bytes of residuals the backward pass keeps for one device's micro-batch.

    Parameters are left out. The second number is the part held in (..., T, T) attention matrices:
    XLA's attention keeps them, cuDNN's flash attention (GPU, bf16) keeps only a (B, H, T) softmax
    statistic instead, so on GPUs the first number minus most of the second is what remains.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    # `saved_residuals` is what jax.ad_checkpoint.print_saved_residuals prints, as data.
    from jax._src.ad_checkpoint import saved_residuals

    from minigpt_jax.loss import summed_cross_entropy
    from minigpt_jax.model import GPT, param_shapes

    model = GPT(model_cfg)
    params = param_shapes(model_cfg)
    tokens = jax.ShapeDtypeStruct((local_batch, block_size), jnp.int32)

    def loss(p, x):
        loss_sum, count = summed_cross_entropy(model.apply({"params": p}, x), x)
        return loss_sum / count

    total = square = 0
    for aval, source in saved_residuals(loss, params, tokens):
        if source.startswith("from the argument"):
            continue
        nbytes = int(np.prod(aval.shape, dtype=np.int64)) * aval.dtype.itemsize
        total += nbytes
        if aval.ndim >= 2 and aval.shape[-2:] == (block_size, block_size):
            square += nbytes
    return total, square


def step_memory(
    model_cfg, mesh, batch_size: int, micro_batch_size: int, block_size: int, loss_chunks: int = 0
) -> dict:
    """Per-device bytes of one jitted, donated train step on `mesh`, from abstract inputs only."""
    import jax
    import jax.numpy as jnp

    from minigpt_jax import sharding
    from minigpt_jax.config import accumulation_steps
    from minigpt_jax.model import GPT
    from minigpt_jax.train_state import (
        create_train_state,
        make_lr_schedule,
        make_optimizer,
        make_train_step,
    )

    model = GPT(model_cfg)
    tx = make_optimizer(make_lr_schedule(6e-4, 6e-5, 10, 100))
    abstract = jax.eval_shape(lambda k: create_train_state(model, tx, k), jax.random.key(0))
    shardings = sharding.tree_shardings(abstract, mesh)
    state_in = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    batch_sh = sharding.batch_sharding(mesh)
    sharding.check_batch_divisible(batch_size, mesh)
    batch_in = {
        k: jax.ShapeDtypeStruct((batch_size, block_size), jnp.int32, sharding=batch_sh)
        for k in ("inputs", "targets")
    }
    num_micro = accumulation_steps(batch_size, micro_batch_size, mesh.size)
    step = jax.jit(
        make_train_step(model, tx, num_micro, loss_chunks=loss_chunks),
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    compiled = step.lower(state_in, batch_in).compile()
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    collectives = {
        op: len(re.findall(rf" {op}(?:-start)?\(", hlo))
        for op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
    }
    # Token ids exchanged: XLA may send ids to a vocab-sharded embedding rather than gather it.
    collectives["int32"] = len(
        re.findall(r"= s32\[[0-9,]+\][^ ]* (?:all-gather|all-to-all|collective-permute)", hlo)
    )
    params = sharding.per_device_bytes(abstract.params, shardings.params)
    return {
        "params": params,
        "opt_state": sharding.per_device_bytes(abstract.opt_state, shardings.opt_state),
        "batch": sharding.per_device_bytes(batch_in, {k: batch_sh for k in batch_in}),
        "grads": params,  # one per parameter, sharded like it (reduce-scattered under FSDP)
        "argument": int(mem.argument_size_in_bytes),
        "output": int(mem.output_size_in_bytes),
        "alias": int(mem.alias_size_in_bytes),
        "temp": int(mem.temp_size_in_bytes),
        "collectives": collectives,
    }


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    _simulate_devices(args.devices)
    import time

    import jax

    from minigpt_jax import sharding
    from minigpt_jax.model import GPTConfig, count_params

    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    model_cfg = GPTConfig.preset(
        args.model, compute_dtype=args.compute_dtype, remat=args.remat, **overrides
    )
    n = jax.device_count()
    from minigpt_jax.config import accumulation_steps

    micro = args.batch_size // accumulation_steps(args.batch_size, args.micro_batch_size, n)
    millions = count_params(model_cfg) / 1e6
    header = (
        f"{args.model} ({millions:,.{0 if millions > 10 else 2}f}M params), {n} x "
        f"{jax.devices()[0].device_kind}, batch {args.batch_size} x {args.block_size} tokens"
        f"{f' in micro-batches of {micro}' if micro < args.batch_size else ''}, "
        f"{args.compute_dtype}{', remat' if args.remat else ''}; MiB per device"
    )
    local = micro // n
    acts = {}
    for remat in (False, True):
        cfg = GPTConfig.preset(
            args.model, compute_dtype=args.compute_dtype, remat=remat, **overrides
        )
        acts[remat] = activation_bytes(cfg, local, args.block_size)
    rows = []
    for mesh_data, mesh_fsdp in args.meshes:
        mesh = sharding.make_mesh(mesh_data, mesh_fsdp)
        t0 = time.perf_counter()
        m = step_memory(
            model_cfg,
            mesh,
            args.batch_size,
            args.micro_batch_size,
            args.block_size,
            args.loss_chunks,
        )
        m["compile_s"] = time.perf_counter() - t0
        m["mesh"] = f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}"
        rows.append(m)
        print(f"compiled {m['mesh']} in {m['compile_s']:.0f} s", file=sys.stderr)

    lines = [
        header,
        "",
        "| mesh | params | optimizer state | params + opt | grads | batch | saved activations: "
        "no remat (of which T x T attention) / remat | compiled: arguments | temp | "
        "output (aliased) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(
            f"| {m['mesh']} | {_mib(m['params'])} | {_mib(m['opt_state'])} | "
            f"{_mib(m['params'] + m['opt_state'])} | {_mib(m['grads'])} | {_mib(m['batch'])} | "
            f"{_mib(acts[False][0])} ({_mib(acts[False][1])}) / {_mib(acts[True][0])} | "
            f"{_mib(m['argument'])} | "
            f"{_mib(m['temp'])} | {_mib(m['output'])} ({_mib(m['alias'])}) |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # a mesh or batch that does not fit the devices: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
