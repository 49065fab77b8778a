"""Does byte-level pretraining help a next-character Shakespeare model? Fine-tune vs from scratch.

    python bench/finetune_char.py                       # a few minutes on a 2-core CPU
    python bench/finetune_char.py --out bench/results_finetune.md   # medians of --seeds 0,1,2

1. Shards, made with the data-preparation command's own code (byte tokenizer): Austen + the King
   James Bible for pretraining; Shakespeare for fine-tuning, its first `--val_tokens` held out.
2. Pretrain a byte-level model on Austen + KJV (`--pretrain_steps`).
3. Two runs on Shakespeare with the same model, batch, context and number of steps:
   - fine-tune: configs/finetune_char.py (init_from=checkpoint:<pretrain run>, lower lr);
   - scratch: the same config with init_from=scratch and the from-scratch recipe (the
     pretraining learning rate, 4x the fine-tuning one, as configs/small.py uses).
   Both evaluate on the same held-out Shakespeare windows every `--eval_every` steps.
Prints (and with --out writes) the two curves' end points, the pretrained model's zero-shot
Shakespeare loss, and the command line.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import jax

REPO = Path(__file__).resolve().parents[1]
CLASSICS = REPO.parent / "shared" / "data" / "classics"


def load_config(name: str):
    from minigpt_jax.config import load_config_file

    return load_config_file(REPO / "configs" / f"{name}.py")


def prepare(files: list[Path], out_dir: Path, val_tokens: int) -> Path:
    from minigpt_jax.data_prep import PrepArgs
    from minigpt_jax.data_prep import prepare as prepare_shards

    if not (out_dir / "manifest.json").is_file():
        prepare_shards(PrepArgs(
            data_files=tuple(str(f) for f in files), tokenizer_path="byte", out_dir=str(out_dir),
            val_tokens=val_tokens, num_proc=1, progress=False,
        ))
    return out_dir


def run_config(args, data_dir: Path, run_dir: Path, **overrides):
    c = load_config("finetune_char")
    c.model.n_layer, c.model.n_head, c.model.n_embd = args.n_layer, args.n_head, args.n_embd
    c.model.block_size = c.block_size = args.block_size
    c.data_dir, c.run_dir = str(data_dir), str(run_dir)
    c.batch_size = args.batch_size
    c.eval_every, c.log_every = args.eval_every, args.eval_every
    c.eval_tokens = args.eval_tokens
    c.checkpoint_every = 0  # the end of the run only
    c.peak_tflops = 1.0  # MFU is not what this measures
    for key, value in overrides.items():
        c[key] = value
    return c


def train(cfg) -> list[dict]:
    from minigpt_jax.train import train_and_evaluate

    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    train_and_evaluate(cfg)
    lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "val_loss" in r]


def zero_shot_loss(cfg, init_from: str) -> float:
    """The pretrained model on held-out Shakespeare before any fine-tuning step."""
    from minigpt_jax import input_pipeline, shards
    from minigpt_jax.config import model_config
    from minigpt_jax.init_from import load_init_params
    from minigpt_jax.model import GPT
    from minigpt_jax.train_state import make_eval_step

    model_cfg = model_config(cfg)
    params = load_init_params(init_from, model_cfg)
    eval_step = jax.jit(make_eval_step(GPT(model_cfg)))
    batches = input_pipeline.eval_batches(
        shards.find_shards(cfg.data_dir, "val"), cfg.block_size, cfg.batch_size,
        cfg.eval_tokens, model_cfg.vocab_size,
    )
    sums = [eval_step(params, b) for b in batches]
    return sum(float(m["loss_sum"]) for m in sums) / sum(float(m["tokens"]) for m in sums)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/minigpt_bench_finetune")
    p.add_argument("--pretrain_steps", type=int, default=300)
    p.add_argument("--finetune_steps", type=int, default=150)
    p.add_argument("--n_layer", type=int, default=3)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--pretrain_lr", type=float, default=2e-3)
    p.add_argument("--finetune_lr", type=float, default=None, help="default: the config's")
    p.add_argument("--eval_every", type=int, default=50)
    p.add_argument("--eval_tokens", type=int, default=32_768)
    p.add_argument("--val_tokens", type=int, default=262_144)
    p.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 2],
                   help="comma-separated; one fine-tune and one scratch run per seed")
    p.add_argument("--out", default=None, help="write the results as markdown here")
    args = p.parse_args(argv)
    if not (CLASSICS / "shakespeare.jsonl").is_file():
        print(f"error: {CLASSICS} not found (the shared classics corpus)", file=sys.stderr)
        return 2

    work = Path(args.work_dir)
    t0 = time.perf_counter()
    pre_data = prepare([CLASSICS / "austen.jsonl", CLASSICS / "kjv.jsonl"], work / "austen_kjv",
                       65_536)
    ft_data = prepare([CLASSICS / "shakespeare.jsonl"], work / "shakespeare_char", args.val_tokens)

    pre_cfg = run_config(
        args, pre_data, work / "runs/pretrain", init_from="scratch", lr=args.pretrain_lr,
        min_lr=args.pretrain_lr / 10, warmup_steps=args.pretrain_steps // 10,
        total_steps=args.pretrain_steps, eval_every=args.pretrain_steps, seed=0,
    )
    pre = train(pre_cfg)
    init_from = f"checkpoint:{pre_cfg.run_dir}"

    ft_cfgs, scratch_cfgs, finetune, scratch = [], [], [], []
    for seed in args.seeds:  # seeds move the data order (and the scratch model's init)
        ft_cfg = run_config(args, ft_data, work / f"runs/finetune_s{seed}", init_from=init_from,
                            total_steps=args.finetune_steps, seed=seed)
        if args.finetune_lr:
            ft_cfg.lr, ft_cfg.min_lr = args.finetune_lr, args.finetune_lr / 10
        scratch_cfg = run_config(
            args, ft_data, work / f"runs/scratch_s{seed}", init_from="scratch",
            lr=args.pretrain_lr, min_lr=args.pretrain_lr / 10,
            warmup_steps=args.finetune_steps // 10, total_steps=args.finetune_steps, seed=seed,
        )
        finetune.append(train(ft_cfg))
        scratch.append(train(scratch_cfg))
        ft_cfgs.append(ft_cfg)
        scratch_cfgs.append(scratch_cfg)
    ft_cfg, scratch_cfg = ft_cfgs[0], scratch_cfgs[0]
    zero_shot = zero_shot_loss(ft_cfg, init_from)
    minutes = (time.perf_counter() - t0) / 60

    def median_curve(runs: list[list[dict]]) -> list[tuple[int, float]]:
        steps = [r["step"] for r in runs[0]]
        return [(s, statistics.median(run[i]["val_loss"] for run in runs))
                for i, s in enumerate(steps)]

    ft_curve, scratch_curve = median_curve(finetune), median_curve(scratch)
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python bench/finetune_char.py", *given])
    rows = [f"| {step} | {a:.4f} | {b:.4f} | {a / b:.3f} |"
            for (step, a), (_, b) in zip(ft_curve, scratch_curve, strict=True)]
    per_seed = [f"| {seed} | {f[-1]['val_loss']:.4f} | {sc[-1]['val_loss']:.4f} |"
                for seed, f, sc in zip(args.seeds, finetune, scratch, strict=True)]
    end_ft, end_scratch = ft_curve[-1][1], scratch_curve[-1][1]
    text = "\n".join([
        "## Fine-tuning a byte-level model on Shakespeare (issue 7)",
        "",
        f"Model: {args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, context "
        f"{args.block_size}, byte tokenizer (257 ids); batch {args.batch_size} x "
        f"{args.block_size} tokens. Pretrained {args.pretrain_steps} steps on Austen + KJV "
        f"(lr {pre_cfg.lr:g}; its own val loss {pre[-1]['val_loss']:.4f}). Then "
        f"{args.finetune_steps} steps on Shakespeare, held-out loss on the first "
        f"{args.val_tokens:,} Shakespeare bytes ({args.eval_tokens:,} evaluated), nats/byte, "
        f"median of {len(args.seeds)} seeds:",
        "",
        f"- pretrained model before fine-tuning (zero-shot): **{zero_shot:.4f}**",
        f"- fine-tuned from the checkpoint (configs/finetune_char.py: lr {ft_cfg.lr:g} -> "
        f"{ft_cfg.min_lr:g}, warmup {ft_cfg.warmup_steps}): **{end_ft:.4f}**",
        f"- from scratch, same model and steps (lr {scratch_cfg.lr:g} -> {scratch_cfg.min_lr:g}, "
        f"warmup {scratch_cfg.warmup_steps}): **{end_scratch:.4f}**",
        f"- fine-tuned / scratch end loss: **{end_ft / end_scratch:.3f}**",
        "",
        "| step | fine-tune val loss | scratch val loss | ratio |",
        "| ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "| seed | fine-tune end | scratch end |",
        "| ---: | ---: | ---: |",
        *per_seed,
        "",
        f"Measured on {platform.machine()} CPU ({jax.device_count()} JAX device(s)), "
        f"{minutes:.1f} min in all (wall clock, on a shared machine):",
        "",
        "```",
        command.strip(),
        "```",
        "",
    ])
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
