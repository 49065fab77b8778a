"""Attention vs gated DeltaNet vs a hybrid: decoding cost, training cost vs length, recall (MQAR).

    python bench/mixer_bench.py decode [--contexts 256,1024,4096,16384] [--batch 1]
    python bench/mixer_bench.py scaling [--lengths 256,512,1024,2048,4096]
    python bench/mixer_bench.py mqar [--widths 64,128,256] [--seq_len 256 --pairs 32 --steps 2000]
        [--pos_emb rope] [--plot mqar.png]
    python bench/mixer_bench.py table --rows lr1.jsonl,lr2.jsonl [--plot mqar.png]   # merge lr runs
    python bench/mixer_bench.py all --quick        # CI-sized rows of each (tiny, seconds)

- decode: a prompt of each context length is prefilled in chunks (`generate.prefill`), then
  `--new_tokens` greedy tokens are decoded in one compiled loop; reports decode tokens/s and the
  decoding memory per sequence (KV cache, or the fixed-size recurrent state). The attention model
  must read its whole cache every token, the mixer only its state: the crossover is where the
  mixer's flat per-token cost wins.
- scaling: one training step (forward, backward, AdamW) of one sequence per length, same width;
  the exponent is the least-squares slope of log step time vs log length (1 = linear, 2 =
  quadratic). Short lengths are dominated by the length-free parameter work, so the slope
  understates attention's asymptotic 2: compare the two kinds' exponents, not one to 2.
- mqar: multi-query associative recall as in Zoology (Arora et al. 2023): `pairs` key-value pairs,
  then every key queried once at random later positions; the loss and accuracy are on the queried
  values only. Accuracy vs width for attention, the mixer and the hybrid (attention every 2nd
  layer).

Every model is the repository's `GPT` through its own train step (`make_train_step`); the three
kinds differ only in `mixer` / `attention_every`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax import generate
from minigpt_jax.model import GPT, POS_EMBS, GPTConfig, KVCache, count_params
from minigpt_jax.train_state import (
    create_train_state,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)

KINDS = {
    "attention": dict(mixer="attention"),
    "gated_deltanet": dict(mixer="gated_deltanet"),
    "hybrid": dict(mixer="gated_deltanet", attention_every=2),
}


# --quick: tiny sizes, a smoke run of every row (flags given on the command line still win).
QUICK = dict(
    n_layer=2, n_embd=64, n_head=2, repeats=1, contexts="64,256", new_tokens=8, lengths="64,128",
    widths="32", seq_len=64, pairs=8, steps=30, mqar_vocab=64, lrs="3e-3",
)


def model_config(
    kind: str, n_layer: int, n_embd: int, n_head: int, vocab: int, block: int,
    pos_emb: str = "learned",
) -> GPTConfig:
    return GPTConfig(
        vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        pos_emb=pos_emb, **KINDS[kind],
    )


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_row(kind: str, context: int, args) -> dict:
    cfg = model_config(
        kind, args.n_layer, args.n_embd, args.n_head, 257, context + args.new_tokens, args.pos_emb
    )
    model = GPT(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    B = args.batch
    prompt = jax.random.randint(jax.random.key(1), (B, context), 0, 256)
    length = context + args.new_tokens
    start = jnp.zeros((B,), jnp.int32)

    @jax.jit
    def prefill(params, prompt):
        cache = KVCache.zeros(cfg, B, length, start)
        return generate.prefill(model, params, prompt, cache)

    @jax.jit
    def decode(params, last_BV, cache):
        def step(_, carry):
            last_B, cache = carry
            logits, cache = model.apply({"params": params}, last_B[:, None], cache=cache)
            return jnp.argmax(logits[:, 0], -1).astype(jnp.int32), cache

        first = jnp.argmax(last_BV, -1).astype(jnp.int32)
        return jax.lax.fori_loop(0, args.new_tokens, step, (first, cache))[0]

    last_BV, cache = prefill(params, prompt)
    prefill_s = _median_time(lambda: prefill(params, prompt), args.repeats)
    decode_s = _median_time(lambda: decode(params, last_BV, cache), args.repeats)
    cache_bytes = sum(x.nbytes for x in jax.tree.leaves(cache) if x.ndim > 1)
    return {
        "bench": "decode", "kind": kind, "context": context, "batch": B,
        "decode_tok_s": round(B * args.new_tokens / decode_s, 1),
        "ms_per_token": round(1e3 * decode_s / args.new_tokens, 3),
        "prefill_s": round(prefill_s, 3),
        "state_mib_per_seq": round(cache_bytes / B / 2**20, 3),
    }


def scaling_rows(kind: str, args) -> list[dict]:
    rows = []
    for T in args.lengths:
        cfg = model_config(kind, args.n_layer, args.n_embd, args.n_head, 257, T, args.pos_emb)
        model = GPT(cfg)
        tx = make_optimizer(make_lr_schedule(1e-3, 1e-4, 10, 1000))
        state = create_train_state(model, tx, jax.random.key(0))
        step = jax.jit(make_train_step(model, tx))
        tokens = np.random.default_rng(0).integers(0, 257, (1, T + 1)).astype(np.int32)
        batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
        s = _median_time(lambda st=state, f=step, b=batch: f(st, b), args.repeats)
        rows.append({"bench": "scaling", "kind": kind, "seq_len": T, "step_s": round(s, 4)})
    logs = np.log([[r["seq_len"], r["step_s"]] for r in rows])
    exponent = float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0])
    for r in rows:
        r["fitted_exponent"] = round(exponent, 2)
    return rows


def mqar_batch(rng: np.random.Generator, batch: int, seq_len: int, pairs: int, n_keys: int):
    """Zoology's MQAR: `k1 v1 ... kP vP`, then the P keys again in random order at random later
    positions (gaps are token 0); the target after each queried key is its value."""
    if 4 * pairs > seq_len:
        raise ValueError(f"seq_len={seq_len} is too short for {pairs} pairs (needs 4 x pairs)")
    keys = np.stack([rng.choice(n_keys, pairs, replace=False) for _ in range(batch)]) + 1
    values = rng.integers(0, n_keys, (batch, pairs)) + 1 + n_keys
    seq = np.zeros((batch, seq_len + 1), np.int32)
    seq[:, 0 : 2 * pairs : 2], seq[:, 1 : 2 * pairs : 2] = keys, values
    weights = np.zeros((batch, seq_len), np.float32)
    for b in range(batch):
        # Query slots at even offsets after the context, so a query's value slot is free.
        slots = 2 * pairs + 2 * rng.choice((seq_len - 2 * pairs) // 2, pairs, replace=False)
        order = rng.permutation(pairs)
        seq[b, slots], seq[b, slots + 1] = keys[b, order], values[b, order]
        weights[b, slots] = 1.0
    return {"inputs": seq[:, :-1], "targets": seq[:, 1:], "weights": weights}


def mqar_row(kind: str, width: int, args) -> dict:
    n_keys = args.mqar_vocab // 2
    cfg = model_config(
        kind, 2, width, max(width // 64, 1), 2 * n_keys + 1, args.seq_len, args.pos_emb
    )
    model = GPT(cfg)
    apply = jax.jit(model.apply)
    results = {}
    for lr in args.lrs:  # Zoology sweeps the learning rate per model; report the best
        tx = make_optimizer(make_lr_schedule(lr, lr / 10, args.steps // 10, args.steps), 0.1)
        state = create_train_state(model, tx, jax.random.key(args.seed))
        step = jax.jit(make_train_step(model, tx), donate_argnums=0)
        rng = np.random.default_rng(args.seed)
        for _ in range(args.steps):
            pairs = int(rng.choice(args.train_pairs))
            batch = mqar_batch(rng, args.batch, args.seq_len, pairs, n_keys)
            state, metrics = step(state, jax.tree.map(jnp.asarray, batch))
        # Every pair count trained on, not only the judged one: at a budget too small for
        # `pairs`, the easier counts still show which model has begun to recall.
        by_pairs = {
            n: _mqar_accuracy(apply, state.params, args, n, n_keys)
            for n in sorted({*args.train_pairs, args.pairs})
        }
        results[lr] = (by_pairs[args.pairs], float(metrics["loss"]), by_pairs)
    best = max(results, key=lambda lr: results[lr][0])
    return {
        "bench": "mqar", "kind": kind, "width": width, "seq_len": args.seq_len,
        "pairs": args.pairs, "train_pairs": args.train_pairs, "steps": args.steps,
        "batch": args.batch, "vocab": args.mqar_vocab, "pos_emb": cfg.pos_emb,
        "params": count_params(cfg), "best_lr": best,
        "accuracy": round(results[best][0], 4), "final_train_loss": round(results[best][1], 4),
        "by_lr": {str(lr): round(a, 4) for lr, (a, *_) in results.items()},
        "accuracy_by_pairs": {str(n): round(a, 4) for n, a in results[best][2].items()},
    }


def _mqar_accuracy(apply, params, args, pairs: int, n_keys: int) -> float:
    """Greedy accuracy on the queried values of 256 held-out sequences (one fixed test set);
    `apply` is the model's jitted apply, shared by every pair count (same shapes, one compile)."""
    test = mqar_batch(np.random.default_rng(10_000 + args.seed), 256, args.seq_len, pairs, n_keys)
    logits = apply({"params": params}, jnp.asarray(test["inputs"]))
    hit = np.asarray(jnp.argmax(logits, -1)) == test["targets"]
    return float((hit * test["weights"]).sum() / test["weights"].sum())


def merge_lr_rows(rows: list[dict]) -> list[dict]:
    """One row per (kind, width, problem, budget) from rows that swept the lr in separate processes
    (one process per core): the best lr's row, with every lr's accuracy in `by_lr`."""
    merged: dict[tuple, dict] = {}
    for r in rows:
        if r.get("bench") != "mqar":
            continue
        key = tuple(str(r.get(k)) for k in (
            "kind", "width", "seq_len", "pairs", "train_pairs", "steps", "batch", "vocab", "pos_emb"
        ))
        have = merged.get(key)
        if have is None or r["accuracy"] > have["accuracy"]:
            merged[key] = {**r, "by_lr": {**(have or {}).get("by_lr", {}), **r["by_lr"]}}
        else:
            have["by_lr"] = {**have["by_lr"], **r["by_lr"]}
    return list(merged.values())


def mqar_table(rows: list[dict]) -> str:
    """Accuracy on the queried values: one row per width, one column per kind (best lr)."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    acc = {(r["width"], r["kind"]): r for r in rows}
    lines = ["| width | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for width in sorted({r["width"] for r in rows}):
        cells = []
        for kind in kinds:
            r = acc.get((width, kind))
            cells.append("–" if r is None else f"{r['accuracy']:.3f} (lr {r['best_lr']:g})")
        lines.append(f"| {width} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mqar_plot(rows: list[dict], path: str) -> None:
    from minigpt_jax.plot import Panel, Series, plot_curves

    series = []
    for i, kind in enumerate(dict.fromkeys(r["kind"] for r in rows)):
        mine = sorted((r["width"], r["accuracy"]) for r in rows if r["kind"] == kind)
        series.append(Series(kind, [w for w, _ in mine], [a for _, a in mine], f"C{i}", "-", "o"))
    r = rows[0]
    title = f"MQAR: {r['pairs']} pairs, length {r['seq_len']}, {r['steps']} steps"
    plot_curves([Panel(title, "model width", "accuracy", series, xlog=True)], path)


def mqar_table_from_files(p: argparse.ArgumentParser, files: str | None, plot: str | None):
    if not files:
        p.error("table needs --rows FILE[,FILE...]: the --out files of mqar runs")
    rows = []
    for path in files.split(","):
        try:
            with open(path) as f:
                lines = [(i, json.loads(line)) for i, line in enumerate(f, 1) if line.strip()]
        except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
            p.error(f"--rows {path}: {e}; pass the JSON-lines --out file of an mqar run")
        for i, r in lines:
            if not isinstance(r, dict) or r.get("bench") != "mqar":
                continue
            if not (isinstance(r.get("accuracy"), (int, float)) and isinstance(r.get("by_lr"), dict)
                    and "kind" in r and "width" in r):
                p.error(f"--rows {path}, line {i}: an mqar row without kind/width/accuracy/by_lr; "
                        "pass the --out file of an mqar run")
            rows.append(r)
    rows = merge_lr_rows(rows)
    if not rows:
        p.error(f"--rows {files}: no mqar rows in them")
    print(mqar_table(rows))
    if plot:
        mqar_plot(rows, plot)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["decode", "scaling", "mqar", "all", "table"],
                   help="table: the MQAR table (and --plot) from --rows files of earlier runs")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: a smoke run of every row (size flags given still win)")
    p.add_argument("--kinds", default="attention,gated_deltanet,hybrid")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--pos_emb", default="learned", choices=POS_EMBS,
                   help="token positions: 'learned' adds GPT-2's table to every model, the pure "
                        "mixer's too; 'rope' rotates attention's q/k only (BENCHMARKS.md, MQAR)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contexts", default="256,1024,4096,16384")
    p.add_argument("--batch", type=int, default=1, help="decode batch")
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--lengths", default="256,512,1024,2048,4096")
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--mqar_vocab", type=int, default=512, help="keys + values")
    p.add_argument("--train_pairs", default=None,
                   help="mqar: pair counts drawn per training batch, e.g. 4,8,16,32 (Zoology's "
                        "mixture of easier problems); default: --pairs only. Tested at --pairs.")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--mqar_batch", type=int, default=32, dest="batch_mqar")
    p.add_argument("--lrs", default="1e-3,3e-3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also append the rows to this JSON-lines file")
    p.add_argument("--plot", default=None, help="mqar: write accuracy vs width to this PNG")
    p.add_argument("--rows", default=None,
                   help="table: comma-separated --out files of mqar runs (e.g. one per lr)")
    if p.parse_args(argv).quick:  # its sizes replace the defaults; flags given still win
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    if args.what == "table":
        return mqar_table_from_files(p, args.rows, args.plot)
    kinds = args.kinds.split(",")
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.lrs = [float(x) for x in args.lrs.split(",")]
    try:
        args.train_pairs = [int(x) for x in (args.train_pairs or str(args.pairs)).split(",")]
    except ValueError:
        p.error(f"--train_pairs {args.train_pairs!r}: comma-separated integers, e.g. 4,8,16,32")
    if any(n < 1 or 4 * n > args.seq_len for n in [*args.train_pairs, args.pairs]):
        p.error(f"--pairs/--train_pairs must be between 1 and seq_len / 4 = {args.seq_len // 4}")
    if unknown := sorted(set(kinds) - set(KINDS)):
        p.error(f"--kinds: unknown {', '.join(unknown)}; use some of {', '.join(KINDS)}")
    try:  # every model the run will build, before any of them trains
        widths = [int(w) for w in args.widths.split(",")]
        for kind in kinds:
            model_config(kind, args.n_layer, args.n_embd, args.n_head, 257, 64, args.pos_emb)
            for w in widths:
                model_config(kind, 2, w, max(w // 64, 1), args.mqar_vocab + 1, 64, args.pos_emb)
    except ValueError as e:
        p.error(f"--widths/--n_embd/--n_head/--pos_emb: {e}")
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    if args.what in ("decode", "all"):
        for context in (int(c) for c in args.contexts.split(",")):
            for kind in kinds:
                emit(decode_row(kind, context, args))
    if args.what in ("scaling", "all"):
        for kind in kinds:
            for row in scaling_rows(kind, args):
                emit(row)
    if args.what in ("mqar", "all"):
        mqar_args = argparse.Namespace(**{**vars(args), "batch": args.batch_mqar})
        mqar_rows = []
        for width in widths:
            for kind in kinds:
                mqar_rows.append(mqar_row(kind, width, mqar_args))
                emit(mqar_rows[-1])
        print(mqar_table(mqar_rows))
        if args.plot:
            mqar_plot(mqar_rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
