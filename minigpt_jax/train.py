"""`python -m minigpt_jax.train --config configs/small.py [--config.key=value ...]`

The loop wires the pieces together: config -> shards -> Grain batches -> one jitted, donated train
step -> metrics. The hot path never waits on the device except every `log_every` steps, when the
metrics of the step just dispatched are read.

`train_and_evaluate` is four steps, each on one screen: `setup` (check the data, open the run's
checkpoints, build and compile), `resume` (train state and data position from the latest
checkpoint), `train_loop`, and the end of the run (`train_and_evaluate`'s `finally`: wait for the
save in flight).

A run directory with a checkpoint resumes by itself (train state and data position, see
minigpt_jax/checkpoint.py); SIGTERM or SIGINT saves a checkpoint of the step just taken and exits
(status 0 after SIGTERM, 130 after SIGINT). A signal during start-up (checks, compiling, restoring)
exits at once with status 130 (or 143 after SIGTERM): nothing has been written yet.

Exit statuses: 0 done (or stopped by SIGTERM), 2 bad input (one line naming the file or key),
3 diverged (non-finite loss or parameters; the last good checkpoint is kept), 130 interrupted.
The run directory is locked first thing (minigpt_jax/run_dir.py): a second run on it exits 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from minigpt_jax import checkpoint, input_pipeline, run_dir, sharding, shards
from minigpt_jax.config import (
    accumulation_steps,
    config_record,
    model_config,
    validate_config,
    write_run_files,
)
from minigpt_jax.errors import (
    CheckpointError,
    ConfigError,
    DivergedError,
    TokenizerError,
    exit_on_user_error,
)
from minigpt_jax.evaluate import check_eval_data, evaluate
from minigpt_jax.host_memory import hugepage_hint
from minigpt_jax.init_from import check_same_tokenizer
from minigpt_jax.loggers import Loggers, make_loggers
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.peak import device_peak_flops
from minigpt_jax.train_state import (
    create_train_state,
    flops_per_token,
    make_eval_step,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)

# The one --config flag (absl flags are global): minigpt_jax.rl parses its command line with it too.
CONFIG_FLAG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def resolve_tokenizer(cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The run's tokenizer record {spec, identity}, checked against the shards' manifest (which
    must also match the run's packing, see `check_packing`).

    `config.tokenizer=""` takes the shards' own tokenizer; naming one makes shards made with any
    other tokenizer an error, as are unfinished or incomplete data directories.
    """
    from minigpt_jax.tokenizer import load_tokenizer, tokenizer_record

    try:
        tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    except TokenizerError as e:
        raise ConfigError("tokenizer", str(e)) from None
    manifest = shards.check_manifest(cfg.data_dir, tokenizer.identity if tokenizer else None)
    check_packing(cfg, manifest)
    if tokenizer is not None:
        return tokenizer_record(cfg.tokenizer, tokenizer)
    return manifest.get("tokenizer") if manifest else None


def check_packing(cfg: ml_collections.ConfigDict, manifest: dict[str, Any] | None) -> None:
    """Windows must line up with the chunks whole documents were packed into, or they cut them."""
    packed = shards.packed_block_size(manifest)
    if packed is not None and packed != cfg.block_size:
        raise ConfigError(
            "block_size",
            f"{cfg.data_dir} packs whole documents into {packed}-token chunks; train with "
            f"--config.block_size={packed} or re-make the data with --block_size={cfg.block_size}",
        )


class StopOnSignal:
    """SIGTERM / SIGINT become a request the train loop reads after each step: save, then exit.

    The handler only sets a flag (nothing is written from inside a signal handler) and puts the
    previous handlers back, so a second Ctrl-C or SIGTERM acts at once; a kill during the final save
    still leaves the previous checkpoint intact. Installs only from the main thread (Python's rule).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    @property
    def requested(self) -> bool:
        return self.received is not None


def open_checkpoints(
    cfg: ml_collections.ConfigDict,
) -> tuple[checkpoint.RunCheckpoints, int | None]:
    """The run's checkpoints and the step to resume from (None: a fresh run).

    Refuses to start fresh over another run's checkpoints: they are never overwritten silently.
    """
    ckpts = checkpoint.RunCheckpoints(cfg.run_dir, cfg.keep_checkpoints, cfg.keep_best)
    try:
        latest = ckpts.latest_step()
        if latest is not None and not cfg.resume:
            raise CheckpointError(
                f"{ckpts.directory} already holds checkpoints (latest step {latest}) and "
                f"config.resume=False; pass a new --config.run_dir, or drop resume=False to "
                f"continue"
            )
        if latest is not None:  # damaged ones (checksums) are set aside, with a message
            latest = ckpts.latest_intact_step(set_aside=jax.process_index() == 0)
    except BaseException:
        ckpts.close()
        raise
    return ckpts, latest


@dataclasses.dataclass
class Run:
    """What `setup` builds and the loop uses: compiled steps, state, data, checkpoints."""

    cfg: ml_collections.ConfigDict
    model_cfg: GPTConfig
    mesh: jax.sharding.Mesh
    schedule: Any
    train_step: Any
    eval_step: Any
    state: Any
    data_iter: Any
    val_paths: list[Path]
    tokenizer: dict[str, Any] | None
    ckpts: checkpoint.RunCheckpoints


def check_data(cfg: ml_collections.ConfigDict) -> tuple[GPTConfig, list[Path], list[Path], Any]:
    """(model config, train shards, val shards, tokenizer record), all checked to fit the run."""
    validate_config(cfg, num_devices=jax.device_count())
    model_cfg = model_config(cfg)
    train_paths = shards.find_split(cfg.data_dir, "train")
    val_paths = shards.find_split(cfg.data_dir, "val")
    tokenizer = resolve_tokenizer(cfg)
    if tokenizer and tokenizer["vocab_size"] != model_cfg.vocab_size:
        raise ConfigError(
            "model.vocab_size",
            f"{model_cfg.vocab_size} differs from the shards' tokenizer {tokenizer['name']!r} "
            f"({tokenizer['vocab_size']} ids); set --config.model.vocab_size="
            f"{tokenizer['vocab_size']}",
        )
    if model_cfg.digit_pos_max and tokenizer:
        from minigpt_jax.digit_positions import (
            answer_mark_token_ids,
            digit_token_ids,
            division_token_ids,
            newline_token_ids,
        )
        from minigpt_jax.tokenizer import load_run_tokenizer

        run_tokenizer = load_run_tokenizer(tokenizer, cfg.data_dir)
        wanted = [("digit_ids", digit_token_ids)]
        if model_cfg.digit_pos_scheme == "coupled":
            wanted.append(("newline_ids", newline_token_ids))
        if model_cfg.left_op_ids:
            wanted += [
                ("left_op_ids", division_token_ids), ("answer_mark_ids", answer_mark_token_ids)
            ]
        for field, ids_of in wanted:
            ids, have = ids_of(run_tokenizer), getattr(model_cfg, field)
            if ids != have:
                raise ConfigError(
                    f"model.{field}",
                    f"{list(have)} are not the {field[:-4]} ids of the shards' tokenizer "
                    f"{tokenizer['name']!r} ({list(ids)}); set them with "
                    f"digit_positions.{ids_of.__name__}(tokenizer)",
                )
    check_eval_data(cfg, val_paths, model_cfg.vocab_size)  # not at the first eval, after hours
    return model_cfg, train_paths, val_paths, tokenizer


def setup(cfg: ml_collections.ConfigDict) -> Run:
    """Check, open, build and compile everything the loop needs; resume when a checkpoint exists."""
    model_cfg, train_paths, val_paths, tokenizer = check_data(cfg)
    ckpts, resume_step = open_checkpoints(cfg)
    try:
        run = _build(cfg, model_cfg, train_paths, val_paths, tokenizer, ckpts, resume_step)
    except BaseException:
        ckpts.close()  # Orbax's threads, else they outlive the error message at exit
        raise
    if jax.process_index() == 0:  # only now: a refused resume leaves the run's files as they were
        write_run_files(cfg.run_dir, cfg, tokenizer)
    return run


def _build(cfg, model_cfg, train_paths, val_paths, tokenizer, ckpts, resume_step) -> Run:
    mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
    model = GPT(model_cfg)
    schedule = make_lr_schedule(
        cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.total_steps, cfg.lr_schedule, cfg.cooldown_frac
    )
    tx = make_optimizer(
        schedule,
        cfg.weight_decay,
        cfg.grad_clip,
        b1=cfg.adam_b1,
        b2=cfg.adam_b2,
        freeze=cfg.freeze,
        optimizer=cfg.optimizer,
        muon_lr_scale=cfg.muon_lr / cfg.lr if cfg.optimizer == "muon" else 0.0,
    )
    num_micro = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, jax.device_count())
    rng = jax.random.key(cfg.seed)
    abstract_state, state_shardings, init, train_step = sharding.jit_sharded(
        lambda rng: create_train_state(model, tx, rng),
        make_train_step(model, tx, num_micro, dropout_seed=cfg.seed, loss_chunks=cfg.loss_chunks),
        rng,
        mesh,
    )
    state = None
    if resume_step is None:
        state = init(rng)
    if resume_step is None and cfg.init_from != "scratch":
        # fine-tuning: pretrained params, fresh optimizer state
        from minigpt_jax.init_from import load_init_params

        params = jax.device_put(
            load_init_params(cfg.init_from, model_cfg, tokenizer), state_shardings.params
        )
        opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
        state = state.replace(params=params, opt_state=opt_state)

    eval_step = jax.jit(
        make_eval_step(model, cfg.loss_chunks),
        in_shardings=(state_shardings.params, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    data = input_pipeline.train_dataset(
        train_paths,
        cfg.block_size,
        cfg.batch_size // jax.process_count(),
        seed=cfg.seed,
        vocab_size=model_cfg.vocab_size,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        worker_count=cfg.data_workers,
    )
    data_iter = iter(data)
    if resume_step is not None:
        state, data_iter = resume(
            ckpts, resume_step, abstract_state, state_shardings, data_iter, cfg, tokenizer
        )
    return Run(cfg, model_cfg, mesh, schedule, train_step, eval_step, state, data_iter,
               val_paths, tokenizer, ckpts)


def train_and_evaluate(cfg: ml_collections.ConfigDict, command: bool = False) -> dict[str, Any]:
    """Train as configured, holding the run directory's lock throughout; returns the last logged
    metrics record.

    `command=True` runs as `python -m minigpt_jax.train` does: it joins a multi-process job when
    the environment describes one, and a signal during start-up exits the process at once.
    """
    with run_dir.locked(cfg.run_dir) as lock:
        with ExitOnSignalDuringStartup(lock) if command else contextlib.nullcontext():
            if command:
                sharding.initialize_distributed()
            run = setup(cfg)
        try:
            return train_loop(run)
        finally:
            run.ckpts.close()  # waits for the save in flight


def start_progress(
    cfg: ml_collections.ConfigDict, start_step: int, is_main: bool
) -> tuple[Loggers, tqdm]:
    """What a loop (train's, rl's) shows from its first step: loggers, the bar, and once, on a
    CPU run that would gain from it, the huge-page malloc tip (host_memory.py)."""
    log = make_loggers(cfg, start_step, is_main)
    progress = tqdm(
        total=cfg.total_steps, initial=start_step, disable=not is_main, dynamic_ncols=True
    )
    if is_main and (hint := hugepage_hint(jax.default_backend())):
        tqdm.write(hint)
    return log, progress


def train_loop(run: Run) -> dict[str, Any]:
    """Steps from the state's step to `total_steps`: log, evaluate, checkpoint, stop on a signal."""
    cfg, mesh, ckpts = run.cfg, run.mesh, run.ckpts
    is_main = jax.process_index() == 0
    tokens_per_step = cfg.batch_size * cfg.block_size
    flops_per_step = flops_per_token(run.model_cfg, cfg.block_size) * tokens_per_step
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else device_peak_flops(cfg.compute_dtype)
    peak_total = peak * jax.device_count()

    state, data_iter = run.state, run.data_iter
    start_step = int(state.step)
    log, progress = start_progress(cfg, start_step, is_main)
    config_json, last_record = config_record(cfg), {}
    t_last, steps_since = None, 0
    with StopOnSignal() as stop:
        try:
            for step in range(start_step + 1, cfg.total_steps + 1):
                batch = sharding.global_batch(next(data_iter), mesh)
                state, metrics = run.train_step(state, batch)
                steps_since += 1
                if t_last is None:  # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    t_last, steps_since = time.perf_counter(), 0
                progress.update(1)

                is_last = step == cfg.total_steps
                do_eval = is_last or (cfg.eval_every and step % cfg.eval_every == 0)
                record = None
                if do_eval or step % cfg.log_every == 0:
                    step_metrics = _read_metrics(metrics, step, ckpts)  # waits for the device
                    now = time.perf_counter()
                    tokens_per_s = (
                        steps_since * tokens_per_step / (now - t_last) if steps_since else 0.0
                    )
                    record = {
                        "step": step,
                        **step_metrics,
                        "lr": float(run.schedule(step - 1)),
                        "tokens_per_s": tokens_per_s,
                        "mfu": tokens_per_s / tokens_per_step * flops_per_step / peak_total,
                        # this process's CPU time so far, every thread (compiles included):
                        # how runs compare at equal CPU budgets on a shared machine
                        "cpu_minutes": time.process_time() / 60,
                    }
                    if do_eval:
                        try:
                            record["val_loss"] = evaluate(
                                run.eval_step, state.params, cfg, run.val_paths,
                                run.model_cfg.vocab_size, mesh,
                            )
                        except Exception:  # keep the steps trained so far, then report
                            ckpts.save(step, state, data_iter, config_json, run.tokenizer,
                                       loss=metrics["loss"])
                            tqdm.write(f"evaluation failed: saved step {step} to {ckpts.directory}")
                            raise
                    # Until the next record everything counts (data, logging, saves) but the
                    # evaluation, which trains no tokens.
                    t_last = time.perf_counter() if do_eval else now
                    log.write(step, record)
                    _show(progress, record, is_main)
                    last_record = record
                    steps_since = 0

                # One process's signal alone would hang the others inside a collective save:
                # multi-host jobs stop at JAX's preemption sync point, which all hosts agree on.
                stopping = (
                    stop.requested
                    if jax.process_count() == 1
                    else ckpts.manager.reached_preemption(step)
                )
                if (
                    is_last
                    or stopping
                    or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                ):
                    val_loss = record.get("val_loss") if record else None
                    ckpts.save(step, state, data_iter, config_json, run.tokenizer, val_loss,
                               loss=metrics["loss"])
                if stopping:
                    tqdm.write(
                        f"{stop.received or 'preemption'}: saved step {step} to {ckpts.directory}; "
                        f"run the same command to resume"
                    )
                    last_record = {**last_record, "stopped_at": step, "signal": stop.received}
                    break
        finally:
            log.close()
            progress.close()
    return last_record


def resume(ckpts, step, abstract_state, state_shardings, data_iter, cfg, tokenizer=None):
    """Train state and data position from `step`; a changed batch size keeps the data order.

    Refuses shards made with another tokenizer than the checkpoint's, even of the same size."""
    saved = ckpts.record(step)
    where = str(ckpts.directory / str(step))
    check_same_tokenizer(saved["tokenizer"], tokenizer, "data_dir", where)
    saved_cfg = saved["config"]
    same_data = all(saved_cfg.get(k) == cfg[k] for k in ("block_size", "seed"))
    state, restored_iter = ckpts.restore(
        step, abstract_state, state_shardings, data_iter if same_data else None
    )
    if not same_data:
        tqdm.write("block_size or seed changed since the checkpoint: the data order starts afresh")
    else:
        data_iter = restored_iter
        if saved_cfg.get("batch_size") != cfg.batch_size:
            checkpoint.rescale_data_position(data_iter, saved_cfg["batch_size"], cfg.batch_size)
    if jax.process_index() == 0:
        tqdm.write(f"resuming from step {step} ({ckpts.directory / str(step)})")
        if step >= cfg.total_steps:
            tqdm.write(
                f"the run is complete (config.total_steps={cfg.total_steps}); raise "
                f"--config.total_steps to train further"
            )
    return state, data_iter


def _read_metrics(metrics, step: int, ckpts: checkpoint.RunCheckpoints) -> dict[str, float]:
    loss, grad_norm = (float(x) for x in jax.device_get((metrics["loss"], metrics["grad_norm"])))
    if not math.isfinite(loss):
        ckpts.wait()  # the save in flight (of finite params: see RunCheckpoints.save) completes
        last = ckpts.latest_step()
        kept = f"step {last} ({ckpts.directory / str(last)})" if last is not None else "none"
        raise DivergedError(
            f"train loss is {loss} at step {step}; the last good checkpoint is {kept}. Lower "
            f"config.lr, raise config.warmup_steps or lower config.grad_clip, or check the data"
        )
    return {"train_loss": loss, "grad_norm": grad_norm}


def _show(progress, record: dict[str, Any], is_main: bool) -> None:
    progress.set_postfix(
        loss=f"{record['train_loss']:.4f}",
        **({"val": f"{record['val_loss']:.4f}"} if "val_loss" in record else {}),
    )
    if is_main:
        fields = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        tqdm.write(" ".join(fields))


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing with one clear line per mistake (unknown key, bad value, no file); exit 2."""
    try:
        rest = flags.FLAGS(argv)
        if CONFIG_FLAG.value is None:
            _fail("--config is required, e.g. --config configs/small.py")
        CONFIG_FLAG.value.keys()  # a config file that failed to load raises its OSError here
        return rest
    except SyntaxError as e:
        _fail(f"{e.filename}:{e.lineno}: syntax error in the config file ({e.msg})")
    except (flags.Error, AttributeError, KeyError) as e:
        text = str(e).replace("\\n", " ").strip("'\"")
        _fail(f"{text} (see minigpt_jax/config.py for every key)")
    except OSError as e:
        _fail(f"--config could not be loaded: {str(e).splitlines()[-1].strip()}")
    return []


class ExitOnSignalDuringStartup:
    """SIGINT/SIGTERM while checking, compiling or restoring: one line, then `os._exit`.

    A KeyboardInterrupt unwinding through XLA's compiler and Orbax's threads ended in a segfault at
    interpreter exit; nothing has been written yet, so the process leaves at once (releasing the
    run directory's lock first). The handler runs between Python bytecodes, so a compile in
    progress finishes before it does. The train loop installs its own save-then-stop handlers.
    """

    def __init__(self, lock: run_dir.RunDirLock):
        self.lock, self._previous = lock, {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        name = signal.Signals(signum).name
        print(f"{name} during start-up: stopped before training; nothing was written",
              file=sys.stderr, flush=True)
        self.lock.release()
        os._exit(128 + signum)

    def __enter__(self) -> ExitOnSignalDuringStartup:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in StopOnSignal.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing out of the training log
    try:
        with exit_on_user_error(sharding.DistributedError):
            record = train_and_evaluate(CONFIG_FLAG.value, command=True)
    except KeyboardInterrupt:  # a second Ctrl-C, during the final save
        print("interrupted (SIGINT); the last committed checkpoint is intact", file=sys.stderr)
        sys.exit(130)
    if record.get("signal") == "SIGINT":
        sys.exit(130)  # the shell's convention for Ctrl-C; SIGTERM (preemption) exits 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
