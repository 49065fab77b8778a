"""Tasks: problems a model learns to solve, with a way to check its answers.

A task is a package under `minigpt_jax/tasks/<name>/` providing five pieces, so that data making,
evaluation and (coming) reinforcement learning can take any task without knowing which it is:

- a problem type with `.prompt` (the text the model is given, newline included) and `.answer`,
  and a seeded generator of problems (`training_problems(seed, ...)`) that never yields one of
  the held-out test problems (`heldout_problems(seed, spec)`);
- `solution(problem)`: the reference completion after the prompt (what supervised data trains on);
- a checker: `verify_solution(problem, completion) -> bool` and `parse_answer(completion)`, exact
  and independent of the generator, usable as a reward;
- a data writer (`data.write_dataset` + `data.main`): shards written with `shards.write_manifest`,
  whose `packing` field tells the trainer the chunk length when whole documents are packed;
- an evaluator (`evaluate.main`): accuracy of a run's checkpoint on the held-out problems.

The trainer imports no task: what it needs of one is in the data directory's manifest.
`minigpt_jax.tasks.arithmetic` is the first task.

Reinforcement learning (`minigpt_jax.rl`) and test-time training (`minigpt_jax.ttt`) take a task
through the `RLTask` protocol below and nothing else, so a second task plugs in by implementing it
(and a line in `load_task`). Problems are grouped into *cells* (for arithmetic: operation and digit
counts) that the self-play proposer (`minigpt_jax.curriculum`) tracks success on.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

Cell = Hashable


class RLTask(Protocol):
    """What the RL loop needs of a task: problems by cell, prompts, rewards, held-out problems."""

    name: str

    def cells(self) -> Sequence[Cell]:
        """Every cell a curriculum may draw from, in a fixed order (saved statistics follow it)."""
        ...

    def trained_cells(self) -> Sequence[Cell]:
        """The cells of the supervised data: open from the start, the uniform proposer's range."""
        ...

    def prerequisite(self, cell: Cell) -> Cell | None:
        """The cell that must be mostly solved before `cell` opens (None: open from the start)."""
        ...

    def problem(self, rng: random.Random, cell: Cell) -> Any:
        """A problem of `cell`, never one of `heldout()`."""
        ...

    def prompt(self, problem: Any) -> str: ...

    def reward(self, problem: Any, completion: str) -> float:
        """The scalar the policy is trained on (exact and cheap: it runs on every sample)."""
        ...

    def solved(self, problem: Any, completion: str) -> bool:
        """The final answer is right: what pass@k and held-out accuracy count."""
        ...

    def right_lines(self, problem: Any, completion: str) -> int:
        """How many of the completion's lines (split at newlines) are right from the first: the
        per-line process credit (`line_credit`); a task without steps may return 0 always."""
        ...

    def verify(self, problem: Any, completion: str) -> bool:
        """Accept a solution without knowing its answer: test-time training's filter, and the
        samples `solved_credit` reinforces."""
        ...

    def cell_of(self, problem: Any) -> Cell: ...

    def cell_name(self, cell: Cell) -> str:
        """A short label for logs and tables."""
        ...

    def heldout(self) -> Sequence[Any]:
        """Problems never trained on, for the loop's greedy accuracy."""
        ...

    # Optional: `reference_solution(problem) -> str`, the task's own worked completion. When a task
    # has it, `rl` refuses a `max_new_tokens` that would cut a cell's reference short.


def parse_cell_names(spec: str) -> list[str]:
    """A comma-separated list of cell names as typed on a command line or in a config ("add 19,
    add 20", spaces around names allowed): one parser, so every flag and key that names cells
    reads them alike."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def load_task(name: str, data_dir: str, options: dict[str, Any] | None = None) -> RLTask:
    """The task called `name`, reading what it needs from `data_dir` (its manifest, test files)."""
    from minigpt_jax.errors import ConfigError

    if name == "arithmetic":
        from minigpt_jax.tasks.arithmetic.task import ArithmeticTask

        return ArithmeticTask.from_data_dir(data_dir, **(options or {}))
    raise ConfigError("task", f"{name!r} is not a task; use 'arithmetic'")


__all__ = ["Cell", "RLTask", "parse_cell_names", "load_task"]
