"""A trained run opened for use: the checkpoint's params and the tokenizer that fits them.

Every command that uses a run (evaluate, generate, eval_arithmetic, hf export) opens it here, so
that none of them scores, samples or exports a diverged checkpoint (NaN parameters give `loss nan`
and NUL bytes, with exit 0) or decodes with a tokenizer the model was not trained with (a GPT-2
tokenizer on a byte model prints "!!!!!").
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from minigpt_jax.checkpoint import RunCheckpoints, Step, checkpoint_dir, load_params
from minigpt_jax.errors import CheckpointError, TokenizerError
from minigpt_jax.tokenizer import TextTokenizer, load_run_tokenizer, load_tokenizer, same_tokenizer


@jax.jit
def _all_finite(params: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]
    return jnp.all(jnp.stack(leaves))


def params_are_finite(params: Any) -> bool:
    """One reduction on device; only a bool comes back to the host."""
    return bool(_all_finite(params))


def _latest_is_asked(step: Step) -> bool:
    return step is None or step == "latest"


def load_finite_params(
    run_dir: str | Path,
    step: Step = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    note: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> tuple[Any, dict[str, Any]]:
    """(params, record) as `checkpoint.load_params`, never with a NaN or inf parameter.

    A step asked for by number (or "best") whose parameters are not finite is refused, naming the
    usable steps. With no step asked for, a diverged latest checkpoint gives way to the newest
    finite one, and `note` says which steps were skipped, so the result is never silently another
    step than the one shown.
    """
    ckpts = RunCheckpoints(run_dir, read_only=True)
    try:
        steps = ckpts.steps()
        resolved = ckpts.resolve_step(step)
    finally:
        ckpts.close()
    params, record = load_params(run_dir, resolved, mesh=mesh)
    if params_are_finite(params):
        return params, record
    where = checkpoint_dir(run_dir) / str(resolved)
    earlier = [s for s in steps if s < resolved]
    if not _latest_is_asked(step):
        raise CheckpointError(
            f"{where}: its parameters are not finite (the run diverged before step {resolved}); "
            + (f"pass --step with an earlier checkpoint ({', '.join(map(str, earlier))})"
               if earlier else "no earlier checkpoint exists; train again with a lower lr")
        )
    skipped = [resolved]
    for s in reversed(earlier):
        params, record = load_params(run_dir, s, mesh=mesh)
        if params_are_finite(params):
            note(
                f"note: {checkpoint_dir(run_dir)}: step {', '.join(map(str, skipped))} "
                f"has non-finite parameters (the run diverged); using step {s}, the latest "
                f"finite checkpoint"
            )
            return params, record
        skipped.append(s)
    raise CheckpointError(
        f"{checkpoint_dir(run_dir)}: no checkpoint has finite parameters (steps "
        f"{', '.join(map(str, sorted(skipped)))}); the run diverged: train again with a lower lr"
    )


def inference_tokenizer(
    record: dict[str, Any], spec: str | None = None, data_dir: str | Path | None = None
) -> TextTokenizer:
    """The tokenizer to encode and decode with: `spec` when given (`--tokenizer`), else the
    run's own (found by its record, sha256 checked).

    Either way it must fit the model: the same number of ids, and, where the run recorded its
    tokenizer, the same one (sha256). A mismatch is refused with one message; decoding with another
    vocabulary prints plausible-looking garbage.
    """
    vocab_size = record["model"].vocab_size
    ran = record.get("tokenizer") or {}
    if not spec:
        tok = load_run_tokenizer(ran, data_dir)
        if tok.vocab_size != vocab_size:
            raise TokenizerError(
                f"the run's tokenizer {ran.get('spec')!r} has {tok.vocab_size} ids but its model "
                f"{vocab_size}; pass --tokenizer with the tokenizer the model was trained with"
            )
        return tok
    tok = load_tokenizer(spec)
    theirs = f"{tok.vocab_size} ids, sha256 {tok.identity['sha256'][:12]}"
    if tok.vocab_size != vocab_size:
        raise TokenizerError(
            f"--tokenizer {spec}: {theirs}, but the model has {vocab_size} ids; it was not "
            f"trained with this tokenizer: drop --tokenizer to use the run's own"
            + (f" ({ran.get('spec')})" if ran.get("spec") else "")
        )
    if ran.get("sha256") and not same_tokenizer(tok.identity, ran):
        raise TokenizerError(
            f"--tokenizer {spec}: {theirs}, but the run was trained with {ran.get('spec')!r} "
            f"(sha256 {ran['sha256'][:12]}); drop --tokenizer to use the run's own"
        )
    return tok
