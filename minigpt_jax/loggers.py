"""Where a run's metrics go: metrics.jsonl, TensorBoard event files, Weights & Biases.

`config.loggers` names them, e.g. `--config.loggers="('jsonl','tensorboard')"`. Every logger gets
the same records at the same steps (the dicts training writes to metrics.jsonl: step, train_loss,
val_loss, lr, grad_norm, tokens_per_s, mfu), and the run's config once.

A run that resumes from step S continues the same curves: whatever a crash left logged after S is
dropped (metrics.jsonl is cut back to steps <= S; TensorBoard readers are told to discard steps > S
of the earlier event files), so every step appears once, with the values of the run that produced
the checkpoint. A fresh run (S = 0) in a run directory restarts its curves from nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import ml_collections

from minigpt_jax.config import ConfigError
from minigpt_jax.files import atomic_write

# logger name -> (module it needs, pyproject extra that installs it)
_NEEDS = {
    "jsonl": None,
    "tensorboard": ("tensorboardX", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


class Logger(Protocol):
    def write(self, step: int, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def check_loggers(names: Sequence[str]) -> None:
    """Known names whose libraries are installed; called before anything compiles."""
    import importlib.util

    if isinstance(names, str) or not names:
        raise ConfigError(
            "loggers", f"{names!r}: give a tuple of names, e.g. \"('jsonl','tensorboard')\""
        )
    for name in names:
        if name not in _NEEDS:
            raise ConfigError("loggers", f"{name!r} is not one of {', '.join(_NEEDS)}")
        need = _NEEDS[name]
        if need and importlib.util.find_spec(need[0]) is None:
            raise ConfigError(
                "loggers",
                f"{name!r} needs {need[0]}, which is not installed: "
                f"pip install -e '.[{need[1]}]' in the checkout "
                f"(or drop {name!r} from config.loggers)",
            )


def _numeric(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _records_upto(path: Path, step: int) -> list[dict[str, Any]]:
    """The records of `path` up to `step`; a half-written last line (a crash mid-write) is
    dropped, anything else unreadable is an error naming the line."""
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break
            raise ConfigError(
                "run_dir", f"{path}:{i} is not a JSON line ({e.msg}); fix or delete it, then resume"
            ) from e
        if record["step"] <= step:
            records.append(record)
    return records


class JsonlLogger:
    """One JSON object per logged step in <run_dir>/metrics.jsonl."""

    def __init__(self, path: str | Path, start_step: int = 0):
        self.path = Path(path)
        if self.path.exists():
            kept = "".join(json.dumps(r) + "\n" for r in _records_upto(self.path, start_step))
            atomic_write(self.path, lambda tmp: tmp.write_text(kept))

    def write(self, step: int, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalar event files in the run directory, tags exactly the metrics.jsonl keys; the config
    as a text summary at step 0.

    Each (re)start opens a new event file whose first event tells readers to purge every step
    >= start_step + 1 from the earlier files (TensorBoard's `purge_step`), so a resumed run shows
    each step once. `tensorboard --logdir runs/` then lists runs by directory name.
    """

    def __init__(self, logdir: str | Path, config: dict[str, Any], start_step: int = 0):
        from tensorboardX import SummaryWriter

        # purge_step 0 on a fresh run: nothing of an earlier run in this directory survives.
        # Readers apply files in name order and names carry only whole seconds: the suffix keeps
        # a restart within the same second from overwriting the file, and in order.
        self.writer = SummaryWriter(
            str(logdir),
            purge_step=start_step + 1 if start_step else 0,
            flush_secs=30,
            filename_suffix=f".{time.time_ns()}",
        )
        if not start_step:
            text = json.dumps(config, indent=2, default=str)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def write(self, step: int, record: dict[str, Any]) -> None:
        for tag, value in _numeric(record).items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run (online, or offline with WANDB_MODE=offline: files under <run_dir>/wandb).

    The W&B run id is kept in <run_dir>/wandb_run_id so that a resumed training run continues the
    same W&B run; a fresh run gets a new id. W&B histories only grow: after a crash, steps between
    the checkpoint and the crash keep the values first logged (W&B drops the re-logged ones).
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any],
        project: str,
        name: str,
        start_step: int = 0,
    ):
        import wandb

        run_dir = Path(run_dir)
        id_path = run_dir / "wandb_run_id"
        if start_step and id_path.exists():
            run_id = id_path.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_path.write_text(run_id + "\n")
        self.run = wandb.init(
            project=project,
            name=name or run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            reinit="create_new",
        )

    def write(self, step: int, record: dict[str, Any]) -> None:
        self.run.log(_numeric(record), step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """All the run's loggers behind the one interface; empty on processes other than 0."""

    def __init__(self, loggers: Sequence[Logger]):
        self.loggers = list(loggers)

    def write(self, step: int, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.write(step, record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def make_loggers(cfg: ml_collections.ConfigDict, start_step: int, enabled: bool = True) -> Loggers:
    """The loggers `cfg.loggers` names, writing into `cfg.run_dir` from `start_step` on."""
    if not enabled:
        return Loggers([])
    check_loggers(cfg.loggers)
    run_dir = Path(cfg.run_dir)
    config = json.loads(cfg.to_json_best_effort())
    made: list[Logger] = []
    for name in dict.fromkeys(cfg.loggers):  # each once, in the order given
        if name == "jsonl":
            made.append(JsonlLogger(run_dir / "metrics.jsonl", start_step))
        elif name == "tensorboard":
            made.append(TensorBoardLogger(run_dir, config, start_step))
        elif name == "wandb":
            made.append(
                WandbLogger(run_dir, config, cfg.wandb_project, cfg.wandb_run_name, start_step)
            )
    return Loggers(made)
