"""Every training key with its default, and the checks that run before anything compiles.

Config files in `configs/` start from `default_config()` and change what they need. The dict is
locked, so a misspelt key in a file or on the command line (`--config.lrr=...`) is an error, not a
silent no-op.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from minigpt_jax.errors import ConfigError
from minigpt_jax.files import write_json_atomic
from minigpt_jax.init_from import frozen_modules, parse_init_from
from minigpt_jax.model import GPTConfig
from minigpt_jax.train_state import LR_SCHEDULES, OPTIMIZERS

_POSITIVE_MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")
# Model fields the run sets elsewhere: compute_dtype is the run's dtype policy (top-level key).
_RUN_LEVEL_MODEL_FIELDS = ("compute_dtype",)


def model_fields(preset: str = "small", **overrides) -> ml_collections.ConfigDict:
    """The `model` block: a preset plus every GPTConfig field; unset fields follow the preset.

    Typed placeholders keep both spellings working from the command line:
    `--config.model.preset=gpt2` switches the size, `--config.model.n_layer=6` changes one field.
    """
    fields = {}
    for f in dataclasses.fields(GPTConfig):
        if f.name in _RUN_LEVEL_MODEL_FIELDS:
            continue
        if f.name in overrides:
            fields[f.name] = overrides.pop(f.name)
        else:
            fields[f.name] = placeholder(type(f.default))
    if overrides:
        raise ConfigError("model", f"unknown model fields {sorted(overrides)}")
    return ml_collections.ConfigDict({"preset": preset, **fields})


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, loaded by its path (configs/ is not a package): how one
    config builds on another, and how benchmarks and tests read the configs they quote."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def apply_overrides(
    c: ml_collections.ConfigDict, settings: dict[str, Any]
) -> ml_collections.ConfigDict:
    """Set `settings` on `c` in place, "model.x" keys on the model block, as `--config.` flags do
    (the locked dict still refuses a misspelt key); returns `c`."""
    for key, value in settings.items():
        if key.startswith("model."):
            c.model[key.removeprefix("model.")] = value
        else:
            c[key] = value
    return c


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # A preset, then any GPTConfig field: model_fields("gpt2", dropout=0.1).
    c.model = model_fields("small")
    c.tokenizer = ""  # "" takes the tokenizer the shards were made with (their manifest.json)
    c.data_dir = "data/pydoc"
    c.run_dir = "runs/small"
    c.seed = 0

    c.total_steps = 1000
    c.batch_size = 8  # sequences per optimizer step, over all devices
    # Sequences per device in one forward/backward pass: when batch_size / devices is larger, the
    # step accumulates gradients over micro-batches. 0 = no accumulation. Per device, so that one
    # config fits the same memory on 1 GPU or 64 (where it simply accumulates less).
    c.micro_batch_size = 0
    c.block_size = 256  # training sequence length; at most model.block_size
    # The loss fused with the tied head in this many time slices (at most; a divisor of the
    # sequence length): the B x T x V logits never exist (13 GB per 64 x 1024 micro-batch at
    # GPT-2's vocabulary). 0: full logits.
    c.loss_chunks = 8

    c.lr = 6e-4
    c.min_lr = c.get_ref("lr") * 0.1  # follows lr unless set
    c.warmup_steps = 100
    # "cosine": decay over the whole run; "wsd": hold lr, then decay linearly over the last
    # cooldown_frac of the steps (warmup-stable-decay; a run extends on resume without changing
    # the steps it has taken).
    c.lr_schedule = "cosine"
    c.cooldown_frac = 0.2
    c.weight_decay = 0.1
    c.grad_clip = 1.0
    c.adam_b1 = 0.9
    c.adam_b2 = 0.95
    c.compute_dtype = "float32"  # "bfloat16" on GPUs and TPUs
    # "adamw" | "muon" | "sgd": Muon (optax.contrib.muon) for the blocks' hidden matrices at
    # muon_lr, AdamW at lr for embeddings, head, biases and gains; one warmup + cosine shape scales
    # both. "sgd": momentum adam_b1, decoupled weight decay, at lr (another scale than Adam's).
    c.optimizer = "adamw"
    c.muon_lr = 0.02  # peak lr of the Muon group (modded-nanogpt's order); used when optimizer=muon

    c.log_every = 10
    c.eval_every = 200  # 0: only at the end
    c.eval_tokens = 65_536
    c.data_workers = 0  # Grain worker processes; 0 reads in threads of the main process
    c.peak_tflops = 0.0  # per-device peak for MFU; 0 = vendor figure, or measured (peak.py)
    # Where metrics go (minigpt_jax/loggers.py): any of "jsonl" (metrics.jsonl), "tensorboard"
    # (event files in run_dir; extra [tensorboard]), "wandb" (extra [wandb]; WANDB_MODE=offline
    # works), e.g. --config.loggers="('jsonl','tensorboard')".
    c.loggers = ("jsonl",)
    c.wandb_project = "minigpt_jax"
    c.wandb_run_name = ""  # "": the run_dir's name

    # Sharding (see minigpt_jax/sharding.py): -1 takes the devices the other axis leaves.
    c.mesh_data = -1
    c.mesh_fsdp = 1

    # Checkpoints and how a run starts.
    c.checkpoint_every = 500  # 0: only at the end (and on SIGTERM / SIGINT)
    c.keep_checkpoints = 3
    c.keep_best = True  # also keep the checkpoint with the lowest val_loss
    c.resume = True  # continue from run_dir's latest checkpoint when there is one
    c.init_from = "scratch"  # "scratch" | "checkpoint:<run_dir>[@step]" | "hf:<dir-or-name>"
    c.freeze = "none"  # "none" | "embeddings" (fine-tuning)
    c.lock()
    return c


def add_rl_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The reinforcement-learning keys (`python -m minigpt_jax.rl`) on top of a supervised config:
    the model, data_dir (tokenizer, task files), optimizer and schedule keys keep their meaning,
    and `init_from` names the policy to start from. Returns `c`, locked again."""
    c.unlock()
    c.task = "arithmetic"  # minigpt_jax.tasks.load_task
    # Per task. arithmetic: answer_weight (reward for the right answer) and process_weight (for
    # fully verified steps, added), max_digits ("+:8,-:8": the longest operand the curriculum may
    # reach per op).
    c.task_options = ml_collections.ConfigDict(
        {"answer_weight": 1.0, "process_weight": 0.0, "max_digits": ""}
    )
    c.prompts_per_step = 16  # distinct problems per step
    c.group_size = 8  # samples per problem: the group whose mean reward is the baseline
    c.max_new_tokens = 160
    c.temperature = 1.0  # the sampling policy; its log-probabilities are at this temperature
    # Rollouts first get room for this many new tokens, the rows still going twice as much, and so
    # on up to max_new_tokens (generate.sample_growing): short answers stop paying for a cache
    # sized for the longest. 0 = one pass of max_new_tokens, as the measured runs before session
    # 38 sampled (same samples bit for bit); otherwise the rows that run past the first room draw
    # other samples from the same distribution.
    c.rollout_first_tokens = 0
    # "sample": group_size samples of each problem, scored by the task (GRPO). "greedy_branch":
    # each problem is decoded greedily, and where that fails, group_size samples of its first
    # wrong line only (at most branch_tokens new tokens each) are drawn from the right lines
    # before it and scored by the task's line checker (RLTask.right_lines), the group mean as
    # baseline: the evaluated (greedy) policy's own mistakes, each a cheap one-line group.
    c.rollout_mode = "sample"
    c.branch_tokens = 32
    c.scale_advantages = False  # divide by the group's std (GRPO) or not (Dr. GRPO, nanochat)
    c.line_credit = 0.0  # weight of the per-line process advantage (policy_gradient.line_credit)
    c.outcome_credit = 1.0  # weight of the answer's group advantage on every chosen token
    c.solved_credit = 0.0  # added to the advantage of each sample task.verify accepts (RFT)
    c.negative_weight = 1.0  # scale of negative advantages: 1 = GRPO; 0 = reinforce the better only
    c.kl_coef = 0.0  # k3 KL penalty to the init_from policy per token; 0 = off (nanochat)
    # Update only on the samples whose advantage is not all zero (a group all right or all wrong
    # has none), rescaled so that the step equals the full batch's: the same gradient for less
    # compute. Off when kl_coef > 0, whose penalty reaches every sample.
    c.skip_no_signal = True
    # Start AdamW's second moments (and step count) from the init_from checkpoint's, first moments
    # at zero: a step is then the gradient over the supervised run's gradient scale, not about lr
    # per coordinate whatever its signal (init_from.adam_scale_from).
    c.init_adam_scale = False
    c.proposer = "mixture"  # "mixture" | "uniform" | "frontier" (minigpt_jax/curriculum.py)
    c.proposer_unlock = 0.6  # success a cell needs before the next-longer one opens
    # Comma-separated cell names ("add 19,add 20") to practise only those, prerequisites waived
    # (uniform or frontier); "" = every cell of the task.
    c.proposer_cells = ""
    # Where a fresh run's proposer statistics start: "prior" (no attempts: every ladder from its
    # first rung) or "init_from" (the init_from RL checkpoint's, cell by name; cells it lacked
    # at the prior), so that a continued curriculum does not re-climb what it has solved.
    c.proposer_init = "prior"
    c.eval_per_cell = 50  # held-out problems per cell in the periodic greedy evaluation
    c.keep_best = False  # checkpoints carry no val_loss to rank by
    c.lock()
    return c


def model_config(c: ml_collections.ConfigDict) -> GPTConfig:
    """The run's GPTConfig: the preset, the fields the config sets, and the run's dtype policy."""
    fields = {k: v for k, v in c.model.to_dict().items() if k != "preset" and v is not None}
    for key in _POSITIVE_MODEL_FIELDS:
        if key in fields and fields[key] <= 0:
            raise ConfigError(f"model.{key}", f"must be positive, got {fields[key]}")
    try:
        return GPTConfig.preset(c.model.preset, **fields, compute_dtype=c.compute_dtype)
    except (TypeError, ValueError) as e:
        named = re.match(r"(\w+)=", str(e))  # GPTConfig's messages start with the field
        key = "compute_dtype" if named and named[1] == "compute_dtype" else (
            f"model.{named[1]}" if named else "model")
        raise ConfigError(key, str(e)) from e


def model_config_from_record(record: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of a checkpoint's record (its config as plain JSON)."""
    return model_config(ml_collections.ConfigDict(record["config"]))


def config_record(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON (references resolved), as checkpoints and run dirs hold it."""
    return json.loads(cfg.to_json_best_effort())


def write_run_files(
    run_dir: str | Path, cfg: ml_collections.ConfigDict, tokenizer: dict[str, Any] | None
) -> None:
    """A run directory's `config.json` and `tokenizer.json` (its tokenizer record), for people and
    tools; the checkpoints keep their own copies."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", config_record(cfg), indent=2)
    if tokenizer:
        write_json_atomic(run_dir / "tokenizer.json", tokenizer, indent=2)


def accumulation_steps(batch_size: int, micro_batch_size: int, num_devices: int) -> int:
    """Micro-batches per optimizer step, from the per-device micro-batch size."""
    per_device = batch_size // num_devices
    if not micro_batch_size or micro_batch_size >= per_device:
        return 1
    return per_device // micro_batch_size


def validate_config(c: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Everything that can be checked before compiling, each failure naming its key."""
    model = model_config(c)
    positive = ("total_steps", "batch_size", "block_size", "log_every", "eval_tokens")
    for key in positive:
        if c[key] <= 0:
            raise ConfigError(key, f"must be positive, got {c[key]}")
    if c.block_size > model.block_size:
        raise ConfigError(
            "block_size",
            f"{c.block_size} is longer than the model's context (model.block_size="
            f"{model.block_size}); lower block_size or raise model.block_size",
        )
    if c.batch_size % num_devices:
        raise ConfigError(
            "batch_size",
            f"{c.batch_size} sequences cannot be split over {num_devices} devices; "
            f"use a multiple of {num_devices}",
        )
    per_device = c.batch_size // num_devices
    if c.micro_batch_size < 0 or (
        0 < c.micro_batch_size < per_device and per_device % c.micro_batch_size
    ):
        raise ConfigError(
            "micro_batch_size",
            f"{c.micro_batch_size} sequences per device do not divide the {per_device} each of "
            f"the {num_devices} devices gets (batch_size={c.batch_size})",
        )
    if c.loss_chunks < 0:
        raise ConfigError("loss_chunks", f"{c.loss_chunks}: use 0 (full logits) or a slice count")
    if not 0 <= c.warmup_steps <= c.total_steps:
        raise ConfigError("warmup_steps", f"{c.warmup_steps} is not within [0, total_steps]")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ConfigError("lr_schedule", f"{c.lr_schedule!r}: use one of {LR_SCHEDULES}")
    if not 0.0 < c.cooldown_frac <= 1.0:
        raise ConfigError("cooldown_frac", f"{c.cooldown_frac}: use a fraction of a run, in (0, 1]")
    if c.lr_schedule == "wsd" and c.warmup_steps >= c.total_steps:
        raise ConfigError(
            "warmup_steps",
            f"{c.warmup_steps} leaves no step for lr_schedule='wsd' to cool down in "
            f"(total_steps={c.total_steps}); lower it",
        )
    if not 0 <= c.lr < float("inf"):
        raise ConfigError("lr", f"{c.lr}: use a finite, non-negative rate (negative ascends)")
    if c.min_lr < 0:
        raise ConfigError("min_lr", f"{c.min_lr} is negative; use 0 <= min_lr <= lr")
    if c.min_lr > c.lr:
        raise ConfigError("min_lr", f"{c.min_lr} is above lr={c.lr}; use 0 <= min_lr <= lr")
    if not 0.0 <= model.dropout < 1.0:
        raise ConfigError("model.dropout", f"{model.dropout} is not a probability in [0, 1)")
    if c.seed < 0:
        raise ConfigError("seed", f"{c.seed}: use a non-negative integer")
    if model.attention_impl == "cudnn":
        import jax

        if jax.default_backend() != "gpu":
            raise ConfigError(
                "model.attention_impl",
                f"'cudnn' runs only on NVIDIA GPUs and this run is on {jax.default_backend()}; "
                f"use 'auto' (the default) or 'xla'",
            )
        if model.compute_dtype != "bfloat16":
            raise ConfigError(
                "model.attention_impl",
                f"'cudnn' needs compute_dtype bfloat16, not {model.compute_dtype}; "
                f"set --config.compute_dtype=bfloat16 or use 'auto'",
            )
    if c.eval_every < 0 or c.checkpoint_every < 0:
        raise ConfigError("eval_every", "eval_every and checkpoint_every must be >= 0")
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError("optimizer", f"{c.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if c.optimizer == "muon" and not (c.muon_lr > 0 and c.lr > 0):
        raise ConfigError("muon_lr", f"optimizer=muon needs muon_lr > 0 and lr > 0, got "
                          f"muon_lr={c.muon_lr}, lr={c.lr}")
    frozen_modules(c.freeze)
    parse_init_from(c.init_from)
    from minigpt_jax.loggers import check_loggers  # loggers.py raises this module's ConfigError

    check_loggers(c.loggers)
    data_dir = Path(c.data_dir)
    if not data_dir.is_dir():
        raise ConfigError(
            "data_dir",
            f"{data_dir} does not exist; prepare shards first, e.g. "
            f"`python scripts/download_data.py --out_dir {data_dir}`",
        )
