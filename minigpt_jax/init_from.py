"""A run's first parameters: `scratch`, `checkpoint:<run_dir>[@step|@best]` or `hf:<dir-or-name>`,
and what fine-tuning may hold fixed (`freeze`). `validate_config` checks both keys with the
functions here, so the rules are written once.

Fine-tuning takes the weights and nothing else (the optimizer starts fresh, as nanoGPT's `init_from`
does; RL may also take AdamW's second moments, `adam_scale_from`), so the source only has to agree
with the run's model on the shapes that carry knowledge: layers, heads, width and vocabulary. Two
harmless differences are adapted rather than refused: a shorter context keeps the first rows of the
position table (nanoGPT's `crop_block_size`), and another `vocab_multiple` re-pads the token table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax
from flax import traverse_util

from minigpt_jax.errors import CheckpointError, ConfigError
from minigpt_jax.hf import load_hf_gpt2, pad_vocab
from minigpt_jax.model import ARCHITECTURE_FIELDS, GPTConfig, param_shapes

_MUST_MATCH = ("vocab_size", "n_layer", "n_head", "n_embd", *ARCHITECTURE_FIELDS)
# What `freeze` can hold fixed while the rest fine-tunes (the tied head freezes with wte).
FREEZE_GROUPS = {"none": (), "embeddings": ("wte", "wpe")}


def frozen_modules(freeze: str) -> tuple[str, ...]:
    """The top-level param modules `config.freeze` holds fixed."""
    if freeze not in FREEZE_GROUPS:
        raise ConfigError("freeze", f"{freeze!r}: use one of {sorted(FREEZE_GROUPS)}")
    return FREEZE_GROUPS[freeze]


@dataclasses.dataclass(frozen=True)
class InitSpec:
    kind: str  # "scratch" | "checkpoint" | "hf"
    target: str = ""  # run_dir or HF dir/name
    step: int | str | None = None  # checkpoint step, "best", or None for the latest


def parse_init_from(spec: str) -> InitSpec:
    """`checkpoint:runs/a@1200` -> InitSpec("checkpoint", "runs/a", 1200); errors name the key."""
    if spec == "scratch":
        return InitSpec("scratch")
    kind, sep, target = spec.partition(":")
    if not sep or kind not in ("checkpoint", "hf") or not target:
        raise ConfigError(
            "init_from",
            f"{spec!r}: use scratch, checkpoint:<run_dir>[@step|@best] or hf:<dir-or-name>",
        )
    if kind == "hf":
        return InitSpec("hf", target)
    run_dir, at, suffix = target.rpartition("@")
    if not at:
        return InitSpec("checkpoint", target)
    if suffix == "best":
        return InitSpec("checkpoint", run_dir, "best")
    if suffix == "latest":
        return InitSpec("checkpoint", run_dir)
    if suffix.isdigit():
        return InitSpec("checkpoint", run_dir, int(suffix))
    raise ConfigError(
        "init_from", f"{spec!r}: the part after @ must be a step number, 'best' or 'latest'"
    )


def check_same_tokenizer(
    saved: dict[str, Any] | None, current: dict[str, Any] | None, key: str, where: str
) -> None:
    """A checkpoint's weights mean something only with the tokenizer they were trained with: a
    resume or fine-tune on shards of another tokenizer (same vocabulary size or not) is refused."""
    from minigpt_jax.tokenizer import same_tokenizer

    if saved and current and saved.get("sha256") and not same_tokenizer(saved, current):
        raise ConfigError(
            key,
            f"{where} was trained with tokenizer {saved.get('name')!r} (sha256 "
            f"{str(saved.get('sha256'))[:12]}), but the shards in config.data_dir use "
            f"{current.get('name')!r} (sha256 {str(current.get('sha256'))[:12]}); use data made "
            f"with the checkpoint's tokenizer, or start a new run_dir",
        )


def _load_checkpoint(
    spec: InitSpec, tokenizer: dict[str, Any] | None = None
) -> tuple[GPTConfig, Any]:
    """The checkpoint's own model config (its record) and params, as host arrays; refused when
    it recorded another tokenizer than the run's (`tokenizer`), even one of the same size."""
    from minigpt_jax.checkpoint import load_params

    try:
        params, record = load_params(spec.target, step=spec.step)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError("init_from", f"checkpoint:{spec.target}: {e}") from e
    check_same_tokenizer(
        record["tokenizer"], tokenizer, "init_from",
        f"checkpoint:{spec.target} (step {record['step']})",
    )
    return record["model"], jax.device_get(params)


def adapt_params(params: Any, source: GPTConfig, target: GPTConfig, where: str) -> dict[str, Any]:
    """`source`'s params reshaped for `target`: crop the position table, re-pad the token table.

    Everything else must match exactly; the error says which field and how to set it.
    """
    for field in _MUST_MATCH:
        a, b = getattr(source, field), getattr(target, field)
        if a != b:
            raise ConfigError(
                "init_from",
                f"{where} has {field}={a} but config.model.{field}={b}; set "
                f"--config.model.{field}={a} (fine-tuning keeps the pretrained shapes)",
            )
    if target.block_size > source.block_size:
        raise ConfigError(
            "init_from",
            f"{where} has a context of {source.block_size} positions, shorter than "
            f"config.model.block_size={target.block_size}; set --config.model.block_size<="
            f"{source.block_size}",
        )
    flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
    if ("wpe", "embedding") in flat:
        flat[("wpe", "embedding")] = flat[("wpe", "embedding")][: target.block_size]
    for table in (("wte", "embedding"), ("lm_head",)):
        if table in flat:
            flat[table] = pad_vocab(flat[table][: target.vocab_size], target.padded_vocab_size)
    expected = traverse_util.flatten_dict(param_shapes(target))
    if set(flat) != set(expected):
        diff = sorted("/".join(p) for p in set(flat) ^ set(expected))
        raise ConfigError("init_from", f"{where}: parameters differ from the model's: {diff[:5]}")
    for path, leaf in expected.items():
        if flat[path].shape != tuple(leaf.shape):
            raise ConfigError(
                "init_from",
                f"{where}: {'/'.join(path)} has shape {flat[path].shape}, the model wants "
                f"{tuple(leaf.shape)}",
            )
    return traverse_util.unflatten_dict(flat)


def _source_checkpoints(target: str):
    """The read-only checkpoints of an init_from source; a missing or foreign run is init_from's
    error."""
    from minigpt_jax.checkpoint import RunCheckpoints

    try:
        return RunCheckpoints(target, read_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError("init_from", f"checkpoint:{target}: {e}") from e


def _resolve_step(ckpts, parsed: InitSpec) -> int:
    try:
        return ckpts.resolve_step(parsed.step)
    except CheckpointError as e:  # it names the run and its steps; the key is init_from
        raise ConfigError("init_from", f"checkpoint:{parsed.target}: {e}") from e


def pin_step(spec: str) -> str:
    """`checkpoint:<run_dir>` with its step resolved now ("latest" or "best" becomes a number);
    any other spec unchanged.

    Why: a run that reads one source twice (rl's `init_adam_scale`: the params, then the Adam
    moments) must read them from one checkpoint, even while the source is still saving new ones.
    """
    parsed = parse_init_from(spec)
    if parsed.kind != "checkpoint":
        return spec
    ckpts = _source_checkpoints(parsed.target)
    try:
        return f"checkpoint:{parsed.target}@{_resolve_step(ckpts, parsed)}"
    finally:
        ckpts.close()


def adam_scale_from(
    spec: str, opt_state: Any, abstract_opt_state: Any, opt_shardings: Any
) -> Any:
    """`opt_state` with every AdamW second moment (`nu`) and step count taken from the `spec`
    checkpoint's optimizer state; first moments stay zero, schedules stay at their start.

    Why: a fresh Adam divides each coordinate's gradient by its own running size, so the first
    steps are about `lr` per coordinate whatever the signal, and a gradient that is mostly noise
    (RL's, or fine-tuning on samples the model already gets right) moves every weight as far as a
    meaningful one would. With the supervised run's second moments, a step is the gradient over
    the scale of the gradients that trained the model: small where the new signal is small. The
    carried count switches off Adam's bias correction, so with `mu` at zero the first steps are
    0.1, 0.19, 0.27, ... of full size (1 - 0.9^t): a built-in warm-up of about 20 steps. The
    checkpoint must hold the same optimizer (AdamW, same frozen groups) over the same parameter
    shapes (no cropped context or re-padded vocabulary).
    """
    # `rl.validate_rl_config` has refused a spec that is not a checkpoint and a run without AdamW.
    parsed = parse_init_from(spec)
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
    misfit = (
        f"checkpoint:{parsed.target}: its optimizer state does not fit this run's; the checkpoint "
        f"must hold AdamW with the same freeze over parameters of the same shapes (context and "
        f"vocabulary included), or set init_adam_scale=False"
    )
    ckpts = _source_checkpoints(parsed.target)
    try:
        step = _resolve_step(ckpts, parsed)
        try:
            saved = ckpts.restore_opt_state(step, abstract_opt_state, opt_shardings)
        except (OSError, ValueError, KeyError, TypeError) as e:  # CheckpointError included
            raise ConfigError("init_adam_scale", f"{misfit} ({str(e)[:200]})") from e
    finally:
        ckpts.close()
    # A partial restore fills what the checkpoint lacks (an SGD run's Adam moments) with the
    # target's abstract leaves instead of failing.
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(saved)):
        raise ConfigError("init_adam_scale", misfit)

    def graft(state, src):
        return state._replace(count=src.count, nu=src.nu) if is_adam(state) else state

    return jax.tree.map(graft, opt_state, saved, is_leaf=is_adam)


def proposer_stats_from(spec: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the source run's config, its proposer statistics) from the RL checkpoint `spec` names.

    Why: an RL run continued from another RL run's checkpoint (a longer curriculum, say) would
    otherwise climb its ladder again from the prior, spending its first steps re-learning which
    lengths the policy already solves (rl's `proposer_init`)."""
    # `rl.validate_rl_config` has refused a spec that is not a checkpoint.
    parsed = parse_init_from(spec)
    ckpts = _source_checkpoints(parsed.target)
    try:
        step = _resolve_step(ckpts, parsed)
        config = ckpts.record(step)["config"] or {}
        stats = ckpts.restore_host_field(step, "proposer")
    finally:
        ckpts.close()
    if stats is None:
        raise ConfigError(
            "proposer_init",
            f"checkpoint:{parsed.target}@{step} holds no proposer statistics (a supervised "
            f"checkpoint); set proposer_init='prior', or start from an RL run's checkpoint",
        )
    return config, {k: np.asarray(v, np.float32) for k, v in stats.items()}


def load_init_params(
    spec: str, model_cfg: GPTConfig, tokenizer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Params for `GPT(model_cfg)` from `spec` (train.py's fine-tuning hook); host numpy arrays.

    `tokenizer`: the run's tokenizer record, which a checkpoint's recorded one must match."""
    parsed = parse_init_from(spec)
    if parsed.kind == "scratch":
        raise ConfigError("init_from", "'scratch' has no weights to load; train.py inits instead")
    if parsed.kind == "hf":
        try:
            source_cfg, params = load_hf_gpt2(parsed.target)
        except CheckpointError as e:
            raise ConfigError("init_from", str(e)) from e
    else:
        source_cfg, params = _load_checkpoint(parsed, tokenizer)
    return adapt_params(params, source_cfg, model_cfg, spec)
