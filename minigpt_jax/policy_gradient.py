"""The policy-gradient update of RL with verifiable rewards: GRPO-style group baselines.

Each prompt is sampled G times; a sample's advantage is its reward minus the mean reward of its
group (optionally divided by the group's standard deviation: GRPO's form; Dr. GRPO and nanochat
leave it out, as the default does here, because it overweights groups that are nearly all right or
all wrong). Every completion token of a sample carries its sample's advantage, and the loss is
normalised by the number of completion tokens in the whole batch (token-level, as DAPO): a long
answer is not worth less per token than a short one.

Per-line credit (optional, `line_credit` in the RL config): a sequence-level advantage gives the
same sign to every token of a sample, although a wrong worked solution is usually right up to one
line. When the task can say how many of a completion's lines are right from the first
(`RLTask.right_lines`, the step checker for arithmetic), each line j of a sample also gets
1[j < right] minus the share of its group right through line j (the per-line baseline): the first
wrong line is pushed down hardest where the rest of the group got it right, and a group that is
all wrong still teaches where its samples went wrong. This is DeepSeekMath's process-supervised
GRPO with per-step instead of return-to-go advantages.

The update is on-policy, one optimizer step per batch of rollouts, so the importance ratio of
PPO/GRPO's clipped objective is exactly 1 and the objective reduces to REINFORCE with the group
baseline: loss = -sum_t w_t A_t log pi(y_t) / sum_t w_t, plus `kl_coef` times the k3 estimator of
KL(pi || pi_ref) per token (exp(d) - d - 1, d = log pi_ref - log pi), when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minigpt_jax.generate import bucket_size
from minigpt_jax.model import GPT
from minigpt_jax.train_state import Batch, Metrics, TrainState


def group_advantages(rewards_PG: np.ndarray, scale_by_std: bool = False) -> np.ndarray:
    """(prompts, samples) rewards -> advantages: minus the group mean, optionally / group std."""
    rewards_PG = np.asarray(rewards_PG, np.float32)
    adv_PG = rewards_PG - rewards_PG.mean(axis=1, keepdims=True)
    if scale_by_std:
        adv_PG = adv_PG / (rewards_PG.std(axis=1, keepdims=True) + 1e-6)
    return adv_PG


def line_credit(right_G: Sequence[int], token_lines: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per-token process advantages of one group: for sample g's token in line j,
    1[j < right_g] - mean over the group of 1[j < right_h]. `right_G` is how many lines of each
    sample are right from the first; `token_lines` the line of each of its chosen tokens."""
    right_G = np.asarray(right_G)
    out = []
    for right, lines in zip(right_G, token_lines, strict=True):
        lines_N = np.asarray(lines, np.int64).reshape(-1)
        share_N = (lines_N[None, :] < right_G[:, None]).mean(axis=0)
        out.append(((lines_N < right).astype(np.float32) - share_N).astype(np.float32))
    return out


def token_lines(piece_newlines: Sequence[int], ended: bool) -> list[int]:
    """The line each chosen token starts in, from the number of newlines each completion token
    writes (`piece_newlines`); the closing end-of-text, when there is one, belongs to the line
    it closes (the answer line), not to the empty line after its newline."""
    lines = (np.cumsum([0, *piece_newlines])[:-1]).tolist()
    return [*lines, lines[-1] if lines else 0] if ended else lines


def rollout_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    ended: Sequence[bool],
    advantages: Sequence[float | Sequence[float]],
    eot_id: int,
    length: int,
) -> dict[str, np.ndarray]:
    """Prompt + completion (+ `eot_id` where the sample ended) per row, right-padded to `length`
    + 1 tokens, as next-token inputs/targets. `weights` is 1 on the targets the policy chose (the
    completion and its closing eot), 0 on the prompt and padding: prompts are given, not chosen.
    `advantages` holds, per row, one number for all its chosen tokens or one per chosen token;
    the batch carries them per target (0 where the weight is 0).
    Rows start at position 0, as the sampler's left-padded rows do from their own start."""
    B = len(prompts)
    tokens = np.full((B, length + 1), eot_id, np.int32)
    weights = np.zeros((B, length), np.float32)
    adv_BT = np.zeros((B, length), np.float32)
    rows = zip(prompts, completions, ended, advantages, strict=True)
    for b, (prompt, completion, done, adv) in enumerate(rows):
        row = [*prompt, *completion, *([eot_id] if done else [])]
        if len(row) > length + 1:
            raise ValueError(f"row {b} has {len(row)} tokens; the batch holds {length + 1}")
        chosen = slice(len(prompt) - 1, len(row) - 1)
        if np.ndim(adv) and len(adv) != len(row) - len(prompt):
            raise ValueError(f"row {b}: {len(adv)} advantages for {len(row) - len(prompt)} tokens")
        tokens[b, : len(row)] = row
        weights[b, chosen] = 1.0
        adv_BT[b, chosen] = adv
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights,
            "advantages": adv_BT}


def rows_with_signal(
    advantages: Sequence[float | Sequence[float]], new_tokens: Sequence[int], granule: int
) -> tuple[list[int], int, float]:
    """(rows to update on, the padded row count, the advantage scale) for a batch whose rows
    carry `advantages` (one number or one per chosen token) over `new_tokens` chosen tokens each.

    A row whose every advantage is 0 adds nothing to the policy gradient, and in GRPO every group
    that is all right or all wrong is such a row: late in a run, most of the batch. Dropping them
    and multiplying the kept advantages by kept tokens / all tokens gives exactly the full
    batch's token-normalised loss (its denominator counts every chosen token), for less compute.
    The kept rows are padded to a size in {1, 2, 3, 4, 6, 8, 12, ...} x `granule` (the device
    count divides it), at most the full batch, so that few shapes are ever compiled; none kept
    still pads to one granule, so the optimizer steps as it would have on a zero gradient.
    """
    keep = [i for i, adv in enumerate(advantages) if np.any(np.asarray(adv) != 0)]
    total = sum(new_tokens)
    scale = sum(new_tokens[i] for i in keep) / total if total else 1.0
    units = -(-len(keep) // granule)
    m = bucket_size(units)
    if m >= 4 and units <= m * 3 // 4:
        m = m * 3 // 4
    return keep, min(granule * m, len(advantages)), scale


def drop_rows_without_signal(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    ended: Sequence[bool],
    advantages: Sequence[float | Sequence[float]],
    eot_id: int,
    granule: int,
) -> tuple[list, list, list, list, float]:
    """`rollout_batch`'s inputs with only `rows_with_signal`'s rows, their advantages rescaled,
    padded with rows of one given token (nothing chosen, nothing learned); and the share kept."""
    chosen = [len(c) + e for c, e in zip(completions, ended, strict=True)]
    keep, size, scale = rows_with_signal(advantages, chosen, granule)
    pad = size - len(keep)
    return ([prompts[i] for i in keep] + [[eot_id]] * pad,
            [completions[i] for i in keep] + [[]] * pad,
            [ended[i] for i in keep] + [False] * pad,
            [np.asarray(advantages[i]) * scale for i in keep] + [0.0] * pad,
            len(keep) / len(chosen))


def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array, temperature: float) -> jax.Array:
    """log pi(target) under the sampling temperature (the policy the samples came from)."""
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def policy_gradient_loss(
    logp_BT: jax.Array,
    weights_BT: jax.Array,
    advantages_BT: jax.Array,
    ref_logp_BT: jax.Array | None = None,
    kl_coef: float = 0.0,
) -> tuple[jax.Array, Metrics]:
    """Token-normalised REINFORCE with per-token advantages, plus the optional k3 KL penalty."""
    weights_BT = weights_BT.astype(jnp.float32)
    count = jnp.maximum(weights_BT.sum(), 1.0)
    per_token_BT = -advantages_BT * logp_BT
    metrics: Metrics = {}
    if ref_logp_BT is not None:
        d_BT = ref_logp_BT - logp_BT
        k3_BT = jnp.exp(d_BT) - d_BT - 1.0
        metrics["kl"] = (k3_BT * weights_BT).sum() / count
        per_token_BT = per_token_BT + kl_coef * k3_BT
    loss = (per_token_BT * weights_BT).sum() / count
    metrics["logp"] = (logp_BT * weights_BT).sum() / count
    return loss, metrics


def make_logprob_fn(model: GPT, temperature: float) -> Callable[[Any, Batch], jax.Array]:
    """`(params, batch) -> log pi(targets)`: the reference policy's side of the KL."""

    def logprobs(params, batch: Batch) -> jax.Array:
        logits_BTV = model.apply({"params": params}, batch["inputs"])
        return token_logprobs(logits_BTV, batch["targets"], temperature)

    return logprobs


def make_pg_step(
    model: GPT, tx: optax.GradientTransformation, temperature: float, kl_coef: float = 0.0
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """A pure `(state, batch) -> (state, metrics)` policy-gradient step, jitted by the caller as
    the supervised step is (same optimizer chain, shardings and donation). `batch` is
    `rollout_batch`'s arrays, plus `ref_logp` when `kl_coef` > 0."""
    logprobs = make_logprob_fn(model, temperature)

    def loss_fn(params, batch):
        logp_BT = logprobs(params, batch)
        ref = jax.lax.stop_gradient(batch["ref_logp"]) if kl_coef else None
        return policy_gradient_loss(logp_BT, batch["weights"], batch["advantages"], ref, kl_coef)

    def pg_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    return pg_step
