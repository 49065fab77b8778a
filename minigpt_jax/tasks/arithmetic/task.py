"""The arithmetic task as reinforcement learning and test-time training see it (`tasks.RLTask`).

A cell is `(op, digits of a, digits of b)`; + and - use equal digit counts (`("+", 3, 3)`). The
trained cells are those of the data directory's mixture (its manifest); `max_digits` adds longer
cells for the self-play curriculum, each opening once the one a digit shorter is mostly solved
(`prerequisite`). Problems never repeat the data directory's test problems.

Reward: `answer_weight` (1) for the right final answer, plus `process_weight` when every written
step also checks out (`checker.verify_solution`, the optional process reward); the verifier is
what test-time training keeps samples by, since it needs no answer, and what `solved_credit`
reinforces (an answers-only policy writes no steps to verify: solved credit has nothing to take).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

from minigpt_jax.errors import ConfigError, DataError
from minigpt_jax.shards import read_manifest
from minigpt_jax.tasks.arithmetic import checker
from minigpt_jax.tasks.arithmetic.problems import (
    OPS,
    Mixture,
    Problem,
    cell_label,
    make_problem,
    sample_problem,
    solution,
)

Cell = tuple[str, int, int]


def parse_max_digits(spec: str) -> dict[str, int]:
    """"+:8,-:8,*:4" -> {"+": 8, "-": 8, "*": 4} (the config's task_options.max_digits)."""
    out = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        op, _, n = part.partition(":")
        if op not in OPS or not n.isdigit() or int(n) < 1:
            raise ConfigError(
                "task_options.max_digits",
                f"{part!r} is not <op>:<digits> with op in {' '.join(OPS)}, e.g. '+:8,-:8'",
            )
        out[op] = int(n)
    return out


@dataclasses.dataclass
class ArithmeticTask:
    mixture: Mixture
    heldout_problems: list[Problem]
    max_digits: dict[str, int]  # longest `a` a curriculum may reach, per operation
    process_weight: float = 0.0
    answer_weight: float = 1.0
    name: str = "arithmetic"

    def __post_init__(self):
        self._banned = set(self.heldout_problems)
        self._trained = self._cells(self.mixture.operand_ranges())
        ranges = {
            op: ((a_min, max(a_max, self.max_digits.get(op, a_max))), b)
            for op, ((a_min, a_max), b) in self.mixture.operand_ranges().items()
        }
        self._all = self._cells(ranges)
        self._a_max = {op: a_max for op, ((_, a_max), _) in self.mixture.operand_ranges().items()}

    @classmethod
    def from_data_dir(
        cls,
        data_dir: str | Path,
        max_digits: dict[str, int] | str | None = None,
        process_weight: float = 0.0,
        answer_weight: float = 1.0,
    ) -> ArithmeticTask:
        """The mixture from the manifest `scripts/make_arithmetic_data.py` wrote, and its test
        sets: none is ever drawn for training; the held-out one is scored, and the longer-numbers
        one too when `max_digits` lets the curriculum reach past the supervised lengths."""
        from minigpt_jax.tasks.arithmetic.evaluate import load_test_set

        manifest = read_manifest(data_dir) or {}
        task = manifest.get("task") or {}
        if task.get("name") != "arithmetic" or "mixture" not in task:
            raise DataError(
                f"{data_dir}/manifest.json: not arithmetic data (no task.mixture); write it with "
                f"`python scripts/make_arithmetic_data.py --out_dir {data_dir}`"
            )
        try:
            mixture = Mixture(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in task["mixture"].items()}
            )
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{data_dir}/manifest.json: task.mixture is not a mixture this version reads "
                f"({e}); rewrite the data with `python scripts/make_arithmetic_data.py`"
            ) from e
        files = task.get("test_files") or {"heldout": "test.jsonl"}
        heldout = load_test_set(data_dir, "heldout")
        others = [p for name in files if name != "heldout" for p in load_test_set(data_dir, name)]
        if not 0 <= process_weight < float("inf"):
            raise ConfigError(
                "task_options.process_weight",
                f"{process_weight}: use a finite weight >= 0 (0 = answer reward only)",
            )
        if not 0 <= answer_weight < float("inf") or answer_weight + process_weight == 0:
            raise ConfigError(
                "task_options.answer_weight",
                f"{answer_weight}: use a finite weight >= 0, and not 0 with process_weight 0 "
                f"(every reward would be 0); 0 with process_weight 1 rewards verified solutions",
            )
        if isinstance(max_digits, str):
            max_digits = parse_max_digits(max_digits)
        unknown = sorted(set(max_digits or {}) - set(OPS))
        if unknown:
            raise ConfigError("task_options.max_digits", f"unknown operations {unknown}; use {OPS}")
        if max_digits:  # the curriculum can reach longer cells: score them too
            heldout = heldout + [p for p in others if p not in set(heldout)]
        t = cls(mixture, heldout, dict(max_digits or {}), process_weight, answer_weight)
        t._banned |= set(others)
        return t

    @staticmethod
    def _cells(ranges) -> list[Cell]:
        cells = []
        for op, ((a_min, a_max), (b_min, b_max)) in ranges.items():
            for da in range(a_min, a_max + 1):
                if op in "+-":
                    cells.append((op, da, da))
                else:
                    cells += [(op, da, db) for db in range(b_min, b_max + 1)]
        return cells

    # --- the RLTask protocol --------------------------------------------------------------------

    def cells(self) -> Sequence[Cell]:
        return self._all

    def trained_cells(self) -> Sequence[Cell]:
        return self._trained

    def prerequisite(self, cell: Cell) -> Cell | None:
        op, da, db = cell
        if da <= self._a_max[op]:
            return None
        return (op, da - 1, da - 1 if op in "+-" else db)

    def problem(self, rng: random.Random, cell: Cell | None) -> Problem:
        """A problem of `cell`; `None` draws from the supervised data's own mixture."""
        while True:
            p = sample_problem(rng, self.mixture) if cell is None else make_problem(rng, *cell)
            if p not in self._banned:
                return p

    def prompt(self, problem: Problem) -> str:
        return problem.prompt

    def reference_solution(self, problem: Problem) -> str:
        return solution(problem, layout=self.mixture.layout)

    def solved(self, problem: Problem, completion: str) -> bool:
        return checker.parse_answer(completion) == problem.answer

    def right_lines(self, problem: Problem, completion: str) -> int:
        return checker.right_lines(problem, completion)

    def verify(self, problem: Problem, completion: str) -> bool:
        return checker.verify_solution(problem, completion)

    def reward(self, problem: Problem, completion: str) -> float:
        r = self.answer_weight * self.solved(problem, completion)
        if self.process_weight:
            r += self.process_weight * self.verify(problem, completion)
        return r

    def cell_of(self, problem: Problem) -> Cell:
        da, db = len(str(problem.a)), len(str(problem.b))
        if problem.op in "+-":
            return (problem.op, max(da, db), max(da, db))
        return (problem.op, da, db)

    def heldout(self) -> Sequence[Problem]:
        return self.heldout_problems

    def cell_name(self, cell: Cell) -> str:
        """`add 3`, `mul 2x2`, `div 4/1`: the evaluator's names for the same cells."""
        return cell_label(*cell)
