"""A run's checkpoints: one Orbax `CheckpointManager` under `<run_dir>/checkpoints/<step>/`.

Each checkpoint holds four items, written together and committed atomically (Orbax writes a
temporary directory and renames it when every item is on disk, so a crash mid-save leaves the
previous checkpoints untouched and the partial one is cleaned up on the next start):

- `state`: the train state (params, optimizer state, step), restored straight into the shardings of
  the current mesh, whatever mesh wrote it;
- `data`: the Grain iterator's position (`grain.checkpoint.CheckpointSave`), for an exact resume;
- `config`: the run's config as JSON; `tokenizer`: the tokenizer record `{spec, name, sha256, ...}`.

Saves are asynchronous: `save` returns once the arrays are copied off the device and the train loop
goes on while a background thread writes them. The last `keep_checkpoints` are kept, plus (with
`keep_best`) the one with the lowest val_loss among the checkpoints saved at an evaluation step.

Two guards Orbax does not give: a state with non-finite parameters (or loss) is never saved, so a
diverged run keeps its last good checkpoint and every resume does not re-diverge; and the sha256 of
every file of a committed checkpoint goes to `<run_dir>/checkpoint_checksums/<step>.json`, checked
before a restore (a flipped bit in a data file is otherwise read silently): a damaged latest
checkpoint is set aside and the run falls back to the one before, with a message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from minigpt_jax import sharding
from minigpt_jax.config import model_config_from_record
from minigpt_jax.errors import CheckpointError, DivergedError
from minigpt_jax.files import sha256_file, write_json_atomic
from minigpt_jax.model import GPT, GPTConfig

CHECKPOINT_SUBDIR = "checkpoints"
CHECKSUM_SUBDIR = "checkpoint_checksums"  # <step>.json: {file relative to the step dir: sha256}
CORRUPT_SUBDIR = "corrupt_checkpoints"  # damaged steps a resume set aside (never deleted)
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
STATE, DATA, CONFIG, TOKENIZER = "state", "data", "config", "tokenizer"
Step = int | str | None  # None: latest; an int: that step; "best": lowest val_loss


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).absolute() / CHECKPOINT_SUBDIR


def _val_loss(metrics: Any) -> float:
    """Rank for 'best': checkpoints saved without an evaluation rank last."""
    value = metrics.get("val_loss") if metrics else None
    return math.inf if value is None else float(value)


def _path_name(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves}


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """One device-side bool: every float in `tree` is finite (a single host read at save time)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def _disk_error(e: BaseException | None) -> str | None:
    """The reason (disk full, read-only, no permission) behind `e`, however Orbax wrapped it:
    an OSError in the chain, or TensorStore's `[os_error_code='28']` inside a ValueError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = e.errno if isinstance(e, OSError) else None
        if code is None and (found := re.search(r"os_error_code='(\d+)'", str(e))):
            code = int(found[1])
        if code in _DISK_ERRNOS:
            return os.strerror(code)
        e = e.__cause__ or e.__context__
    return None


class _DiskErrorLogFilter(logging.Filter):
    """Orbax logs a failed background write with its traceback (at ERROR) before the error reaches
    `save`/`wait`/`close`; a full or read-only disk is reported there as one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("orbax" in record.pathname and _disk_error(ValueError(record.getMessage())))


logging.getLogger("absl").addFilter(_DiskErrorLogFilter())


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: Orbax reads each shard where it goes."""
    return jax.tree.map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
        abstract_tree,
        shardings,
    )


class RunCheckpoints:
    """Save and restore one run's checkpoints (every process of a multi-host job makes one)."""

    def __init__(
        self,
        run_dir: str | Path,
        keep: int = 3,
        keep_best: bool = True,
        read_only: bool = False,
        async_save: bool = True,
    ):
        self.directory = checkpoint_dir(run_dir)
        self.checksum_dir = self.directory.parent / CHECKSUM_SUBDIR
        self._read_only = read_only
        self._checksum_lock = threading.Lock()
        if read_only and not self.directory.is_dir():
            raise CheckpointError(
                f"{self.directory}: no checkpoints here; is --run_dir the directory a training run "
                f"wrote (it holds config.json, metrics.jsonl and checkpoints/)?"
            )
        keep_policies = [policies.LatestN(n=max(keep, 1))]
        if keep_best:
            keep_policies.append(
                policies.BestN(
                    get_metric_fn=_val_loss,
                    reverse=True,  # ascending val_loss sorted backwards: the lowest comes last
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            best_fn=_val_loss,
            best_mode="min",
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            enable_async_checkpointing=async_save,
            # hash each step's files once committed, in Orbax's background thread (synchronous
            # saves are hashed at wait/close: Orbax takes the callback from async managers only)
            async_options=ocp.AsyncOptions(post_finalization_callback=self.record_checksums)
            if async_save
            else None,
            cleanup_tmp_directories=not read_only,  # what a killed save left behind
            read_only=read_only,
            create=not read_only,
        )
        handlers = {
            STATE: ocp.PyTreeCheckpointHandler(),
            DATA: grain_ckpt.CheckpointHandler(),
            CONFIG: ocp.JsonCheckpointHandler(),
            TOKENIZER: ocp.JsonCheckpointHandler(),
        }
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    # --- which step -------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def resolve_step(self, step: Step = None) -> int:
        """`None` -> latest, `"best"` -> lowest val_loss, an int -> that step (which must exist)."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(
                f"{self.directory}: no checkpoint found; train first (python -m minigpt_jax.train "
                f"--config ... --config.run_dir={self.directory.parent}) or pass another run_dir"
            )
        if step is None or step == "latest":
            return self.latest_intact_step()
        if step == "best":
            best = self.manager.best_step()
            if best is None or math.isinf(_val_loss(self.manager.metrics(best))):
                raise CheckpointError(
                    f"{self.directory}: no checkpoint was saved at an evaluation step, so none "
                    f"has a val_loss to rank by; pass a step ({', '.join(map(str, steps))})"
                )
            return self._intact(best)
        try:
            step = int(step)
        except ValueError:
            raise CheckpointError(f"step {step!r}: use an integer, 'latest' or 'best'") from None
        if step not in steps:
            raise CheckpointError(
                f"{self.directory}: no checkpoint at step {step}; available: "
                f"{', '.join(map(str, steps))}"
            )
        return self._intact(step)

    def _intact(self, step: int) -> int:
        problem = self.damage(step)
        if problem:
            raise CheckpointError(
                f"checkpoint step {step} is damaged: {problem}; pick another step"
            )
        return step

    # --- save -------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: Any,
        data_iter: Any,
        config: dict[str, Any],
        tokenizer: dict[str, Any] | None,
        val_loss: float | None = None,
        loss: Any = None,
    ) -> None:
        """Start an asynchronous save; returns once the arrays are safe to overwrite (donation).

        Refuses (DivergedError, nothing written) when the params or `loss` are not finite."""
        if not bool(all_finite((getattr(state, "params", state), loss))):
            last = self.latest_step()
            kept = f"step {last} ({self.directory / str(last)})" if last is not None else "none"
            raise DivergedError(
                f"step {step}: the loss or the parameters are not finite (NaN/inf), so no "
                f"checkpoint was saved; the last good checkpoint is {kept}. Lower config.lr, raise "
                f"config.warmup_steps or lower config.grad_clip, then resume or start a new run_dir"
            )
        items = {
            STATE: ocp.args.PyTreeSave(state),
            CONFIG: ocp.args.JsonSave(config),
            TOKENIZER: ocp.args.JsonSave(tokenizer or {}),
        }
        if data_iter is not None:
            items[DATA] = grain_ckpt.CheckpointSave(data_iter)
        metrics = {} if val_loss is None else {"val_loss": float(val_loss)}
        with self._disk_errors(step):
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None) -> Iterator[None]:
        """A full or read-only disk during a save becomes one CheckpointError naming the folder."""
        try:
            yield
        except Exception as e:
            cause = _disk_error(e)
            if cause is None:
                raise
            last = [s for s in self.steps() if s != step]
            kept = f"step {last[-1]} is intact" if last else "no earlier checkpoint exists"
            raise CheckpointError(
                f"{self.directory}: saving a checkpoint failed ({cause}); {kept}. Free "
                f"space or fix the permissions, then rerun the same command"
            ) from e

    def wait(self) -> None:
        with self._disk_errors(None):
            self.manager.wait_until_finished()
        self.record_checksums()

    def close(self) -> None:
        """Wait for the save in flight and the start-up clean-up, release Orbax's threads, and
        remove the directories if nothing was saved, so that a run refused at start-up leaves
        its run_dir as it found it.

        Why the clean-up wait: Orbax 0.12's `close()` does not await the removal of a killed
        save's temporary directories that its constructor starts in a thread; a process that
        exits right after (a bad `init_from`, say) printed that thread's traceback after its
        one-line message.
        """
        try:
            with self._disk_errors(None):
                # private, so looked up: an Orbax that renames it gets the old close()
                await_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
                if await_cleanup is not None:
                    await_cleanup()
                self.manager.close()
        finally:
            self.record_checksums()
            if not self._read_only and jax.process_index() == 0:
                for empty in (self.checksum_dir, self.directory):
                    with contextlib.suppress(OSError):
                        empty.rmdir()  # only if empty

    # --- checksums --------------------------------------------------------------------------

    def _committed_steps(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [d for d in self.directory.iterdir() if d.is_dir() and d.name.isdigit()]

    def record_checksums(self) -> None:
        """sha256 of every file of each committed step that has none yet; drops the records of
        steps Orbax has since deleted. Runs after each commit and at wait/close (idempotent)."""
        if self._read_only or jax.process_index() != 0:
            return
        with self._checksum_lock:
            steps = self._committed_steps()
            self.checksum_dir.mkdir(exist_ok=True)
            for step_dir in steps:
                record = self.checksum_dir / f"{step_dir.name}.json"
                if not record.exists():
                    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
                    sums = {str(p.relative_to(step_dir)): sha256_file(p) for p in files}
                    write_json_atomic(record, sums)
            names = {d.name for d in steps}
            for record in self.checksum_dir.glob("*.json"):
                if record.stem not in names:
                    record.unlink(missing_ok=True)

    def damage(self, step: int) -> str | None:
        """What differs from the checksums recorded at save (None: intact, or none recorded)."""
        record = self.checksum_dir / f"{step}.json"
        if not record.is_file():
            return None
        try:
            sums = json.loads(record.read_text())
        except ValueError:
            return f"{record} is not valid JSON"
        step_dir = self.directory / str(step)
        for name, digest in sums.items():
            path = step_dir / name
            if not path.is_file():
                return f"{path} is missing"
            if sha256_file(path) != digest:
                return f"{path} differs from the sha256 recorded when it was saved"
        return None

    def latest_intact_step(self, set_aside: bool = False) -> int | None:
        """The newest step whose files match their checksums; each damaged newer one is reported
        (and with `set_aside`, moved to `<run_dir>/corrupt_checkpoints/` so training can save that
        step again). None when there is no checkpoint; an error when none is intact."""
        steps = self.steps()
        for i, step in reversed(list(enumerate(steps))):
            problem = self.damage(step)
            if problem is None:
                return step
            before = f"falling back to step {steps[i - 1]}" if i else "no earlier checkpoint"
            print(f"warning: checkpoint step {step} is damaged: {problem}; {before}",
                  file=sys.stderr)
            if set_aside:
                corrupt = self.directory.parent / CORRUPT_SUBDIR
                corrupt.mkdir(exist_ok=True)
                shutil.move(str(self.directory / str(step)), str(corrupt / str(step)))
                (self.checksum_dir / f"{step}.json").unlink(missing_ok=True)
                self.manager.reload()
        if steps:
            raise CheckpointError(
                f"{self.directory}: every checkpoint is damaged (see above); start a new run_dir "
                f"or restore the files from a backup"
            )
        return None

    # --- restore ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, step: int) -> Iterator[None]:
        """What Orbax raises on a damaged step directory (an item missing or empty, a truncated
        file, bad JSON, a config no model fits) as one CheckpointError naming the directory and
        the other steps."""
        try:
            yield
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as e:
            first_line = (str(e).splitlines() or [""])[0][:200]
            others = ", ".join(str(s) for s in self.steps() if s != step)
            hint = (f"the run's other checkpoints: {others} (--step picks one)" if others
                    else "the run has no other checkpoint")
            raise CheckpointError(
                f"{self.directory / str(step)}: damaged checkpoint ({type(e).__name__}: "
                f"{first_line}); {hint}"
            ) from e

    def record(self, step: int) -> dict[str, Any]:
        """The checkpoint's {step, config, tokenizer} (tokenizer None when the run had none)."""
        with self._reading(step):
            restored = self.manager.restore(
                step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore(),
                                                 TOKENIZER: ocp.args.JsonRestore()})
            )
        return {"step": step, "config": restored[CONFIG], "tokenizer": restored[TOKENIZER] or None}

    def check_params(self, step: int, abstract_params: Any) -> None:
        """One clear error listing every parameter whose path or shape differs from the target."""
        with self._reading(step):
            saved = self.manager.item_metadata(step)[STATE]
        saved = getattr(saved, "tree", saved)
        if not isinstance(saved, dict) or "params" not in saved:
            raise CheckpointError(f"{self.directory / str(step)}: no params in this checkpoint")
        have, want = _flat_shapes(saved["params"]), _flat_shapes(abstract_params)
        problems = [
            f"  {name}: checkpoint {have.get(name, 'missing')}, model {want.get(name, 'missing')}"
            for name in sorted(set(have) | set(want))
            if have.get(name) != want.get(name)
        ]
        if problems:
            raise CheckpointError(
                f"{self.directory / str(step)} holds another model shape; mismatched parameters:\n"
                + "\n".join(problems)
                + "\nuse the model config the checkpoint was trained with (its config is in "
                "the run's config.json), or start a new run_dir"
            )

    def restore(
        self,
        step: int,
        abstract_state: Any,
        state_shardings: Any,
        data_iter: Any = None,
    ) -> tuple[Any, Any]:
        """(train state on the current mesh, data iterator at the saved position or None)."""
        self.check_params(step, abstract_state.params)
        target = with_shardings(abstract_state, state_shardings)
        items = {
            STATE: ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
            )
        }
        if data_iter is not None:
            items[DATA] = grain_ckpt.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except ValueError as e:
            if data_iter is not None and "process_" in str(e):
                raise CheckpointError(
                    f"{self.directory / str(step)}: no data-iterator state for this process "
                    f"({e}); resume with the number of processes that wrote the checkpoint"
                ) from e
            raise
        return restored[STATE], restored.get(DATA) if data_iter is not None else None

    def restore_params(self, step: int, abstract_params: Any, shardings: Any) -> Any:
        """Only the params (no optimizer state is read): inference and fine-tuning."""
        self.check_params(step, abstract_params)
        return self._restore_field(step, "params", abstract_params, shardings)

    def restore_opt_state(self, step: int, abstract_opt_state: Any, shardings: Any) -> Any:
        """Only the optimizer state, of a train or RL checkpoint: `init_adam_scale`."""
        return self._restore_field(step, "opt_state", abstract_opt_state, shardings)

    def restore_host_field(self, step: int, field: str) -> Any | None:
        """One top-level field of the saved state as host arrays, shaped as saved; None when
        the checkpoint has no such field (an RL run's `proposer` in a supervised checkpoint).

        Why: a reader that takes another run's side state (RL's proposer statistics) cannot know
        its shapes before reading, since they follow that run's own config."""
        with self._reading(step):
            saved = self.manager.item_metadata(step)[STATE]
        saved = getattr(saved, "tree", saved)
        if not isinstance(saved, dict) or field not in saved:
            return None
        host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: host, saved[field])
        return jax.device_get(self._restore_field(step, field, saved[field], shardings))

    def _restore_field(self, step: int, field: str, abstract: Any, shardings: Any) -> Any:
        target = {field: with_shardings(abstract, shardings)}
        with self._reading(step):
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
                    target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                )}),
            )
        return restored[STATE][field]


def rescale_data_position(data_iter: Any, saved_batch_size: int, batch_size: int) -> None:
    """Continue a resumed run with another batch size at the same place in the shuffled order.

    Grain's state counts batches; the windows consumed so far are `next_index * saved_batch_size`,
    so the new position is that over the new batch size (rounded down: at most one batch of
    windows is seen twice, none is skipped).
    """
    state = data_iter.get_state()
    if set(state) != {"next_index"}:
        raise CheckpointError(
            f"cannot move a data iterator with state {state} to batch size {batch_size}; resume "
            f"with batch_size={saved_batch_size}"
        )
    data_iter.set_state({"next_index": state["next_index"] * saved_batch_size // batch_size})


def load_params(
    run_dir: str | Path,
    step: Step = None,
    model_cfg: GPTConfig | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(params, record) from a run's checkpoint, for inference and fine-tuning.

    `step`: None (latest), an int, or "best". `model_cfg` defaults to the checkpoint's own model
    config; a different one must have the same parameter shapes (else one CheckpointError listing
    them). The params land on `mesh` (default: every local device, replicated) by the FSDP rule
    of `minigpt_jax.sharding`, whatever mesh saved them. `record` = {step, config, tokenizer}.
    """
    ckpts = RunCheckpoints(run_dir, read_only=True)
    try:
        step = ckpts.resolve_step(step)
        record = ckpts.record(step)
        with ckpts._reading(step):  # a config edited into nonsense is damage too
            model_cfg = model_cfg or model_config_from_record(record)
        model = GPT(model_cfg)
        abstract = jax.eval_shape(
            lambda: model.init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
        )
        mesh = mesh or sharding.make_mesh()
        params = ckpts.restore_params(step, abstract, sharding.tree_shardings(abstract, mesh))
    finally:
        ckpts.close()
    return params, {**record, "model": model_cfg}
