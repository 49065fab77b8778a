r"""RL rollouts: one decode pass sized for `max_new_tokens` vs room given as rows need it.

`generate.sample` decodes every row with a cache of prompt + `max_new_tokens` columns and reads all
of it at each token; `generate.sample_growing` (the RL key `rollout_first_tokens`) first gives
every row `--first_tokens` of room, then twice as much to the rows still going. Both sample the
same rows of one RL step (the run's task, `--cells`, `--group_size` samples of each of `--prompts`
problems) at temperature 1, alternating which goes first, in one single-threaded process. Round 0
compiles and is left out; a later round's growing side may still compile a stage's new batch shape
(once per process, as in an RL run), hence medians over `--rounds`. Prints each call's process CPU
seconds, the median per side, the one-pass / growing ratio per round, and the share of samples
solved (the two agree within sampling noise: rows that end in the first stage draw the same tokens
on both sides).

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      python bench/rollout_bench.py --run_dir runs/arithmetic_long_more_shift \
      --cells "div 3/1,div 4/1,div 5/1,div 6/1" --group_size 16 --prompts 8

Needs a trained run (its checkpoint, config.json and data_dir); an RL run's config names its task,
a supervised run's is taken to be arithmetic.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from minigpt_jax import checkpoint
from minigpt_jax.errors import UserError, exit_on_user_error
from minigpt_jax.generate import sample, sample_growing
from minigpt_jax.tasks import load_task, parse_cell_names
from minigpt_jax.tokenizer import load_run_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--cells", required=True, help='comma-separated cell names, "div 4/1,add 20"')
    ap.add_argument("--group_size", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max_new_tokens", type=int, default=352)
    ap.add_argument("--first_tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max_digits", default=None,
                    help="the task's max_digits option ('+:20,-:20,*:10,/:12'), for cells past "
                         "the data's lengths; default: the run's config, if it is an RL run's")
    args = ap.parse_args()
    for flag in ("group_size", "prompts", "max_new_tokens", "first_tokens", "rounds"):
        if getattr(args, flag) < 1:  # first_tokens 0 would time one pass against itself
            ap.error(f"--{flag} {getattr(args, flag)}: must be at least 1")
    names = parse_cell_names(args.cells)
    if not names:
        ap.error(f"--cells {args.cells!r}: names no cell; e.g. 'div 4/1,add 20'")

    config_path = Path(args.run_dir) / "config.json"
    with exit_on_user_error(OSError):
        params, record = checkpoint.load_params(args.run_dir)
        try:
            cfg = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{config_path} is not valid JSON ({e}); restore the run's copy") from e
        if not cfg.get("data_dir"):
            raise UserError(f"{config_path} names no data_dir (the task's files)")
        task_name = cfg.get("task", "arithmetic")  # a supervised run's config names no task
        options = dict(cfg.get("task_options") or {})
        if args.max_digits is not None:
            options["max_digits"] = args.max_digits
        task = load_task(task_name, cfg["data_dir"], options)
        tok = load_run_tokenizer(record["tokenizer"], cfg["data_dir"])
    model_cfg = record["model"]
    if args.max_new_tokens > model_cfg.block_size:
        ap.error(f"--max_new_tokens {args.max_new_tokens}: more than the model's context "
                 f"({model_cfg.block_size})")
    by_name = {task.cell_name(c): c for c in task.cells()}
    if unknown := [n for n in names if n not in by_name]:
        ap.error(f"--cells: {unknown} are not cells of task {task_name!r}")
    G = args.group_size
    seconds: dict[str, list[float]] = {"one pass": [], "growing": []}
    solved: dict[str, list[float]] = {"one pass": [], "growing": []}
    for r in range(args.rounds + 1):
        rng = random.Random(r)
        problems = [task.problem(rng, by_name[names[i % len(names)]]) for i in range(args.prompts)]
        rows = [[tok.eot_id, *tok.encode(task.prompt(p))] for p in problems for _ in range(G)]
        for kind in ("one pass", "growing") if r % 2 else ("growing", "one pass"):
            t0 = time.process_time()
            if kind == "one pass":
                outs = sample(model_cfg, params, rows, args.max_new_tokens, temperature=1.0,
                              seed=r, eot_id=tok.eot_id)
            else:
                outs = sample_growing(model_cfg, params, rows, args.max_new_tokens,
                                      first_tokens=args.first_tokens, eot_id=tok.eot_id,
                                      temperature=1.0, seed=r)
            cpu = time.process_time() - t0
            share = float(np.mean([task.solved(problems[i // G], tok.decode(o))
                                   for i, o in enumerate(outs)]))
            lengths = [len(o) for o in outs]
            print(f"round {r} {kind:8s} cpu {cpu:6.2f} s  mean/max new tokens "
                  f"{np.mean(lengths):.1f}/{max(lengths)}  solved {share:.3f}", flush=True)
            if r:  # round 0 compiles
                seconds[kind].append(cpu)
                solved[kind].append(share)
    for kind in seconds:
        print(f"{kind}: median {np.median(seconds[kind]):.2f} CPU s "
              f"[{min(seconds[kind]):.2f}, {max(seconds[kind]):.2f}], "
              f"solved {np.mean(solved[kind]):.3f}")
    ratios = [a / b for a, b in zip(seconds["one pass"], seconds["growing"], strict=True)]
    print(f"one pass / growing per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {np.median(ratios):.2f}")


if __name__ == "__main__":
    main()
