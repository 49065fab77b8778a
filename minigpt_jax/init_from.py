"""A run's first parameters: `scratch`, `checkpoint:<run_dir>[@step|@best]` or `hf:<dir-or-name>`,
and what fine-tuning may hold fixed (`freeze`). `validate_config` checks both keys with the
functions here, so the rules are written once.

Fine-tuning takes the weights and nothing else (the optimizer starts fresh, as nanoGPT's `init_from`
does), so the source only has to agree with the run's model on the shapes that carry knowledge:
layers, heads, width and vocabulary. Two harmless differences are adapted rather than refused: a
shorter context keeps the first rows of the position table (nanoGPT's `crop_block_size`), and
another `vocab_multiple` re-pads the token table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
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


def _load_checkpoint(spec: InitSpec) -> tuple[GPTConfig, Any]:
    """The checkpoint's own model config (its record) and params, as host arrays."""
    from minigpt_jax.checkpoint import load_params

    try:
        params, record = load_params(spec.target, step=spec.step)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError("init_from", f"checkpoint:{spec.target}: {e}") from e
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


def load_init_params(spec: str, model_cfg: GPTConfig) -> dict[str, Any]:
    """Params for `GPT(model_cfg)` from `spec` (train.py's fine-tuning hook); host numpy arrays."""
    parsed = parse_init_from(spec)
    if parsed.kind == "scratch":
        raise ConfigError("init_from", "'scratch' has no weights to load; train.py inits instead")
    if parsed.kind == "hf":
        try:
            source_cfg, params = load_hf_gpt2(parsed.target)
        except CheckpointError as e:
            raise ConfigError("init_from", str(e)) from e
    else:
        source_cfg, params = _load_checkpoint(parsed)
    return adapt_params(params, source_cfg, model_cfg, spec)
