"""The policy-gradient update of RL with verifiable rewards: GRPO-style group baselines.

Each prompt is sampled G times; a sample's advantage is its reward minus the mean reward of its
group (optionally divided by the group's standard deviation: GRPO's form; Dr. GRPO and nanochat
leave it out, as the default does here, because it overweights groups that are nearly all right or
all wrong). Every completion token of a sample carries its sample's advantage, and the loss is
normalised by the number of completion tokens in the whole batch (token-level, as DAPO): a long
answer is not worth less per token than a short one.

The update is on-policy, one optimizer step per batch of rollouts, so the importance ratio of
PPO/GRPO's clipped objective is exactly 1 and the objective reduces to REINFORCE with the group
baseline: loss = -sum_t w_t A_b log pi(y_t) / sum_t w_t, plus `kl_coef` times the k3 estimator of
KL(pi || pi_ref) per token (exp(d) - d - 1, d = log pi_ref - log pi), when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minigpt_jax.model import GPT
from minigpt_jax.train_state import Batch, Metrics, TrainState


def group_advantages(rewards_PG: np.ndarray, scale_by_std: bool = False) -> np.ndarray:
    """(prompts, samples) rewards -> advantages: minus the group mean, optionally / group std."""
    rewards_PG = np.asarray(rewards_PG, np.float32)
    adv_PG = rewards_PG - rewards_PG.mean(axis=1, keepdims=True)
    if scale_by_std:
        adv_PG = adv_PG / (rewards_PG.std(axis=1, keepdims=True) + 1e-6)
    return adv_PG


def rollout_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    ended: Sequence[bool],
    advantages: Sequence[float],
    eot_id: int,
    length: int,
) -> dict[str, np.ndarray]:
    """Prompt + completion (+ `eot_id` where the sample ended) per row, right-padded to `length`
    + 1 tokens, as next-token inputs/targets. `weights` is 1 on the targets the policy chose (the
    completion and its closing eot), 0 on the prompt and padding: prompts are given, not chosen.
    Rows start at position 0, as the sampler's left-padded rows do from their own start."""
    B = len(prompts)
    tokens = np.full((B, length + 1), eot_id, np.int32)
    weights = np.zeros((B, length), np.float32)
    for b, (prompt, completion, done) in enumerate(zip(prompts, completions, ended, strict=True)):
        row = [*prompt, *completion, *([eot_id] if done else [])]
        if len(row) > length + 1:
            raise ValueError(f"row {b} has {len(row)} tokens; the batch holds {length + 1}")
        tokens[b, : len(row)] = row
        weights[b, len(prompt) - 1 : len(row) - 1] = 1.0
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": weights,
        "advantages": np.asarray(advantages, np.float32),
    }


def token_logprobs(logits_BTV: jax.Array, targets_BT: jax.Array, temperature: float) -> jax.Array:
    """log pi(target) under the sampling temperature (the policy the samples came from)."""
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32) / temperature, axis=-1)
    return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]


def policy_gradient_loss(
    logp_BT: jax.Array,
    weights_BT: jax.Array,
    advantages_B: jax.Array,
    ref_logp_BT: jax.Array | None = None,
    kl_coef: float = 0.0,
) -> tuple[jax.Array, Metrics]:
    """Token-normalised REINFORCE with per-sample advantages, plus the optional k3 KL penalty."""
    weights_BT = weights_BT.astype(jnp.float32)
    count = jnp.maximum(weights_BT.sum(), 1.0)
    per_token_BT = -advantages_B[:, None] * logp_BT
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
