"""`python -m minigpt_jax.rl --config configs/arithmetic_rl.py`: RL with verifiable rewards.

Each step: the proposer (minigpt_jax/curriculum.py) picks `prompts_per_step` problems of the task
(minigpt_jax/tasks), the KV-cache sampler (minigpt_jax/generate.py, one compiled decode loop)
writes `group_size` completions of each, the task scores them, and one policy-gradient step
(minigpt_jax/policy_gradient.py) moves the policy toward the samples that beat their group's mean.
The step runs through the same optimizer chain, shardings and donation as supervised training.

Logged per step: mean reward, pass@1 and pass@G on the batch, completion length, KL to the
initial policy (when `kl_coef` > 0), sampled tokens/s; every `eval_every` steps the greedy
accuracy on held-out problems, per cell and overall. Checkpoints hold the train state and the
proposer's statistics; rollouts draw from (seed, step), so a resumed run continues exactly as an
uninterrupted one. The run directory is locked as in training; SIGTERM/SIGINT save and stop.
Checkpoints load like any run's (`checkpoint.load_params`, `generate`, `eval_arithmetic`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging
from tqdm import tqdm

from minigpt_jax import run_dir, sharding
from minigpt_jax.config import config_record, model_config, validate_config, write_run_files
from minigpt_jax.curriculum import PROPOSER_INITS, PROPOSERS, Proposer
from minigpt_jax.errors import ConfigError, UserError, exit_on_user_error
from minigpt_jax.generate import (
    bucket_size,
    max_prompt_tokens,
    sample,
    sample_growing,
    sample_in_batches,
)
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.policy_gradient import (
    drop_rows_without_signal,
    group_advantages,
    line_credit,
    make_logprob_fn,
    make_pg_step,
    rollout_batch,
    token_lines,
)
from minigpt_jax.tasks import RLTask, load_task, parse_cell_names
from minigpt_jax.train import (
    CONFIG_FLAG,
    ExitOnSignalDuringStartup,
    StopOnSignal,
    open_checkpoints,
    parse_flags,
    resolve_tokenizer,
    start_progress,
)
from minigpt_jax.train_state import (
    TrainState,
    create_train_state,
    make_lr_schedule,
    make_optimizer,
)

EVAL_BATCH = 128  # rows per greedy decode call in the held-out evaluation (one compiled shape)
ROLLOUT_MODES = ("sample", "greedy_branch")


class RLState(flax.struct.PyTreeNode):
    """What an RL checkpoint holds: the train state's fields plus the proposer's statistics."""

    step: jax.Array
    params: Any
    opt_state: Any
    proposer: dict[str, jax.Array]


def validate_rl_config(cfg: ml_collections.ConfigDict) -> None:
    for key in ("prompts_per_step", "group_size", "max_new_tokens", "eval_per_cell"):
        if cfg[key] <= 0:
            raise ConfigError(key, f"must be positive, got {cfg[key]}")
    if cfg.rollout_first_tokens < 0:
        raise ConfigError("rollout_first_tokens",
                          f"{cfg.rollout_first_tokens}: use 0 (one pass) or a positive room")
    if cfg.rollout_mode not in ROLLOUT_MODES:
        raise ConfigError("rollout_mode",
                          f"{cfg.rollout_mode!r}: use one of {', '.join(ROLLOUT_MODES)}")
    if cfg.rollout_mode == "greedy_branch":
        if not 0 < cfg.branch_tokens <= cfg.block_size:
            raise ConfigError("branch_tokens", f"{cfg.branch_tokens}: room for one line, "
                              f"between 1 and the context ({cfg.block_size})")
        for key, default in (("line_credit", 0.0), ("solved_credit", 0.0),
                             ("outcome_credit", 1.0)):
            if cfg[key] != default:
                raise ConfigError(key, f"{cfg[key]} with rollout_mode='greedy_branch', whose "
                                  f"reward is the resampled line's alone: leave it at {default}")
    if cfg.group_size < 2:
        raise ConfigError("group_size", f"{cfg.group_size}: a group baseline needs >= 2 samples")
    if not 0 < cfg.temperature < float("inf"):
        raise ConfigError("temperature", f"{cfg.temperature}: sample at a finite T > 0")
    for key in ("line_credit", "outcome_credit", "solved_credit", "negative_weight"):
        if not 0 <= cfg[key] < float("inf"):
            raise ConfigError(key, f"{cfg[key]}: use a finite weight >= 0")
    if not (cfg.outcome_credit or cfg.line_credit or cfg.solved_credit):
        raise ConfigError(
            "outcome_credit", "0 with line_credit and solved_credit 0: every advantage would be 0"
        )
    if cfg.kl_coef < 0:
        raise ConfigError("kl_coef", f"{cfg.kl_coef} is negative; use 0 (off) or more")
    if cfg.kl_coef and cfg.init_from == "scratch":
        raise ConfigError("kl_coef", "a KL penalty needs a reference policy: set init_from")
    if cfg.init_adam_scale and not cfg.init_from.startswith("checkpoint:"):
        raise ConfigError("init_adam_scale", "needs init_from=checkpoint:<run_dir> to read it from")
    if cfg.init_adam_scale and cfg.optimizer != "adamw":
        raise ConfigError("init_adam_scale", f"needs optimizer adamw, not {cfg.optimizer!r}")
    if cfg.proposer not in PROPOSERS:
        raise ConfigError("proposer", f"{cfg.proposer!r}: use one of {', '.join(PROPOSERS)}")
    if cfg.proposer_init not in PROPOSER_INITS:
        raise ConfigError("proposer_init",
                          f"{cfg.proposer_init!r}: use one of {', '.join(PROPOSER_INITS)}")
    if cfg.proposer_init == "init_from" and not cfg.init_from.startswith("checkpoint:"):
        raise ConfigError("proposer_init", "'init_from' reads the statistics of an RL checkpoint: "
                          "set init_from=checkpoint:<rl run_dir>, or proposer_init='prior'")
    if not 0 <= cfg.proposer_unlock <= 1:
        raise ConfigError("proposer_unlock", f"{cfg.proposer_unlock} is not in [0, 1]")
    if cfg.proposer_cells.strip() and not parse_cell_names(cfg.proposer_cells):
        raise ConfigError("proposer_cells", f"{cfg.proposer_cells!r} names no cell; "
                          "use names such as 'add 19,add 20', or '' for every cell")
    if parse_cell_names(cfg.proposer_cells) and cfg.proposer == "mixture":
        raise ConfigError("proposer_cells", "proposer='mixture' draws the data's own mixture, "
                          "not named cells: set proposer to 'uniform' or 'frontier'")
    rows = cfg.prompts_per_step * cfg.group_size
    if rows % jax.device_count():
        raise ConfigError(
            "prompts_per_step",
            f"{rows} rollouts per step cannot be split over {jax.device_count()} devices",
        )


@dataclasses.dataclass
class RLRun:
    cfg: ml_collections.ConfigDict
    model_cfg: GPTConfig
    mesh: jax.sharding.Mesh
    schedule: Any
    pg_step: Any
    ref_logprobs: Any  # jitted (ref_params, batch) -> log pi_ref, or None when kl_coef is 0
    ref_params: Any
    state: Any
    task: RLTask
    proposer: Proposer
    tokenizer: Any  # the TextTokenizer
    tokenizer_record: dict[str, Any] | None
    ckpts: Any
    newlines: dict[int, int] = dataclasses.field(default_factory=dict)  # token id -> its "\n"s


def setup(cfg: ml_collections.ConfigDict, task: RLTask | None = None) -> RLRun:
    """Check everything, load the initial policy, resume when the run has a checkpoint."""
    from minigpt_jax.tokenizer import load_run_tokenizer

    validate_config(cfg, num_devices=jax.device_count())
    validate_rl_config(cfg)
    model_cfg = model_config(cfg)
    record = resolve_tokenizer(cfg)
    tok = load_run_tokenizer(record, cfg.data_dir)
    if task is None:
        task = load_task(cfg.task, cfg.data_dir, cfg.task_options.to_dict())
    proposer = Proposer(task, cfg.proposer, unlock=cfg.proposer_unlock,
                        cells=parse_cell_names(cfg.proposer_cells))
    if cfg.max_new_tokens > model_cfg.block_size:
        raise ConfigError("max_new_tokens", f"more than the context ({model_cfg.block_size})")
    check_completion_budget(task, tok, cfg.max_new_tokens)
    ckpts, resume_step = open_checkpoints(cfg)
    try:
        cfg = _with_start_policy(cfg, ckpts, resume_step)
        if resume_step is None and cfg.proposer_init == "init_from":
            _carry_proposer_stats(cfg, task, proposer)  # a resume restores its own
        run = _build(cfg, model_cfg, task, proposer, tok, record, ckpts, resume_step)
    except BaseException:
        ckpts.close()
        raise
    if jax.process_index() == 0:
        write_run_files(cfg.run_dir, cfg, record)
    return run


def check_completion_budget(task: RLTask, tok: Any, max_new_tokens: int) -> None:
    """Refuse a `max_new_tokens` that cuts short a reference solution of a cell the curriculum may
    draw: such a cell's samples end before their answer and score 0 whatever their steps, so RL
    could never learn it, and nothing else would say why."""
    reference = getattr(task, "reference_solution", None)
    if reference is None:
        return
    rng = random.Random(0)
    cells = list(task.cells())
    needs = [  # with the <eot>; a few draws, since a cell's answers may differ in length
        max(len(tok.encode(reference(task.problem(rng, c)))) + 1 for _ in range(8)) for c in cells
    ]
    need = max(needs)
    if need > max_new_tokens:
        cell = cells[needs.index(need)]
        raise ConfigError(
            "max_new_tokens",
            f"{max_new_tokens} cuts short the worked solution of cell "
            f"{task.cell_name(cell)!r} ({need} tokens with <eot>), which would score 0 "
            f"whatever its steps; set --config.max_new_tokens={need} or more, or let "
            f"the curriculum reach fewer cells (arithmetic: task_options.max_digits)",
        )


def _with_start_policy(
    cfg: ml_collections.ConfigDict, ckpts: Any, resume_step: int | None
) -> ml_collections.ConfigDict:
    """`cfg` (a copy) whose `init_from` names the start policy's step, as config.json and every
    checkpoint record it.

    Why: the start is read more than once (the params; AdamW's moments with `init_adam_scale`;
    the KL reference again at every resume), while the source run may still be saving new
    checkpoints. A fresh run resolves "latest" or "best" once; a resumed run reads the step its
    own first run recorded, not whatever is latest in the source now.
    """
    from minigpt_jax.init_from import pin_step

    if cfg.init_from == "scratch" or (resume_step is not None and not cfg.kl_coef):
        return cfg
    if resume_step is None:
        start = pin_step(cfg.init_from)
    else:
        start = (ckpts.record(resume_step)["config"] or {}).get("init_from") or cfg.init_from
    cfg = cfg.copy_and_resolve_references()
    cfg.init_from = start
    return cfg


def _build(cfg, model_cfg, task, proposer, tok, record, ckpts, resume_step) -> RLRun:
    mesh = sharding.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
    model = GPT(model_cfg)
    schedule = make_lr_schedule(
        cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.total_steps, cfg.lr_schedule, cfg.cooldown_frac
    )
    tx = make_optimizer(
        schedule, cfg.weight_decay, cfg.grad_clip, b1=cfg.adam_b1, b2=cfg.adam_b2,
        freeze=cfg.freeze, optimizer=cfg.optimizer,
        muon_lr_scale=cfg.muon_lr / cfg.lr if cfg.optimizer == "muon" else 0.0,
    )
    rng = jax.random.key(cfg.seed)
    abstract_state, shardings, init, pg_step = sharding.jit_sharded(
        lambda rng: create_train_state(model, tx, rng),
        make_pg_step(model, tx, cfg.temperature, cfg.kl_coef),
        rng,
        mesh,
    )
    # The starting policy is read when it is the start (a fresh run) or the KL's reference.
    ref_params = None
    if cfg.init_from != "scratch" and (resume_step is None or cfg.kl_coef):
        from minigpt_jax.init_from import load_init_params

        ref_params = jax.device_put(
            load_init_params(cfg.init_from, model_cfg, record), shardings.params
        )
    ref_logprobs = jax.jit(make_logprob_fn(model, cfg.temperature)) if cfg.kl_coef else None
    if resume_step is None:
        state = init(rng)
        if ref_params is not None:
            params = jax.tree.map(jnp.copy, ref_params)  # the state is donated; the ref stays
            opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
            if cfg.init_adam_scale:
                from minigpt_jax.init_from import adam_scale_from

                opt_state = adam_scale_from(
                    cfg.init_from, opt_state, abstract_state.opt_state, shardings.opt_state
                )
            state = state.replace(params=params, opt_state=opt_state)
    else:
        abstract = RLState(
            step=abstract_state.step,
            params=abstract_state.params,
            opt_state=abstract_state.opt_state,
            proposer={k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                      for k, v in proposer.stats.items()},
        )
        saved = ckpts.record(resume_step)
        from minigpt_jax.init_from import check_same_tokenizer

        check_same_tokenizer(saved["tokenizer"], record, "data_dir",
                             str(ckpts.directory / str(resume_step)))
        restored, _ = ckpts.restore(resume_step, abstract, sharding.tree_shardings(abstract, mesh))
        state = TrainState(
            step=restored.step, params=restored.params, opt_state=restored.opt_state
        )
        proposer.stats = {k: np.asarray(v, np.float32) for k, v in restored.proposer.items()}
        tqdm.write(f"resuming from step {resume_step} ({ckpts.directory / str(resume_step)})")
    if not cfg.kl_coef:
        ref_params = None  # only the KL reads it after the start
    return RLRun(cfg, model_cfg, mesh, schedule, pg_step, ref_logprobs, ref_params, state, task,
                 proposer, tok, record, ckpts)


def _carry_proposer_stats(cfg: ml_collections.ConfigDict, task: RLTask, proposer: Proposer) -> None:
    """Start `proposer` from the statistics of the (pinned) init_from RL checkpoint, by cell name.

    A checkpoint holds the statistics as arrays in its run's cell order, and the cells follow
    from that run's task, data_dir and task_options (its config): the names come from the run's
    own task when those are the same, else from the task they build. (A source data_dir since
    rewritten with other lengths but as many cells would map wrongly; the counts decay within a
    few dozen steps.)"""
    from minigpt_jax.init_from import proposer_stats_from

    source_cfg, stats = proposer_stats_from(cfg.init_from)
    source_data = source_cfg.get("data_dir") or ""
    same = (
        source_cfg.get("task") == cfg.task
        and Path(source_data).resolve() == Path(cfg.data_dir).resolve()
        and source_cfg.get("task_options") == cfg.task_options.to_dict()
    )
    try:
        source_task = task if same else load_task(
            source_cfg.get("task", ""), source_data, source_cfg.get("task_options"))
    except (UserError, TypeError) as e:
        raise ConfigError(
            "proposer_init",
            f"{cfg.init_from}: its cells come from its task {source_cfg.get('task')!r}, data_dir "
            f"{source_data!r} and task_options, which no longer build ({e}); set "
            f"proposer_init='prior'",
        ) from e
    names = [source_task.cell_name(c) for c in source_task.cells()]
    if len(names) != len(stats["attempts"]):
        raise ConfigError(
            "proposer_init",
            f"{cfg.init_from}: its statistics count {len(stats['attempts'])} cells, but its task "
            f"(task={source_cfg.get('task')!r}, data_dir={source_data!r}) now has "
            f"{len(names)}; set proposer_init='prior'",
        )
    matched = proposer.carry(names, stats)
    if not matched:
        raise ConfigError(
            "proposer_init",
            f"{cfg.init_from}: none of its cells ({', '.join(names[:4])}, ...) is a cell of this "
            f"run's task; set proposer_init='prior'",
        )
    tqdm.write(f"proposer: the statistics of {matched} cells from {cfg.init_from}, "
               f"{len(proposer.cells) - matched} at the prior")


def step_seed(seed: int, step: int) -> int:
    """The seed of `step`'s problems and samples: a function of (seed, step) alone, so a resumed
    run redraws exactly what an uninterrupted one would."""
    return seed * 1_000_003 + step


def rollouts(run: RLRun, params: Any, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Sample, score and assemble one step's batch; returns (batch arrays, metrics)."""
    cfg, task, tok = run.cfg, run.task, run.tokenizer
    rng = random.Random(step_seed(cfg.seed, step))
    cells = run.proposer.draw(rng, cfg.prompts_per_step)
    problems = [task.problem(rng, cell) for cell in cells]
    fits = max_prompt_tokens(run.model_cfg.block_size, cfg.max_new_tokens)
    prompts = [[tok.eot_id, *tok.encode(task.prompt(p))][-fits:] for p in problems]
    if cfg.rollout_mode == "greedy_branch":
        return _branch_rollouts(run, params, step, problems, prompts)
    rows = [p for p in prompts for _ in range(cfg.group_size)]
    t0 = time.perf_counter()
    outs = sample_growing(run.model_cfg, params, rows, cfg.max_new_tokens,
                          first_tokens=cfg.rollout_first_tokens, eot_id=tok.eot_id,
                          temperature=cfg.temperature, seed=step_seed(cfg.seed, step))
    sample_seconds = time.perf_counter() - t0
    texts = [tok.decode(o) for o in outs]
    G = cfg.group_size
    rewards_PG = np.array(
        [[task.reward(p, texts[i * G + g]) for g in range(G)] for i, p in enumerate(problems)],
        np.float32,
    )
    solved_PG = np.array(
        [[task.solved(p, texts[i * G + g]) for g in range(G)] for i, p in enumerate(problems)],
        np.float32,
    )
    run.proposer.update([task.cell_of(p) for p in problems], solved_PG.mean(axis=1))
    adv = cfg.outcome_credit * group_advantages(rewards_PG, cfg.scale_advantages).reshape(-1)
    ended = [len(o) < cfg.max_new_tokens for o in outs]
    metrics = {}
    if cfg.negative_weight != 1.0:
        adv = np.where(adv < 0, cfg.negative_weight * adv, adv)
    # Rejection-sampling fine-tuning on the samples the verifier accepts: unlike the group
    # advantage it does not vanish where every sample is right, so it holds cells the policy
    # already solves. Verified, not merely answered right: a right answer reached through wrong
    # steps, reinforced, would teach the wrong steps.
    if cfg.solved_credit:
        accepted = [task.verify(p, texts[i * G + g]) for i, p in enumerate(problems)
                    for g in range(G)]
        adv = adv + cfg.solved_credit * np.asarray(accepted, np.float32)
    if cfg.line_credit:
        adv, metrics["right_lines"] = _with_line_credit(
            run, problems, texts, outs, ended, adv, cfg.line_credit
        )
    chosen = [len(o) + e for o, e in zip(outs, ended, strict=True)]
    new_tokens, truncated = sum(chosen), 1.0 - float(np.mean(ended))
    if cfg.skip_no_signal and not cfg.kl_coef:
        rows, outs, ended, adv, metrics["signal_rows"] = drop_rows_without_signal(
            rows, outs, ended, adv, tok.eot_id, jax.device_count()
        )
    batch = _to_batch(run, rows, outs, ended, adv)
    metrics = {
        **metrics,
        "reward": float(rewards_PG.mean()),
        "pass@1": float(solved_PG.mean()),
        f"pass@{G}": float((solved_PG.max(axis=1) > 0).mean()),
        "response_tokens": new_tokens / len(chosen),
        "truncated": truncated,
        "sampled_tokens_per_s": new_tokens / max(sample_seconds, 1e-9),
    }
    return batch, metrics


def _to_batch(run: RLRun, rows, outs, ended, adv) -> dict[str, np.ndarray]:
    """`rollout_batch` at the smallest bucketed length that holds every row."""
    longest = max(len(r) + len(o) + 1 for r, o in zip(rows, outs, strict=True))
    length = min(bucket_size(longest - 1, minimum=32), run.model_cfg.block_size)
    return rollout_batch(rows, outs, ended, adv, run.tokenizer.eot_id, length)


def _newline_counts(run: RLRun, outs: list[list[int]]) -> dict[int, int]:
    """The newlines each sampled token writes, cached on the run (decoded once per token id)."""
    for t in {t for o in outs for t in o} - run.newlines.keys():
        run.newlines[t] = run.tokenizer.decode([t]).count("\n")
    return run.newlines


def _with_line_credit(run, problems, texts, outs, ended, adv, weight):
    """Each sample's advantage, per chosen token: its group advantage plus `weight` times the
    per-line process advantage (`policy_gradient.line_credit`). Also returns the mean number of
    right lines, for the log."""
    G = run.cfg.group_size
    newlines = _newline_counts(run, outs)
    right = [run.task.right_lines(p, texts[i * G + g])
             for i, p in enumerate(problems) for g in range(G)]
    per_token = []
    for i in range(len(problems)):
        group = range(i * G, (i + 1) * G)
        lines = [token_lines([newlines[t] for t in outs[k]], ended[k]) for k in group]
        credit = line_credit([right[k] for k in group], lines)
        for k, c in zip(group, credit, strict=True):
            c = np.where(c < 0, run.cfg.negative_weight * c, c)
            per_token.append(adv[k] + weight * c)
    return per_token, float(np.mean(right))


def _branch_rollouts(run, params, step, problems, prompts):
    """`rollout_mode="greedy_branch"`: one step's batch from the greedy policy's own mistakes.

    Why: evaluation is greedy, and on a start whose errors repeat across samples a whole sampled
    solution rarely finds the answer greedy misses (issue 18, ÷ near 50%: 16 samples found it for
    under half of greedy's failures), while one resampled line at greedy's first wrong line is
    right for most of them (BENCHMARKS.md, post-training, session 39). Each failure's group is
    `group_size` samples of that line (at most `branch_tokens` tokens, up to its newline) from the
    right lines before it: the task's line checker scores each (1 when the line is right), the
    group mean is the baseline, and only the line's tokens are chosen. Problems greedy solves
    carry no signal.
    """
    cfg, task, tok = run.cfg, run.task, run.tokenizer
    seed, G = step_seed(cfg.seed, step), cfg.group_size
    t0 = time.perf_counter()
    greedy = sample_growing(run.model_cfg, params, prompts, cfg.max_new_tokens,
                            first_tokens=cfg.rollout_first_tokens, eot_id=tok.eot_id,
                            temperature=0.0, seed=seed)
    texts = [tok.decode(o) for o in greedy]
    solved = np.array([task.solved(p, t) for p, t in zip(problems, texts, strict=True)],
                      np.float32)
    run.proposer.update([task.cell_of(p) for p in problems], solved)
    states = [(p, *failure_state(task, p, t))
              for p, t, ok in zip(problems, texts, solved, strict=True) if not ok]
    fits = max_prompt_tokens(run.model_cfg.block_size, cfg.branch_tokens)
    rows = [[tok.eot_id, *tok.encode(task.prompt(p) + prefix)][-fits:]
            for p, prefix, _ in states for _ in range(G)]
    outs = sample(run.model_cfg, params, rows, cfg.branch_tokens, temperature=cfg.temperature,
                  seed=seed, eot_id=tok.eot_id) if rows else []
    sample_seconds = time.perf_counter() - t0
    newlines = _newline_counts(run, outs)
    lines = [first_line(o, [newlines[t] for t in o], cfg.branch_tokens) for o in outs]
    rewards_FG = np.array(
        [[line_reward(task, p, prefix, right, tok.decode(lines[i * G + g][0]), lines[i * G + g][1])
          for g in range(G)] for i, (p, prefix, right) in enumerate(states)],
        np.float32,
    ).reshape(len(states), G)
    adv = group_advantages(rewards_FG, cfg.scale_advantages).reshape(-1)
    if cfg.negative_weight != 1.0:
        adv = np.where(adv < 0, cfg.negative_weight * adv, adv)
    chosen, ended, adv = [x[0] for x in lines], [x[1] for x in lines], list(adv)
    granule = jax.device_count()
    metrics = {}
    if rows and cfg.skip_no_signal and not cfg.kl_coef:
        rows, chosen, ended, adv, metrics["signal_rows"] = drop_rows_without_signal(
            rows, chosen, ended, adv, tok.eot_id, granule
        )
    pad = -len(rows) % granule or (granule if not rows else 0)  # no-op rows: nothing chosen
    rows, chosen = [*rows, *[[tok.eot_id]] * pad], [*chosen, *[[]] * pad]
    ended, adv = [*ended, *[False] * pad], [*adv, *[0.0] * pad]
    batch = _to_batch(run, rows, chosen, ended, adv)
    greedy_ended = [len(o) < cfg.max_new_tokens for o in greedy]
    greedy_chosen = [len(o) + e for o, e in zip(greedy, greedy_ended, strict=True)]
    new_tokens = sum(len(o) for o in greedy) + sum(len(o) for o in outs)
    metrics = {
        **metrics,
        "reward": float(np.mean([task.reward(p, t) for p, t in zip(problems, texts, strict=True)])),
        "pass@1": float(solved.mean()),  # greedy's, on this step's problems
        "branch_states": len(states) / len(problems),
        "response_tokens": float(np.mean(greedy_chosen)),
        "truncated": 1.0 - float(np.mean(greedy_ended)),
        "sampled_tokens_per_s": new_tokens / max(sample_seconds, 1e-9),
    }
    if states:
        metrics["branch_right"] = float(rewards_FG.mean())
        metrics["branch_found"] = float((rewards_FG.max(axis=1) > 0).mean())
    return batch, metrics


def failure_state(task: RLTask, problem: Any, completion: str) -> tuple[str, int]:
    """(the completion's text through its last right line, how many lines that is): where a
    failed solution first went wrong. Only lines the completion ended with a newline count, so
    the state is one the policy wrote, not one with a line break it never chose."""
    right = min(task.right_lines(problem, completion), completion.count("\n"))
    return "".join(f"{line}\n" for line in completion.split("\n")[:right]), right


def line_reward(task: RLTask, problem: Any, prefix: str, right: int, line: str,
                ended: bool) -> float:
    """1.0 when a resampled `line` after `prefix` (whose first `right` lines are right) is right.
    A line that ends the solution (`ended`: end-of-text before any newline) is right only when
    the solution it ends is solved: a right step line followed by end-of-text stops halfway, and
    rewarding it would teach stopping."""
    if ended:
        return float(task.solved(problem, prefix + line))
    return float(task.right_lines(problem, prefix + line) > right)


def first_line(tokens: list[int], newlines: list[int], room: int) -> tuple[list[int], bool]:
    """A resampled line from the sampler's tokens (cut before any end-of-text), given each
    token's newline count: (its tokens through the first that writes a newline, and whether it
    ended with end-of-text instead, which is then a chosen token too). A line still going at
    `room` tokens is what it is; the task's checker judges it as written."""
    for i, n in enumerate(newlines):
        if n:
            return tokens[: i + 1], False
    return tokens, len(tokens) < room  # the sampler stopped before the room: end-of-text


def greedy_accuracy(run: RLRun, params: Any) -> dict[str, float]:
    """Greedy exact-answer accuracy on up to `eval_per_cell` held-out problems per cell."""
    cfg, task, tok = run.cfg, run.task, run.tokenizer
    by_cell: dict[Any, list[Any]] = defaultdict(list)
    for p in task.heldout():
        cell = task.cell_of(p)
        if len(by_cell[cell]) < cfg.eval_per_cell:
            by_cell[cell].append(p)
    problems = [p for ps in by_cell.values() for p in ps]
    prompts = [[tok.eot_id, *tok.encode(task.prompt(p))] for p in problems]

    def greedy(rows, max_new, temperature, seed):  # greedy: growing room gives one pass's tokens
        return sample_growing(run.model_cfg, params, rows, max_new, eot_id=tok.eot_id,
                              first_tokens=cfg.rollout_first_tokens, temperature=temperature,
                              seed=seed)

    outs = sample_in_batches(greedy, prompts, cfg.max_new_tokens, 0.0, 0, EVAL_BATCH)
    texts = [tok.decode(o) for o in outs]
    hits = [task.solved(p, t) for p, t in zip(problems, texts, strict=True)]
    out = {"heldout_greedy": float(np.mean(hits))}
    i = 0
    for cell, ps in by_cell.items():
        out[f"greedy/{task.cell_name(cell)}"] = float(np.mean(hits[i : i + len(ps)]))
        i += len(ps)
    return out


def _save(run: RLRun, state: Any, step: int, config_json: dict[str, Any], loss: Any) -> None:
    rl_state = RLState(
        step=state.step, params=state.params, opt_state=state.opt_state,
        proposer={k: jnp.asarray(v) for k, v in run.proposer.stats.items()},
    )
    run.ckpts.save(step, rl_state, None, config_json, run.tokenizer_record, loss=loss)


def rl_loop(run: RLRun) -> dict[str, Any]:
    """Steps from the state's step to `total_steps`: rollouts, update, log, evaluate, save."""
    cfg = run.cfg
    is_main = jax.process_index() == 0
    state = run.state
    start_step = int(state.step)
    log, progress = start_progress(cfg, start_step, is_main)
    config_json, last_record = config_record(cfg), {}
    t_start = time.perf_counter()
    with StopOnSignal() as stop:
        try:
            if start_step == 0 and cfg.eval_every:
                last_record = {"step": 0, **greedy_accuracy(run, state.params)}
                log.write(0, last_record)
                tqdm.write(f"step 0 heldout_greedy {last_record['heldout_greedy']:.4f}")
            for step in range(start_step + 1, cfg.total_steps + 1):
                t0 = time.perf_counter()
                batch, record = rollouts(run, state.params, step - 1)
                if run.ref_logprobs is not None:
                    batch["ref_logp"] = np.asarray(run.ref_logprobs(run.ref_params, batch))
                state, metrics = run.pg_step(state, sharding.global_batch(batch, run.mesh))
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not np.isfinite(metrics["loss"]):
                    from minigpt_jax.errors import DivergedError

                    raise DivergedError(
                        f"policy-gradient loss is {metrics['loss']} at step {step}; lower "
                        f"config.lr or raise config.grad_clip's strictness, then resume"
                    )
                record = {"step": step, **record, **metrics, "lr": float(run.schedule(step - 1)),
                          "step_seconds": time.perf_counter() - t0,
                          "minutes": (time.perf_counter() - t_start) / 60,
                          "cpu_minutes": time.process_time() / 60}
                is_last = step == cfg.total_steps
                if is_last or (cfg.eval_every and step % cfg.eval_every == 0):
                    record.update(greedy_accuracy(run, state.params))
                    record.update(run.proposer.summary())
                progress.update(1)
                if is_last or step % cfg.log_every == 0 or "heldout_greedy" in record:
                    log.write(step, record)
                    _show(progress, record, is_main)
                last_record = record
                stopping = stop.requested
                if is_last or stopping or (cfg.checkpoint_every
                                           and step % cfg.checkpoint_every == 0):
                    _save(run, state, step, config_json, metrics["loss"])
                if stopping:
                    tqdm.write(f"{stop.received}: saved step {step} to {run.ckpts.directory}; "
                               f"run the same command to resume")
                    last_record = {**last_record, "stopped_at": step, "signal": stop.received}
                    break
        finally:
            log.close()
            progress.close()
    return last_record


def _show(progress, record: dict[str, Any], is_main: bool) -> None:
    keys = ("reward", "pass@1", "heldout_greedy")
    progress.set_postfix({k: f"{record[k]:.3f}" for k in keys if k in record})
    if is_main:
        shown = {k: v for k, v in record.items() if not k.startswith(("p/", "share/"))}
        tqdm.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in shown.items()))


def train_rl(
    cfg: ml_collections.ConfigDict, task: RLTask | None = None, command: bool = False
) -> dict[str, Any]:
    """RL as configured, holding the run directory's lock; returns the last metrics record.
    `task` overrides `cfg.task` (a task object implementing `tasks.RLTask`)."""
    with run_dir.locked(cfg.run_dir) as lock:
        with ExitOnSignalDuringStartup(lock) if command else contextlib.nullcontext():
            run = setup(cfg, task)
        try:
            return rl_loop(run)
        finally:
            run.ckpts.close()


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        with exit_on_user_error():
            record = train_rl(CONFIG_FLAG.value, command=True)
    except KeyboardInterrupt:
        print("interrupted (SIGINT); the last committed checkpoint is intact", file=sys.stderr)
        sys.exit(130)
    if record.get("signal") == "SIGINT":
        sys.exit(130)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
