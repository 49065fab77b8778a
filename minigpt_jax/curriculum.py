"""Which problems RL practises on: the supervised mixture, uniform over cells, or the frontier.

The frontier proposer is the self-play half of RL here: it keeps a decayed count of attempts and
successes per cell (`ProposerStats`, saved in every checkpoint) and draws cells in proportion to
p(1 - p) of their estimated success rate p, so practice goes where the solver succeeds sometimes
but not always: a solved cell (p near 1) and a hopeless one (p near 0) both fade, and a cell whose
prerequisite is not yet solved to `unlock` is closed. As the solver masters n-digit problems the
(n+1)-digit cell opens and takes over: the curriculum moves to longer numbers by itself. The
proposer is a rule, not a second network (Absolute Zero trains its proposer; ours only chooses
which generator cell to sample, which is all a verifiable task with a known generator needs).

`cells` narrows the practice to named cells (RL config key `proposer_cells`): the read-back
errors of 20-digit sums, say, are a few percent of a draw over every length, and naming the long
cells puts every prompt where they are. Named cells are open whatever their prerequisites (the
user chose them). The statistics keep every cell of the task, and the cells not named are not
decayed while they are not drawn, so a run resumed without `cells` finds its ladder where it
left it rather than climbing it again from the prior.

Statistics are plain float arrays in cell order, so a resumed run draws exactly what an
uninterrupted one would (the draws themselves come from a `random.Random` seeded by step).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from minigpt_jax.errors import ConfigError
from minigpt_jax.tasks import Cell, RLTask

PROPOSERS = ("mixture", "uniform", "frontier")
PROPOSER_INITS = ("prior", "init_from")  # where a fresh run's statistics start (rl.proposer_init)


def zero_stats(n_cells: int) -> dict[str, np.ndarray]:
    """{"attempts", "successes"}: decayed counts per cell, the proposer's whole memory."""
    return {"attempts": np.zeros(n_cells, np.float32), "successes": np.zeros(n_cells, np.float32)}


def success_rates(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Posterior mean success per cell under a uniform Beta(1, 1) prior: 0.5 when unseen."""
    return (stats["successes"] + 1.0) / (stats["attempts"] + 2.0)


class Proposer:
    """Draws the cells of each RL step and learns from the outcomes.

    `kind`: "mixture" (the task's supervised distribution: cell None), "uniform" (every open cell
    alike) or "frontier" (p(1 - p)-weighted open cells, plus `floor` so no open cell starves).
    `cells`: names (`task.cell_name`) of the only cells to draw; empty = every cell.
    """

    def __init__(
        self,
        task: RLTask,
        kind: str = "frontier",
        unlock: float = 0.6,
        decay: float = 0.95,
        floor: float = 0.02,
        cells: Sequence[str] = (),
    ):
        if kind not in PROPOSERS:
            raise ValueError(f"proposer={kind!r}: use one of {', '.join(PROPOSERS)}")
        self.task, self.kind, self.unlock, self.decay, self.floor = task, kind, unlock, decay, floor
        self.cells: list[Cell] = list(task.cells())
        self.index = {c: i for i, c in enumerate(self.cells)}
        self.stats = zero_stats(len(self.cells))
        if isinstance(cells, str):  # one name would be read as its characters
            raise TypeError(f"cells={cells!r}: pass a sequence of names")
        names, named = [task.cell_name(c) for c in self.cells], set(cells)
        unknown = sorted(named - set(names))
        if unknown:
            raise ConfigError(
                "proposer_cells",
                f"{unknown} are not the task's cells (a longer one needs task_options.max_digits);"
                f" its cells: {', '.join(names)}",
            )
        self.chosen = np.array([n in named for n in names]) if named else None

    def carry(self, names: Sequence[str], stats: dict[str, np.ndarray]) -> int:
        """Take another run's statistics (`names`: its cells, in the order of its arrays) for
        every cell of this task with the same name; the others keep the prior. Returns how many
        cells matched.

        Why by name: a continued run may allow longer numbers (more cells) or fewer, so the
        two runs' cell orders differ; a cell's name is what both agree on."""
        index = {self.task.cell_name(c): i for i, c in enumerate(self.cells)}
        matched = 0
        for j, name in enumerate(names):
            i = index.get(name)
            if i is not None:
                matched += 1
                for key in self.stats:
                    self.stats[key][i] = stats[key][j]
        return matched

    def open_cells(self) -> np.ndarray:
        """Boolean per cell: its prerequisite (if any) is solved at least `unlock` of the time
        (a cell never attempted counts as unsolved here, unlike in the weights); with named
        cells, exactly those."""
        if self.chosen is not None:
            return self.chosen.copy()
        attempted = self.stats["attempts"] > 0
        rate = np.where(attempted, success_rates(self.stats), 0.0)
        out = np.ones(len(self.cells), bool)
        for i, cell in enumerate(self.cells):
            pre = self.task.prerequisite(cell)
            if pre is not None:
                j = self.index[pre]
                out[i] = out[j] and rate[j] >= self.unlock
        return out

    def weights(self) -> np.ndarray:
        """Unnormalised draw weights per cell (zero for closed cells)."""
        is_open = self.open_cells()
        if self.kind == "uniform":
            return is_open.astype(np.float64)
        p = success_rates(self.stats).astype(np.float64)
        return np.where(is_open, p * (1 - p) + self.floor, 0.0)

    def draw(self, rng: random.Random, n: int) -> list[Cell | None]:
        """`n` cells for one step (None: the task's own mixture)."""
        if self.kind == "mixture":
            return [None] * n
        w = self.weights()
        return rng.choices(self.cells, weights=w.tolist(), k=n)

    def update(self, cells: Sequence[Cell], successes: Sequence[float]) -> None:
        """Decay every count once (only the named cells' when cells are named), then add this
        step's outcomes (success in [0, 1] each)."""
        decay = np.float32(self.decay)
        if self.chosen is not None:
            decay = np.where(self.chosen, decay, np.float32(1.0))
        self.stats = {k: v * decay for k, v in self.stats.items()}
        for cell, s in zip(cells, successes, strict=True):
            i = self.index.get(cell)
            if i is None:  # a mixture problem outside every listed cell: nothing to track
                continue
            self.stats["attempts"][i] += 1.0
            self.stats["successes"][i] += float(s)

    def summary(self) -> dict[str, float]:
        """Estimated success and draw share per attempted cell, for the metrics log."""
        w = self.weights()
        share = w / w.sum() if w.sum() > 0 else w
        rate = success_rates(self.stats)
        out = {}
        for i, cell in enumerate(self.cells):
            if self.stats["attempts"][i] > 0 or share[i] > 0:
                name = self.task.cell_name(cell)
                out[f"p/{name}"] = round(float(rate[i]), 4)
                if self.kind != "mixture":
                    out[f"share/{name}"] = round(float(share[i]), 4)
        return out
