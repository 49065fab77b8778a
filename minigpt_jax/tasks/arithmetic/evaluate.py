"""The arithmetic task's evaluator: exact-match accuracy on held-out problems, greedy and with
inference-time compute.

    python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic [--samples 8 --temperature 0.7]

For every test problem (the data dir's `test.jsonl` and longer-numbers `test_long.jsonl`, written by
scripts/make_arithmetic_data.py) the model gets `<eot>` + the problem line and writes until `<eot>`;
the last `A:` line is its answer. Reported per set, operation and digit count:

- greedy: one temperature-0 solution;
- majority@N: N sampled solutions, the most common answer (self-consistency), for N = 1, 2, 4, ...;
- verified@N: the majority among the sampled solutions whose every written step checks out with
  exact arithmetic (`checker.verify_solution`); plain majority when none does.
- where each greedy solution the checker rejects first goes wrong (`first_wrong_lines`), since
  past the trained lengths which line breaks says more than the score.

`--fresh N` adds a set "fresh": N new problems in each of those cells, none that the data dir's
training or validation shards or test files hold, for a tighter estimate than a test file's
100-300 problems per cell.

Markdown tables go to stdout and then everything to `<run_dir>/eval_arithmetic.json` (an
unwritable `--out` loses only that file, never the printed results).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from minigpt_jax.errors import DataError, UserError, exit_on_user_error
from minigpt_jax.files import read_jsonl
from minigpt_jax.generate import sample_in_batches
from minigpt_jax.shards import find_shards
from minigpt_jax.tasks import parse_cell_names
from minigpt_jax.tasks.arithmetic import checker
from minigpt_jax.tasks.arithmetic import problems as arithmetic
from minigpt_jax.tasks.arithmetic.data import TEST_FILES, problems_in_shards

SampleFn = Callable[[list[list[int]], int, float, int], list[list[int]]]


def load_test_set(data_dir: str | Path, name: str) -> list[arithmetic.Problem]:
    path = Path(data_dir) / TEST_FILES[name]
    if not path.is_file():
        raise DataError(
            f"{path}: no test problems; write them with "
            f"`python scripts/make_arithmetic_data.py --out_dir {data_dir}`"
        )
    problems = []
    for where, record in read_jsonl(path, DataError):
        try:
            problems.append(arithmetic.Problem.from_json(record))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{where}: not a test problem ({e}); regenerate the file") from e
    if not problems:
        raise DataError(
            f"{path}: holds no problems; regenerate it with "
            f"`python scripts/make_arithmetic_data.py --out_dir {data_dir}`"
        )
    return problems


def cell_name(problem: arithmetic.Problem) -> str:
    """The cell a problem is reported under: `add 20`, `mul 10x1`, `div 4/1`."""
    return f"{arithmetic.OP_NAMES[problem.op]} {problem.level}"


FRESH_SET = "fresh"  # --fresh's set: drawn at evaluation time, not read from the data dir


def fresh_problems(
    data_dirs: Sequence[str | Path], cells: Sequence[str], per_cell: int, seed: int
) -> list[arithmetic.Problem]:
    """`per_cell` new problems in each cell, none that the data dirs' shards or test files hold:
    a second held-out sample, as large as wanted, where a test file's 100 problems per cell cannot
    tell two models apart (a standard error of 3 points at 90%). Each cell is drawn from its own
    seed, so `--cells` picks the same problems of a cell whatever else it names."""
    used: set[arithmetic.Problem] = set()
    for data_dir in data_dirs:
        if not find_shards(data_dir, "train"):
            raise DataError(
                f"--fresh: {data_dir} holds no training shards, so the problems trained on cannot "
                f"be avoided; pass the run's own data dir (--data_dir)"
            )
        used |= problems_in_shards(data_dir)
        for name, file in TEST_FILES.items():
            if (Path(data_dir) / file).is_file():
                used.update(load_test_set(data_dir, name))
    used_by_cell: dict[str, list[arithmetic.Problem]] = defaultdict(list)
    for p in used:  # once, so that each cell's draw copies and counts only its own
        used_by_cell[cell_name(p)].append(p)
    out: list[arithmetic.Problem] = []
    for cell in cells:
        try:
            out += arithmetic.heldout_problems(
                f"{seed}:{cell}", [(*arithmetic.cell_digits(cell), per_cell)],
                exclude=used_by_cell[cell],
            )
        except ValueError as e:  # a small cell that training nearly covers
            raise UserError(f"--fresh {per_cell}: {e} outside the data; ask for fewer, or leave "
                            f"the cell out with --cells") from e
    return out


def _trained_on(data_dir: str | Path, record: dict[str, Any]) -> list[str | Path]:
    """The data dir evaluated, and the run's own if --data_dir points elsewhere: --fresh avoids
    both. Problems drawn live (RL's rollouts) are in no shard: after RL, "fresh" is only fresh
    to the supervised data."""
    trained = record["config"].get("data_dir")
    if not trained or Path(trained).resolve() == Path(data_dir).resolve():
        return [data_dir]
    if Path(trained).is_dir():
        return [data_dir, trained]
    print(f"note: --fresh avoids only {data_dir}'s problems: the run's data dir {trained} is not "
          f"here", file=sys.stderr)
    return [data_dir]


def select_cells(
    sets: dict[str, list[arithmetic.Problem]], names: Sequence[str]
) -> dict[str, list[arithmetic.Problem]]:
    """Only the problems of the named cells, in every set that has them (sets left empty are
    dropped): inference-time compute on the hardest cells without paying for the easy ones."""
    wanted = set(names)
    have = {cell_name(p) for problems in sets.values() for p in problems}
    if not wanted:
        raise UserError(f"--cells: no cell named; cells: {sorted(have)}")
    unknown = sorted(wanted - have)
    if unknown:
        raise UserError(f"--cells: no cell {unknown} in {sorted(sets)}; cells: {sorted(have)}")
    kept = {name: [p for p in ps if cell_name(p) in wanted] for name, ps in sets.items()}
    return {name: ps for name, ps in kept.items() if ps}


def budget_tokens(
    problems: Sequence[arithmetic.Problem], prompt_tokens: int, block_size: int,
    layouts: Sequence[str] = arithmetic.LAYOUTS,
) -> int:
    """New tokens to allow: the longest worked solution plus slack, rounded up so that cells share a
    compiled decode loop; never more than the context leaves after the prompt.

    `layouts`: the ones the model may write (the data's, `layouts_of`); the longest counts."""
    longest = max(
        len(arithmetic.solution(p, layout=layout).encode())
        for p in problems
        for layout in layouts
    )
    wanted = 32 * math.ceil((longest + longest // 4 + 4) / 32)
    return max(1, min(wanted, block_size - prompt_tokens + 1))


def _task_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's task record (written as "arithmetic" by older versions); {} when none."""
    return manifest.get("task") or manifest.get("arithmetic") or {}


def layouts_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The layout a data dir's manifest records (data written before layouts existed is
    "classic"; a manifest of no arithmetic data: any layout), so that a model is given the budget
    of what it was trained to write, not of a longer layout it has never seen."""
    task = _task_record(manifest)
    if not task:
        return arithmetic.LAYOUTS
    layout = (task.get("mixture") or {}).get("layout", "classic")
    return (layout,) if layout in arithmetic.LAYOUTS else arithmetic.LAYOUTS


def _powers_of_two(n: int) -> list[int]:
    return [k for k in (2**i for i in range(int(math.log2(n)) + 1))] if n >= 1 else []


def evaluate_cell(
    problems: Sequence[arithmetic.Problem],
    sample_fn: SampleFn,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    eot_id: int,
    block_size: int,
    samples: int,
    temperature: float,
    seed: int,
    batch_size: int,
    max_new: int | None = None,
) -> dict[str, Any]:
    """Accuracies for one (op, digits) cell, and one example of a greedy solution.

    Every call to `sample_fn` gets exactly `batch_size` rows (the last chunk repeats its first row)
    and the same `max_new`, so the whole evaluation compiles few decode loops; decoding stops
    once every row has ended, but each token reads a cache sized for `max_new`; the CLI's
    `--first_tokens` gives room as rows need it instead.
    """
    prompts = [[eot_id, *encode(p.prompt)] for p in problems]
    if max_new is None:
        max_new = budget_tokens(problems, max(map(len, prompts)), block_size)

    def run(rows: list[list[int]], temp: float, seed_: int) -> list[str]:
        outs = sample_in_batches(sample_fn, rows, max_new, temp, seed_, batch_size)
        return [decode(t) for t in outs]

    greedy = run(prompts, 0.0, seed)
    answers = [p.answer for p in problems]
    result: dict[str, Any] = {
        "n": len(problems),
        "max_new_tokens": max_new,
        "greedy": _mean(
            [checker.parse_answer(t) == a for t, a in zip(greedy, answers, strict=True)]
        ),
        "greedy_steps_verified": _mean(
            [checker.verify_solution(p, t) for p, t in zip(problems, greedy, strict=True)]
        ),
        "greedy_true_step_lines": _mean_or_none([checker.true_step_fraction(t) for t in greedy]),
        "example": problems[0].prompt + greedy[0],
    }
    # None, like true step lines, when no solution wrote a step (an answers-only model): "0% of
    # steps right" would misread as a failed procedure.
    no_steps = result["greedy_true_step_lines"] is None
    result["greedy_steps_right"] = (
        None if no_steps
        else _mean([checker.steps_are_right(p, t) for p, t in zip(problems, greedy, strict=True)])
    )
    result["greedy_first_wrong_line"] = None if no_steps else first_wrong_lines(problems, greedy)
    if samples > 0:
        # Sample k of each problem is row k * n + i, so one batch mixes problems (same max_new).
        flat = run([p for _ in range(samples) for p in prompts], temperature, seed + 1)
        per_problem = [
            [flat[k * len(problems) + i] for k in range(samples)] for i in range(len(problems))
        ]
        majority, verified, kept = {}, {}, []
        for n in _powers_of_two(samples):
            maj_hits, ver_hits = [], []
            for p, texts in zip(problems, per_problem, strict=True):
                subset = texts[:n]
                maj_hits.append(
                    checker.majority_vote([checker.parse_answer(t) for t in subset])
                    == p.answer
                )
                ver_hits.append(checker.verified_vote(p, subset) == p.answer)
            majority[n], verified[n] = _mean(maj_hits), _mean(ver_hits)
        for p, texts in zip(problems, per_problem, strict=True):
            kept += [checker.verify_solution(p, t) for t in texts]
        result.update(
            sample_accuracy=_mean(
                [
                    checker.parse_answer(t) == p.answer
                    for p, texts in zip(problems, per_problem, strict=True)
                    for t in texts
                ]
            ),
            majority=majority,
            verified=verified,
            samples_verified=_mean(kept),
        )
    return result


def first_wrong_lines(
    problems: Sequence[arithmetic.Problem], completions: Sequence[str]
) -> dict[str, int]:
    """Where the solutions the checker rejects first go wrong, counted: `"k"` is the k-th line as
    written (from 1; a blank line is a wrong line, and one past the last means no answer line),
    `"answer"` the answer line after every step of the procedure was right.

    Why: a cell's score does not say which step breaks, and past the trained lengths that is the
    finding (e.g. a lookup failing at the last line count training had, not anywhere); the step
    checker already knows the line (`right_lines`), so every evaluation reports it. An answer
    line written where a step was due counts at its line, as a procedure stopped early.
    """
    counts: dict[int | str, int] = defaultdict(int)
    for p, text in zip(problems, completions, strict=True):
        if not checker.verify_solution(p, text):
            k = checker.right_lines(p, text)
            lines = text.split("\n")
            read_back = k < len(lines) and lines[k].startswith(arithmetic.ANSWER_PREFIX)
            counts["answer" if read_back and checker.steps_are_right(p, text) else k + 1] += 1
    lines_first = sorted(counts, key=lambda key: (key == "answer", 0 if key == "answer" else key))
    return {str(key): counts[key] for key in lines_first}


def ttt_cell(
    problems: Sequence[arithmetic.Problem],
    make_sample_fn: Callable[[Any], SampleFn],
    params: Any,
    train_fn: Callable[[list[tuple[list[int], list[int]]]], Any],
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    eot_id: int,
    samples: int,
    temperature: float,
    seed: int,
    batch_size: int,
    max_new: int,
) -> dict[str, Any]:
    """Test-time training on one cell (minigpt_jax/ttt.py): greedy before; `samples` solutions per
    problem, the verified ones kept (verified@N is the equal-samples baseline); `train_fn` on
    those (prompt, solution) pairs; greedy again with the new params. No answer is looked at
    until scoring. "transfer" scores only the problems that had no verified sample to learn from.
    """

    def run(fn, rows, temp, seed_):
        return [decode(t) for t in sample_in_batches(fn, rows, max_new, temp, seed_, batch_size)]

    prompts = [[eot_id, *encode(p.prompt)] for p in problems]
    before = make_sample_fn(params)
    greedy = run(before, prompts, 0.0, seed)
    flat = run(before, [p for _ in range(samples) for p in prompts], temperature, seed + 1)
    per_problem = [[flat[k * len(problems) + i] for k in range(samples)]
                   for i in range(len(problems))]
    examples, has_example = [], []
    for p, prompt, texts in zip(problems, prompts, per_problem, strict=True):
        kept = list(dict.fromkeys(t for t in texts if checker.verify_solution(p, t)))
        examples += [(prompt, [*encode(t), eot_id]) for t in kept]
        has_example.append(bool(kept))
    after = run(make_sample_fn(train_fn(examples)), prompts, 0.0, seed)
    right = [checker.parse_answer(t) == p.answer for p, t in zip(problems, after, strict=True)]
    before = [checker.parse_answer(t) == p.answer for p, t in zip(problems, greedy, strict=True)]
    transfer = [r for r, h in zip(right, has_example, strict=True) if not h]
    transfer_before = [r for r, h in zip(before, has_example, strict=True) if not h]
    return {
        "n": len(problems),
        "greedy": _mean(before),
        f"verified@{samples}": _mean([checker.verified_vote(p, texts) == p.answer
                                      for p, texts in zip(problems, per_problem, strict=True)]),
        "ttt_greedy": _mean(right),
        "ttt_examples": len(examples),
        "problems_with_a_verified_sample": sum(has_example),
        "ttt_greedy_transfer": _mean(transfer) if transfer else None,
        "greedy_transfer_before": _mean(transfer_before) if transfer else None,
    }


def _mean_or_none(xs: Sequence[float | None]) -> float | None:
    kept = [x for x in xs if x is not None]
    return sum(kept) / len(kept) if kept else None


def _mean(xs: Sequence[bool]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def evaluate_sets(
    sets: dict[str, list[arithmetic.Problem]],
    sample_fn: SampleFn,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    eot_id: int,
    block_size: int,
    samples: int = 8,
    temperature: float = 0.7,
    seed: int = 0,
    batch_size: int = 128,
    max_per_cell: int = 0,
    sample_sets: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda s: None,
    layouts: Sequence[str] = arithmetic.LAYOUTS,
) -> dict[str, dict[str, dict[str, Any]]]:
    """{set: {"op level": cell result}} for every (op, digits) cell of every set.

    Sampling runs on `sample_sets` only (default: all); the other sets are scored greedily.
    """
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, problems in sets.items():
        cells: dict[str, list[arithmetic.Problem]] = defaultdict(list)
        for p in problems:
            cells[cell_name(p)].append(p)
        results[name] = {}
        longest_prompt = max(len(encode(p.prompt)) + 1 for p in problems)
        max_new = budget_tokens(problems, longest_prompt, block_size, layouts)  # one per set
        for key, cell in cells.items():
            cell = cell[:max_per_cell] if max_per_cell else cell
            t0 = time.perf_counter()
            r = evaluate_cell(
                cell,
                sample_fn,
                encode,
                decode,
                eot_id,
                block_size,
                samples if sample_sets is None or name in sample_sets else 0,
                temperature,
                seed,
                batch_size,
                max_new,
            )
            r["seconds"] = round(time.perf_counter() - t0, 2)
            results[name][key] = r
            log(f"{name} {key}: greedy {r['greedy']:.3f} ({r['seconds']:.0f}s)")
    return results


def markdown_table(results: dict[str, dict[str, dict[str, Any]]], samples: int) -> str:
    ns = _powers_of_two(samples) if samples else []
    head = [
        "set",
        "problem",
        "n",
        "true step lines",
        "steps right",
        "greedy",
        *[f"maj@{n}" for n in ns],
        *([f"verified@{samples}"] if samples else []),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cells in results.items():
        for key, r in cells.items():
            true_lines = r.get("greedy_true_step_lines")
            row = [name, key, str(r["n"]), "-" if true_lines is None else f"{true_lines:.3f}"]
            steps_right = r.get("greedy_steps_right")  # absent in results saved before it existed
            row.append("-" if steps_right is None else f"{steps_right:.3f}")
            row.append(f"{r['greedy']:.3f}")
            if "majority" in r:
                row += [f"{r['majority'][n]:.3f}" for n in ns]
                row += [f"{r['verified'][samples]:.3f}"] if samples else []
            else:
                row += ["-"] * (len(head) - len(row))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def first_wrong_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Per cell with rejected greedy solutions: how many, and their first wrong lines."""
    lines = ["| set | problem | rejected | first wrong line: count |", "|---|---|---|---|"]
    for name, cells in results.items():
        for key, r in cells.items():
            counts = r.get("greedy_first_wrong_line")  # absent in results saved before it
            if counts:
                where = ", ".join(f"{line}: {n}" for line, n in counts.items())
                lines.append(f"| {name} | {key} | {sum(counts.values())} | {where} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _check_args(args: argparse.Namespace) -> None:
    """Before any compile: these would fail (or run nothing) only after loading the model."""
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: must be at least 1")
    if args.first_tokens < 0:
        raise UserError(f"--first_tokens {args.first_tokens}: must be >= 0 (0 = one pass)")
    if args.samples < 0:
        raise UserError(f"--samples {args.samples}: must be >= 0 (0 = greedy only)")
    if not 0 <= args.temperature < math.inf:
        raise UserError(f"--temperature {args.temperature}: must be a finite number >= 0")
    if args.max_per_cell < 0:
        raise UserError(f"--max_per_cell {args.max_per_cell}: must be >= 0 (0 = all)")
    if args.fresh < 0:
        raise UserError(f"--fresh {args.fresh}: must be >= 0 (0 = no fresh set)")
    if args.ttt_cells and not parse_cell_names(args.ttt_cells):  # " , ": refused before loading
        raise UserError(f"--ttt_cells {args.ttt_cells!r}: names no cell; e.g. 'div 4/2,hardest'")
    if args.ttt_cells and args.samples < 1:
        raise UserError("--ttt_cells needs sampled solutions to learn from: pass --samples N >= 1")
    if args.ttt_cells and (args.ttt_steps < 1 or args.ttt_batch < 1 or not args.ttt_lr > 0):
        raise UserError("--ttt_steps and --ttt_batch must be >= 1 and --ttt_lr > 0")


def length_curves(
    results: dict[str, dict[str, dict[str, Any]]], samples: int
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{operation: {series: [(digits, accuracy), ...]}} over every set: accuracy against the digit
    count of the long operand (a; x's first factor; the dividend), one series per metric (greedy,
    verified@N) and, for x and /, per digit count of the second operand."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for name, cells in results.items():
        if name == FRESH_SET:  # a second sample of cells the curves already have
            continue
        for key, r in cells.items():
            sign, digits, second = arithmetic.cell_digits(key)
            op = arithmetic.OP_NAMES[sign]
            suffix = f" (b: {second} digits)" if sign in "*/" else ""
            curves[op][f"greedy{suffix}"].append((digits, r["greedy"]))
            if "verified" in r and samples:
                curves[op][f"verified@{samples}{suffix}"].append((digits, r["verified"][samples]))
    return {op: {k: sorted(pts) for k, pts in series.items()} for op, series in curves.items()}


def curves_table(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> str:
    lines = ["| operation | series | " + "accuracy at digits |", "|---|---|---|"]
    for op, series in curves.items():
        for name, pts in series.items():
            row = ", ".join(f"{d}: {acc:.3f}" for d, acc in pts)
            lines.append(f"| {op} | {name} | {row} |")
    return "\n".join(lines)


def plot_length_curves(
    curves: dict[str, dict[str, list[tuple[int, float]]]], out_path: str | Path, title: str = ""
) -> None:
    """One panel per operation: accuracy against digits (see `length_curves`)."""
    from minigpt_jax.plot import Panel, Series, plot_curves

    panels = [
        Panel(
            title=op,
            xlabel="digits of the long operand",
            ylabel="exact-match accuracy",
            series=[
                Series(
                    name,
                    [d for d, _ in pts],
                    [acc for _, acc in pts],
                    linestyle="--" if name.startswith("verified") else "-",
                    marker="o",
                )
                for name, pts in series.items()
            ],
        )
        for op, series in curves.items()
    ]
    plot_curves(panels, out_path, ncols=2, title=title or None)


def _run_ttt(args, sets, results, make_sample_fn, params, model_cfg, tok) -> dict[str, Any]:
    """--ttt_cells: test-time training per named held-out cell (see `ttt_cell`)."""
    from minigpt_jax.ttt import test_time_train

    heldout = results.get("heldout") or next(iter(results.values()))
    set_name = "heldout" if "heldout" in results else next(iter(results))
    names = parse_cell_names(args.ttt_cells)
    hardest = min(heldout, key=lambda k: heldout[k]["greedy"])
    names = list(dict.fromkeys(hardest if n == "hardest" else n for n in names))
    unknown = [n for n in names if n not in heldout]
    if unknown:
        raise UserError(f"--ttt_cells: no cell {unknown} in {set_name}; cells: {sorted(heldout)}")
    out = {}
    for name in names:
        cell = [p for p in sets[set_name] if cell_name(p) == name]
        cell = cell[: args.max_per_cell] if args.max_per_cell else cell
        t0 = time.perf_counter()
        r = ttt_cell(
            cell, make_sample_fn, params,
            lambda ex: test_time_train(model_cfg, params, ex, steps=args.ttt_steps,
                                       lr=args.ttt_lr, batch_size=args.ttt_batch,
                                       pad_id=tok.eot_id, seed=args.seed),
            tok.encode, tok.decode, tok.eot_id, args.samples, args.temperature, args.seed,
            args.batch_size, heldout[name]["max_new_tokens"],
        )
        r["seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = r
        transfer = r["ttt_greedy_transfer"]
        moved = "-" if transfer is None else f"{r['greedy_transfer_before']:.3f} -> {transfer:.3f}"
        print(f"TTT {name}: greedy {r['greedy']:.3f}, verified@{args.samples} "
              f"{r[f'verified@{args.samples}']:.3f}, after {args.ttt_steps} steps on "
              f"{r['ttt_examples']} verified samples: greedy {r['ttt_greedy']:.3f} (problems "
              f"with no verified sample: {moved}) [{r['seconds']:.0f}s]", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m minigpt_jax.eval_arithmetic", description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--step", default=None, help="a step number, latest (default) or best")
    ap.add_argument("--data_dir", default=None, help="default: the run's config.data_dir")
    ap.add_argument("--sets", default="heldout,long", help="comma-separated: heldout, long")
    ap.add_argument("--samples", type=int, default=8, help="sampled solutions per problem; 0 = off")
    ap.add_argument("--sample_sets", default="heldout", help="sets that get --samples; 'all'")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max_per_cell", type=int, default=0, help="problems per cell; 0 = all")
    ap.add_argument("--cells", default="",
                    help="only these cells, in whichever set has them ('add 20,mul 10x1,div 4/1'); "
                         "default: every cell")
    ap.add_argument("--fresh", type=int, default=0,
                    help="also score a set 'fresh' of this many new problems in each cell of the "
                         "chosen sets, none that the data dir's shards or test files hold (read "
                         "from the shards); --max_per_cell caps it too")
    ap.add_argument("--fresh_seed", type=int, default=1, help="draws --fresh's problems")
    ap.add_argument("--batch_size", type=int, default=128, help="rows per decode call")
    ap.add_argument("--first_tokens", type=int, default=0,
                    help="room for new tokens each row gets first, then twice as much to the "
                         "rows still going, and so on (generate.sample_growing; greedy answers "
                         "are the same): faster where most solutions are far shorter than the "
                         "set's budget (64 for ÷ cells); 0 = one pass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: <run_dir>/eval_arithmetic.json")
    ap.add_argument("--ttt_cells", default="",
                    help="test-time training on these held-out cells ('div 4/2,mul 2x2', or "
                         "'hardest': the lowest greedy); needs --samples > 0")
    ap.add_argument("--ttt_steps", type=int, default=30, help="gradient steps per cell")
    ap.add_argument("--ttt_lr", type=float, default=3e-4)
    ap.add_argument("--ttt_batch", type=int, default=16, help="verified solutions per step")
    ap.add_argument("--plot", default=None,
                    help="length-curve PNG; default: <run_dir>/eval_arithmetic_lengths.png; "
                         "'none' skips it (needs matplotlib)")
    args = ap.parse_args(argv)

    from minigpt_jax.evaluate import write_record
    from minigpt_jax.generate import sample_growing
    from minigpt_jax.inference import inference_tokenizer, load_finite_params
    from minigpt_jax.shards import read_manifest

    step: int | str | None = args.step
    if isinstance(step, str) and step.isdigit():
        step = int(step)
    elif step == "latest":
        step = None
    with exit_on_user_error(OSError):
        _check_args(args)
        params, record = load_finite_params(args.run_dir, step)
        data_dir = args.data_dir or record["config"].get("data_dir")
        tok = inference_tokenizer(record, None, data_dir)
        names = [s for s in args.sets.split(",") if s]
        unknown = sorted(set(names) - set(TEST_FILES))
        if unknown:
            raise DataError(f"--sets: unknown {unknown}; use {sorted(TEST_FILES)}")
        sets = {name: load_test_set(data_dir, name) for name in names}
        if args.cells:
            sets = select_cells(sets, parse_cell_names(args.cells))
        if args.fresh:
            cells = dict.fromkeys(cell_name(p) for problems in sets.values() for p in problems)
            sets[FRESH_SET] = fresh_problems(
                _trained_on(data_dir, record), list(cells), args.fresh, args.fresh_seed
            )
    model_cfg = record["model"]
    manifest = read_manifest(data_dir) or {}

    def make_sample_fn(params) -> SampleFn:
        def sample_fn(prompts, max_new, temperature, seed):
            return sample_growing(model_cfg, params, prompts, max_new,
                                  first_tokens=args.first_tokens, eot_id=tok.eot_id,
                                  temperature=temperature, seed=seed)

        return sample_fn

    sample_fn = make_sample_fn(params)

    t0 = time.perf_counter()
    results = evaluate_sets(
        sets,
        sample_fn,
        tok.encode,
        tok.decode,
        tok.eot_id,
        model_cfg.block_size,
        samples=args.samples,
        sample_sets=None if args.sample_sets == "all" else args.sample_sets.split(","),
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        max_per_cell=args.max_per_cell,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        layouts=layouts_of(manifest),
    )
    report = {
        "run_dir": str(args.run_dir),
        "step": record["step"],
        "data_dir": str(data_dir),
        "worked_steps": _task_record(manifest).get("steps"),
        "cells": args.cells or "all",
        "samples": args.samples,
        "fresh": {"per_cell": args.fresh, "seed": args.fresh_seed} if args.fresh else None,
        "temperature": args.temperature,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    curves = length_curves(results, args.samples)
    report["length_curves"] = curves
    if args.ttt_cells:
        with exit_on_user_error():  # an unknown cell name
            report["ttt"] = _run_ttt(args, sets, results, make_sample_fn, params, model_cfg,
                                     tok)
    print(f"{args.run_dir} step {record['step']} (worked steps: {report['worked_steps']})")
    print(markdown_table(results, args.samples))
    if wrong := first_wrong_table(results):
        print("\nWhere the rejected greedy solutions first go wrong (line 1 = the first after the "
              "prompt):")
        print(wrong)
    print("\nLength curves (accuracy vs digits):")
    print(curves_table(curves), flush=True)
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval_arithmetic.json"
    with exit_on_user_error():
        write_record(out, report)
    print(f"wrote {out}")
    if args.plot is None and importlib.util.find_spec("matplotlib") is None:
        print("note: no length-curve PNG: install the plot extra (pip install -e '.[plot]')")
    elif args.plot != "none":
        from minigpt_jax.plot import PlotError

        png = Path(args.plot) if args.plot else Path(args.run_dir) / "eval_arithmetic_lengths.png"
        with exit_on_user_error(PlotError, OSError):
            plot_length_curves(curves, png, title=f"{args.run_dir} step {record['step']}")
        print(f"wrote {png}")
    return report
