"""The arithmetic benchmark: worked steps vs answers only at equal training tokens, then evaluation.

    python bench/arithmetic_bench.py --out bench/results_arithmetic.md

Makes both datasets, trains `configs/arithmetic.py` and then `configs/arithmetic_nosteps.py` (same
model, steps, batch and block: equal training tokens), records each run's wall and process CPU
time, runs `minigpt_jax.eval_arithmetic` on both and writes one markdown report. `--skip_train`
re-evaluates existing runs (e.g. runs that trained in the background).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "steps": ("configs/arithmetic.py", "data/arithmetic", "runs/arithmetic"),
    "no steps": (
        "configs/arithmetic_nosteps.py",
        "data/arithmetic_nosteps",
        "runs/arithmetic_nosteps",
    ),
}


def _run(cmd: list[str], log: Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) for one command, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = open(log, "w") if log else None
    try:
        subprocess.run(cmd, cwd=REPO, check=True, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if out:
            out.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - t0, cpu


def _train_sequential(overrides: list[str], log_dir: Path) -> dict[str, dict[str, float]]:
    """One run after the other, each with every core (XLA's default threading): the measured
    wall time is what a user with this machine to themselves would see."""
    timing = {}
    for name, (config, _, _) in RUNS.items():
        cmd = [sys.executable, "-m", "minigpt_jax.train", "--config", config, *overrides]
        wall, cpu = _run(cmd, log_dir / f"train_{name.replace(' ', '_')}.log")
        timing[name] = {"wall_s": wall, "cpu_s": cpu}
    return timing


def _cell(report: dict, set_name: str, key: str) -> dict | None:
    return report["results"].get(set_name, {}).get(key)


def write_report(out: Path, reports: dict[str, dict], timing: dict, commands: list[str]) -> str:
    samples = reports["steps"]["samples"]
    lines = [
        "# Arithmetic: worked steps vs answers only",
        "",
        "Exact match on held-out problems (never in training), greedy and with "
        f"self-consistency (majority of N samples at temperature "
        f"{reports['steps']['temperature']}) and the step verifier.",
        "",
    ]
    keys = list(reports["steps"]["results"]["heldout"]) + [
        f"long:{k}" for k in reports["steps"]["results"].get("long", {})
    ]
    ns = sorted(
        {
            int(n)
            for c in reports["steps"]["results"]["heldout"].values()
            for n in c.get("majority", {})
        }
    )
    head = [
        "problem",
        "n",
        "no steps: greedy",
        "steps: greedy",
        *[f"steps: maj@{n}" for n in ns],
        f"steps: verified@{samples}",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        set_name, cell_key = ("long", key[5:]) if key.startswith("long:") else ("heldout", key)
        s = _cell(reports["steps"], set_name, cell_key)
        ns_cell = _cell(reports["no steps"], set_name, cell_key)
        row = [
            key,
            str(s["n"]),
            f"{ns_cell['greedy']:.3f}" if ns_cell else "-",
            f"{s['greedy']:.3f}",
        ]
        if "majority" in s:
            row += [f"{s['majority'][str(n)]:.3f}" for n in ns]
            row += [f"{s['verified'][str(samples)]:.3f}"]
        else:  # sampled on the held-out set only
            row += ["-"] * (len(ns) + 1)
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "| run | step | training wall s | training CPU s | eval s |",
        "|---|---|---|---|---|",
    ]
    for name, rep in reports.items():
        t = timing.get(name, {})
        lines.append(
            f"| {name} | {rep['step']} | {t.get('wall_s', float('nan')):.0f} | "
            f"{t.get('cpu_s', float('nan')):.0f} | {rep['seconds']:.0f} |"
        )
    lines += ["", "Commands:", "", "```", *commands, "```", ""]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="bench/results_arithmetic.md")
    ap.add_argument("--skip_train", action="store_true", help="evaluate the existing runs")
    ap.add_argument("--timing_json", default=None, help="training times measured elsewhere")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max_per_cell", type=int, default=0)
    ap.add_argument("--step", default=None, help="evaluate this checkpoint step of both runs")
    ap.add_argument("overrides", nargs="*", help="--config.key=value for both training runs")
    args = ap.parse_args()
    log_dir = Path("/tmp") / "arithmetic_bench"
    log_dir.mkdir(exist_ok=True)
    py = sys.executable
    commands = []
    timing = json.loads(Path(args.timing_json).read_text()) if args.timing_json else {}
    if not args.skip_train:
        for name, (_, data_dir, run_dir) in RUNS.items():
            cmd = [py, "scripts/make_arithmetic_data.py", "--preset", "addsubmul",
                   "--out_dir", data_dir]
            cmd += ["--no_steps"] if name == "no steps" else []
            _run(cmd)
            commands.append(" ".join(["python", *cmd[1:]]))
            if (REPO / run_dir).exists():
                raise SystemExit(f"{run_dir} exists; move it away or pass --skip_train")
        timing = _train_sequential(args.overrides, log_dir)
        commands += [
            f"python -m minigpt_jax.train --config {c} {' '.join(args.overrides)}".strip()
            for c, _, _ in RUNS.values()
        ]
    reports = {}
    for name, (_, _, run_dir) in RUNS.items():
        out = log_dir / f"eval_{name.replace(' ', '_')}.json"
        cmd = [
            py,
            "-m",
            "minigpt_jax.eval_arithmetic",
            "--run_dir",
            run_dir,
            "--samples",
            str(args.samples if name == "steps" else 0),
            "--max_per_cell",
            str(args.max_per_cell),
            "--out",
            str(out),
        ]
        cmd += ["--step", args.step] if args.step else []
        _run(cmd, log_dir / f"eval_{name.replace(' ', '_')}.log")
        commands.append(" ".join(["python", *cmd[1:]]))
        reports[name] = json.loads(out.read_text())
    print(write_report(REPO / args.out, reports, timing, commands))


if __name__ == "__main__":
    main()
