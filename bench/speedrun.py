"""Architecture speedrun: GPT-2 against each modern change and the best stack, at equal budgets.

    python bench/speedrun.py [--out_dir runs/speedrun] [--tokens 1048576]   # full (~6 CPU hours)
    python bench/speedrun.py --quick --out_dir /tmp/speedrun_quick          # a few minutes
    # on two cores, two processes sharing one out_dir, then the analysis:
    python bench/speedrun.py --only gpt2,best-stack --train_only &
    python bench/speedrun.py --only best-stack+muon --train_only; wait
    python bench/speedrun.py --only best-stack,best-stack+muon

The task is fixed so that numbers from different days compare: the `small` model (4 layers, width
256, context 256) on bytes of three public-domain classics from ../shared/data/classics (Austen,
Shakespeare, the King James Bible). Bytes, because they need no tokenizer training, cannot leak
the validation text into a vocabulary, and make val loss read directly as bits per byte (/ ln 2).
Train and val are split by document: every tenth document of each book is held out, so val is
the same kind of English as train but never trained on (web.jsonl, the World English Bible, is a
paraphrase of the KJV: too close to train to be held out, too far from Austen to be the same
task).

Every run is a real `train_and_evaluate` (in this process, one after another) logging its val
curve to metrics.jsonl; `bench/speedrun_recipe.py` names the variants and their lr sweeps. Each
variant's lr sweep runs on its first seed; its other seeds run at the sweep's best lr. Per
variant, at that lr (mean over seeds): final val loss at equal tokens with the seed spread;
tokens, FLOPs and training seconds (wall clock, so give every process the same cores) to reach the
baseline's final val loss (interpolated on the val curve; the baseline itself takes its whole run,
whatever its seeds' spread), and the val loss at the baseline's training seconds; parameters;
tokens/s. Outputs in --out_dir: results.json, results.md and curves.png (val loss against tokens and
against seconds, all variants on one axes each).
A finished run (its metrics reach the last step) is not run again: an interrupted bench resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINIGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
CLASSICS = SHARED_DATA / "classics"
BOOKS = ("austen", "shakespeare", "kjv")
VAL_EVERY = 10  # every tenth document of each book is validation


def _recipe():
    """bench/speedrun_recipe.py, loaded by path (bench/ is not a package), once per process."""
    if "speedrun_recipe" not in sys.modules:
        path = Path(__file__).with_name("speedrun_recipe.py")
        spec = importlib.util.spec_from_file_location("speedrun_recipe", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["speedrun_recipe"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["speedrun_recipe"]


@dataclasses.dataclass(frozen=True)
class Task:
    tokens: int  # training tokens per run
    batch_size: int = 8
    block_size: int = 256
    eval_points: int = 16  # val evaluations per run (the curve the crossings are read from)
    eval_tokens: int = 32_768
    max_train_bytes: int | None = None  # --quick trains on a slice of the corpus

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.block_size))


FULL = Task(tokens=1_048_576)
QUICK = Task(tokens=8 * 256 * 24, eval_points=4, eval_tokens=8_192, max_train_bytes=1_000_000)


# --- data ----------------------------------------------------------------------------------------


def prepare_data(out_dir: Path, classics: Path, max_train_bytes: int | None) -> Path:
    """Byte shards of the three books, split by document; made once per --out_dir."""
    from minigpt_jax.data_prep import PrepArgs, prepare

    data_dir = out_dir / "data"
    if (data_dir / "manifest.json").is_file():
        return data_dir
    train, val = [], []
    for book in BOOKS:
        path = classics / f"{book}.jsonl"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found; the bench reads ../shared/data/classics")
        docs = [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
        for i, text in enumerate(docs):
            (val if i % VAL_EVERY == VAL_EVERY - 1 else train).append(text)
    if max_train_bytes is not None:  # a slice of every book, not the first book alone
        train = train[::max(1, sum(map(len, train)) // max_train_bytes)]
        val = val[::max(1, 10 * sum(map(len, val)) // max_train_bytes)]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, docs in (("train", train), ("val", val)):
        files[split] = out_dir / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    prepare(PrepArgs(
        data_files=(str(files["train"]),), val_data_files=(str(files["val"]),),
        tokenizer_path="byte", out_dir=str(data_dir), progress=False,
    ))
    return data_dir


# --- runs ----------------------------------------------------------------------------------------


def run_config(variant, lr: float, seed: int, task: Task, data_dir: Path, run_dir: Path):
    from minigpt_jax.config import default_config, model_fields

    c = default_config()
    c.model = model_fields("small", vocab_size=257, **variant.model)
    c.data_dir, c.run_dir, c.seed = str(data_dir), str(run_dir), seed
    c.total_steps, c.batch_size, c.block_size = task.steps, task.batch_size, task.block_size
    c.warmup_steps = max(1, task.steps // 20)
    c.eval_every = max(1, task.steps // task.eval_points)
    c.log_every = c.eval_every
    c.eval_tokens = task.eval_tokens
    c.checkpoint_every, c.keep_checkpoints, c.keep_best = 0, 1, False
    c.optimizer = variant.optimizer
    if variant.optimizer == "muon":
        c.lr, c.muon_lr = variant.adamw_lr, lr
    else:
        c.lr = lr
    c.min_lr = c.lr * 0.1
    return c


def _finished(run_dir: Path, steps: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    lines = path.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("step") == steps


def _train(v, lr: float, seed: int, task: Task, data_dir: Path, out_dir: Path) -> dict:
    """One (variant, lr, seed) run, trained unless it finished earlier; returns its record."""
    from minigpt_jax.train import train_and_evaluate

    name = f"{v.name}/lr{lr:g}/seed{seed}"
    run_dir = out_dir / "runs" / v.name / f"lr{lr:g}_seed{seed}"
    if _finished(run_dir, task.steps):
        print(f"[speedrun] {name}: done earlier", flush=True)
    else:
        if run_dir.exists():  # an interrupted run: start it over, not resume its lr
            import shutil

            shutil.rmtree(run_dir)
        print(f"[speedrun] {name}: {task.steps} steps", flush=True)
        train_and_evaluate(run_config(v, lr, seed, task, data_dir, run_dir))
    return dict(name=name, variant=v.name, lr=lr, seed=seed, run_dir=run_dir)


def _final_val_loss(run_dir: Path) -> float:
    from minigpt_jax.plot import run_curves

    return run_curves(run_dir, run_dir.name).val_loss[-1]


def run_all(variants, task: Task, data_dir: Path, out_dir: Path) -> dict[str, dict]:
    """Per variant: the lr sweep on its first seed, then its other seeds at the best lr of the
    sweep (seed noise is measured where it matters, at a third of the cost of sweeping every
    seed). Returns {run name: record}."""
    runs = {}
    for v in variants:
        sweep = [_train(v, lr, v.seeds[0], task, data_dir, out_dir) for lr in v.lrs]
        best = min(sweep, key=lambda r: _final_val_loss(r["run_dir"]))
        extra = [_train(v, best["lr"], seed, task, data_dir, out_dir) for seed in v.seeds[1:]]
        runs.update({r["name"]: r for r in sweep + extra})
    return runs


# --- analysis ------------------------------------------------------------------------------------


def crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x where the curve reaches `target`, linear between logged points; None if never.
    A curve already below target at its first point crosses there (no extrapolation back)."""
    for i, y in enumerate(ys):
        if y <= target:
            if i == 0:
                return xs[0]
            x0, y0, x1 = xs[i - 1], ys[i - 1], xs[i]
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y)
    return None


def value_at(xs: list[float], ys: list[float], x: float) -> float | None:
    """The curve's value at x (linear between points); None beyond its last point."""
    if not xs or x > xs[-1]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


def _mean(values: list[float | None]) -> float | None:
    """The mean where every seed reached the value; None if any did not."""
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def _spread(values: list[float | None]) -> list[float] | None:
    return None if not values or any(v is None for v in values) else [min(values), max(values)]


def analyse(variants, runs: dict[str, dict], task: Task) -> dict[str, Any]:
    from minigpt_jax.config import model_config
    from minigpt_jax.model import count_params
    from minigpt_jax.plot import read_metrics, run_curves
    from minigpt_jax.train_state import flops_per_token

    curves = {name: run_curves(r["run_dir"], name) for name, r in runs.items()}
    tokens_per_s = {}
    for name, r in runs.items():
        records = read_metrics(r["run_dir"] / "metrics.jsonl")
        rates = [x["tokens_per_s"] for x in records if x.get("tokens_per_s")]
        tokens_per_s[name] = statistics.median(rates) if rates else None

    by_variant: dict[str, dict[str, Any]] = {}
    for v in variants:
        mine = {n: r for n, r in runs.items() if r["variant"] == v.name}
        finals = {r["lr"]: curves[n].val_loss[-1] for n, r in mine.items()
                  if r["seed"] == v.seeds[0]}  # the sweep
        best_lr = min(v.lrs, key=finals.__getitem__)
        best = [n for n, r in mine.items() if r["lr"] == best_lr]
        cfg = run_config(v, best_lr, 0, task, Path("."), Path("."))
        model_cfg = model_config(cfg)
        by_variant[v.name] = dict(
            changes=v.model, optimizer=v.optimizer, lr_swept=list(v.lrs),
            lr_final_val_loss={f"{lr:g}": finals[lr] for lr in v.lrs}, best_lr=best_lr,
            seeds=list(v.seeds), runs=best, params=count_params(model_cfg),
            flops_per_token=flops_per_token(model_cfg, task.block_size),
            final_val_loss=statistics.fmean(curves[n].val_loss[-1] for n in best),
            final_val_loss_spread=_spread([curves[n].val_loss[-1] for n in best]),
            tokens_per_s=_mean([tokens_per_s[n] for n in best]),
        )

    recipe = _recipe()
    base = by_variant[recipe.BASELINE]
    target = base["final_val_loss"]
    base_seconds = _mean([curves[n].val_seconds[-1] for n in base["runs"]])
    for row in by_variant.values():
        mine = [curves[n] for n in row["runs"]]
        if row is base:  # the target is its mean final loss: the baseline's whole run reaches it
            tok = [c.val_tokens[-1] for c in mine]
            sec = [c.val_seconds[-1] for c in mine]
        else:
            tok = [crossing(c.val_tokens, c.val_loss, target) for c in mine]
            sec = [crossing(c.val_seconds, c.val_loss, target) for c in mine]
        # A run that finished sooner than the baseline is read at its end (it would only improve).
        at_base_s = [value_at(c.val_seconds, c.val_loss, min(base_seconds, c.val_seconds[-1]))
                     for c in mine]
        row.update(
            tokens_to_baseline=_mean(tok), tokens_to_baseline_spread=_spread(tok),
            flops_to_baseline=None if _mean(tok) is None else _mean(tok) * row["flops_per_token"],
            seconds_to_baseline=_mean(sec), seconds_to_baseline_spread=_spread(sec),
            val_loss_at_baseline_seconds=_mean(at_base_s),
            train_seconds=_mean([curves[n].val_seconds[-1] for n in row["runs"]]),
        )
    for row in by_variant.values():
        for key in ("tokens", "flops", "seconds"):
            mine, theirs = row[f"{key}_to_baseline"], base[f"{key}_to_baseline"]
            row[f"{key}_ratio"] = None if mine is None or not theirs else mine / theirs
    return dict(
        task=dataclasses.asdict(task) | {"steps": task.steps, "books": list(BOOKS),
                                         "val": f"every {VAL_EVERY}th document of each book",
                                         "tokenizer": "byte"},
        baseline=recipe.BASELINE, target_val_loss=target, variants=by_variant,
        curves={n: dict(tokens=c.val_tokens, seconds=c.val_seconds, val_loss=c.val_loss)
                for n, c in curves.items()},
    )


# --- outputs -------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "not reached" if x is None else format(x, spec)


def markdown_table(results: dict[str, Any]) -> str:
    lines = [
        f"Target: the baseline's final val loss {results['target_val_loss']:.4f} "
        f"({results['task']['steps']} steps, {results['task']['tokens']:,} tokens a run). "
        "Ratios < 1 beat the baseline; spreads are [min, max] over seeds at the best lr.",
        "",
        "| variant | opt | best lr | params | final val loss | tokens to target (ratio) "
        "| FLOPs ratio | seconds ratio | val loss at baseline's seconds (or its end) | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["variants"].items():
        spread = r["final_val_loss_spread"]
        loss = f"{r['final_val_loss']:.4f}"
        if spread and len(r["runs"]) > 1:
            loss += f" [{spread[0]:.4f}, {spread[1]:.4f}]"
        tok = r["tokens_to_baseline"]
        tok_s = "not reached" if tok is None else f"{tok:,.0f} ({_fmt(r['tokens_ratio'])})"
        lines.append(
            f"| {name} | {r['optimizer']} | {r['best_lr']:g} | {r['params']:,} | {loss} | {tok_s} "
            f"| {_fmt(r['flops_ratio'])} | {_fmt(r['seconds_ratio'])} "
            f"| {_fmt(r['val_loss_at_baseline_seconds'], '.4f')} "
            f"| {_fmt(r['tokens_per_s'], ',.0f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Val loss against tokens and against seconds: each variant's best-lr, first-seed run."""
    from minigpt_jax.plot import Panel, Series, plot_curves

    by_tokens, by_seconds = [], []
    for i, (name, r) in enumerate(results["variants"].items()):
        c = results["curves"][r["runs"][0]]
        style = "-" if name == results["baseline"] else "--"
        by_tokens.append(Series(name, c["tokens"], c["val_loss"], f"C{i % 10}", style, "o"))
        by_seconds.append(Series(name, c["seconds"], c["val_loss"], f"C{i % 10}", style, "o"))
    target = results["target_val_loss"]
    panels = [Panel(f"val loss vs tokens (target {target:.3f})", "training tokens", "val loss",
                    by_tokens),
              Panel("val loss vs training seconds", "training seconds (wall)", "val loss",
                    by_seconds)]
    plot_curves(panels, path, title="speedrun: best lr per variant")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default=str(REPO / "runs" / "speedrun"))
    p.add_argument("--quick", action="store_true", help="two variants, tiny budget (CI)")
    p.add_argument("--tokens", type=int, default=None, help="training tokens per run")
    p.add_argument("--classics", default=str(CLASSICS), help="the directory of the book .jsonl")
    p.add_argument("--only", default=None, help="comma-separated variant names (plus baseline)")
    p.add_argument("--train_only", action="store_true",
                   help="train the --only variants (the baseline not added) and stop, so that "
                        "several processes share one --out_dir; analyse afterwards with --only")
    args = p.parse_args(argv)

    recipe = _recipe()
    task = QUICK if args.quick else FULL
    if args.tokens:
        task = dataclasses.replace(task, tokens=args.tokens)
    variants = recipe.QUICK_VARIANTS if args.quick else recipe.VARIANTS
    if args.only:
        keep = set(args.only.split(",")) | (set() if args.train_only else {recipe.BASELINE})
        unknown = keep - {v.name for v in variants}
        if unknown:
            p.error(f"--only: unknown variants {sorted(unknown)}")
        variants = tuple(v for v in variants if v.name in keep)
    out_dir = Path(args.out_dir)
    data_dir = prepare_data(out_dir, Path(args.classics), task.max_train_bytes)
    runs = run_all(variants, task, data_dir, out_dir)
    if args.train_only:
        return {}
    results = analyse(variants, runs, task)
    results["command"] = "python bench/speedrun.py " + " ".join(argv or sys.argv[1:])
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown_table(results)
    (out_dir / "results.md").write_text(table)
    plot(results, out_dir / "curves.png")
    print(table)
    print(f"wrote {out_dir}/results.json, results.md, curves.png")
    return results


if __name__ == "__main__":
    main()
