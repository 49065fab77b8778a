"""Optimizer, train state, and the pure train / eval steps (jitted by the caller with shardings).

Gradient accumulation runs as a `lax.scan` over micro-batches inside the one compiled step rather
than `optax.MultiSteps`: one dispatch per optimizer step instead of k, no Python between
micro-batches, and the loss is normalised by the token count of the whole batch, so k micro-batches
give the same update as one big batch whatever the loss mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from minigpt_jax.init_from import frozen_modules
from minigpt_jax.loss import head_cross_entropy, summed_cross_entropy
from minigpt_jax.mixers import gated_deltanet_flops_per_token
from minigpt_jax.model import GPT, GPTConfig, count_params, head_weight

Batch = Mapping[str, jax.Array]  # inputs_BT, targets_BT, optional weights_BT (loss mask)
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any


LR_SCHEDULES = ("cosine", "wsd")


def make_lr_schedule(
    lr: float,
    min_lr: float,
    warmup_steps: int,
    total_steps: int,
    shape: str = "cosine",
    cooldown_frac: float = 0.2,
) -> optax.Schedule:
    """Linear warmup to `lr`, then a decay that ends at `min_lr` on the last step.

    "cosine" decays over every step after the warmup (nanoGPT, build-nanogpt). "wsd"
    (warmup-stable-decay, the trapezoid of modded-nanogpt and nanochat) holds `lr` and decays
    linearly over the last `cooldown_frac` of the run (at least one step, and never before the
    warmup ends, so `cooldown_frac=1.0` is warmup then cooldown): its stable phase does not
    depend on `total_steps`, so a run can be extended on resume, or a stable checkpoint branched
    into cooldowns of any length, without changing the steps already taken (Hägele et al. 2024).

    Shifted by one step (as build-nanogpt and llm.c do) so that the first step already learns and
    the last step runs at exactly `min_lr`.
    """
    warmup = max(warmup_steps, 1)
    if shape == "cosine":
        base = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=min_lr,
        )
    elif shape == "wsd":
        cooldown = max(round(total_steps * cooldown_frac), 1)
        stable_end = max(total_steps - cooldown, warmup)
        base = optax.join_schedules(
            [
                optax.linear_schedule(0.0, lr, warmup),
                optax.constant_schedule(lr),
                optax.linear_schedule(lr, min_lr, max(total_steps - stable_end, 1)),
            ],
            [warmup, stable_end],
        )
    else:
        raise ValueError(f"lr schedule {shape!r}: use one of {LR_SCHEDULES}")
    return lambda count: base(count + 1)


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and embeddings (ndim >= 2), never biases or LayerNorm (nanoGPT)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def freeze_labels(params: Any, freeze: str = "none") -> Any:
    """The label of each leaf: "frozen" under a frozen top-level module, else "trained"."""
    frozen = frozen_modules(freeze)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if getattr(path[0], "key", None) in frozen else "trained", params
    )


OPTIMIZERS = ("adamw", "muon", "sgd")
MUON_MOMENTUM = 0.95  # modded-nanogpt's and optax's default (Nesterov)


def muon_labels(params: Any) -> Any:
    """"muon" for the blocks' hidden matrices (attention and MLP kernels), "adamw" for the rest:
    token and position tables, the untied head, biases and norm gains (Muon is for matrices that
    map one hidden space to another; embeddings and the head are lookups or a readout). A mixer's
    short convolution (`conv`, taps x channels) is per-channel weights, not a matrix: AdamW."""

    def label(path, p):
        in_block = str(getattr(path[0], "key", "")).startswith("h_")
        is_conv = getattr(path[-1], "key", "") == "conv"
        return "muon" if in_block and p.ndim == 2 and not is_conv else "adamw"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(
    lr_schedule: optax.Schedule,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    freeze: str = "none",
    optimizer: str = "adamw",
    muon_lr_scale: float = 0.0,
) -> optax.GradientTransformation:
    """AdamW (or Muon, or SGD) with global-norm clipping; `freeze="embeddings"` holds wte and wpe
    fixed.

    `optimizer="muon"`: the hidden matrices (`muon_labels`) take `optax.contrib.muon` (Nesterov
    momentum, Newton-Schulz orthogonalisation, optax's shape scaling) at `lr_schedule` times
    `muon_lr_scale` (config: muon_lr / lr, so one warmup and cosine shape for both groups); the
    rest keeps this AdamW at `lr_schedule`. Both follow the one global-norm clip. Muon's decoupled
    weight decay is divided by the scale, so a matrix shrinks per step as under AdamW
    (lr x weight_decay) whatever muon_lr is.

    `optimizer="sgd"`: heavy-ball momentum (`b1`) and the same decoupled, masked weight decay, no
    per-coordinate scaling, so a step's size follows the gradient's instead of being about `lr`
    per coordinate whatever its signal (the question RL's noisy gradients raise; docs/
    post-training.md). Its lr is on another scale than Adam's (and momentum b1 = 0.9 makes a
    steady step about 10x lr x the gradient): sweep it.

    Frozen leaves get zero updates and no Adam moments (optax.multi_transform), so they cost no
    optimizer memory and weight decay never shrinks them.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    adamw = optax.adamw(
        lr_schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask
    )
    update = adamw
    if optimizer == "sgd":
        update = optax.chain(
            optax.trace(decay=b1),
            optax.add_decayed_weights(weight_decay, mask=decay_mask),
            optax.scale_by_learning_rate(lr_schedule),
        )
    if optimizer == "muon":
        if muon_lr_scale <= 0:
            raise ValueError(f"optimizer='muon' needs muon_lr_scale > 0, got {muon_lr_scale}")
        muon = optax.contrib.muon(
            lambda count: lr_schedule(count) * muon_lr_scale,
            beta=MUON_MOMENTUM,
            weight_decay=weight_decay / muon_lr_scale,
        )
        update = optax.partition({"muon": muon, "adamw": adamw}, muon_labels)
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), update)
    if not frozen_modules(freeze):
        return tx
    return optax.multi_transform(
        {"trained": tx, "frozen": optax.set_to_zero()}, lambda p: freeze_labels(p, freeze)
    )


def create_train_state(model: GPT, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    dummy_BT = jnp.zeros((1, model.config.block_size), jnp.int32)
    params = model.init(rng, dummy_BT)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def batch_loss(
    model: GPT,
    params: Any,
    batch: Batch,
    loss_chunks: int = 0,
    deterministic: bool = True,
    rngs: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(summed loss, counted tokens) of a batch: through full logits when `loss_chunks` is 0, else
    through the fused head in that many time slices (no B x T x V logits; see minigpt_jax.loss)."""
    cfg = model.config
    weights = batch.get("weights")
    if not loss_chunks:
        logits_BTV = model.apply(
            {"params": params}, batch["inputs"], deterministic=deterministic, rngs=rngs
        )
        return summed_cross_entropy(logits_BTV, batch["targets"], weights)
    x_BTD = model.apply(
        {"params": params},
        batch["inputs"],
        deterministic=deterministic,
        rngs=rngs,
        return_hidden=True,
    )
    return head_cross_entropy(
        x_BTD,
        head_weight(params, cfg),
        batch["targets"],
        weights,
        vocab_size=cfg.vocab_size,
        chunks=loss_chunks,
        dtype=cfg.dtype,
        softcap=cfg.logit_softcap,
    )


def _split_micro_batches(batch: Batch, k: int) -> Batch:
    """(B, ...) -> (k, B/k, ...), micro-batch i taking rows i, i+k, ...

    Strided rather than contiguous so that each device's slice of a batch-sharded array stays on
    that device: every micro-batch is spread over all devices and no data moves.
    """

    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible into {k} micro-batches")
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, dict(batch))


def make_train_step(
    model: GPT,
    tx: optax.GradientTransformation,
    num_micro_batches: int = 1,
    dropout_seed: int = 0,
    loss_chunks: int = 0,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """A pure `(state, batch) -> (state, metrics)` step; the caller jits it (with donation).

    `loss_chunks` > 0 fuses the head with the loss (see `batch_loss`).
    """
    # Training-time randomness: dropout, the digit positions' random offsets, the rotary gaps.
    cfg = model.config
    use_rng = (cfg.dropout > 0 or cfg.digit_pos_offset_max > 0 or cfg.digit_pos_doc_block > 0
               or cfg.rope_gap_max > 1)

    def loss_and_count(params, micro: Batch, rng):
        rngs = None
        if use_rng:
            rngs = {"dropout": rng, "digits": jax.random.fold_in(rng, 1),
                    "positions": jax.random.fold_in(rng, 2)}
        return batch_loss(model, params, micro, loss_chunks, not use_rng, rngs)

    grad_fn = jax.value_and_grad(loss_and_count, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        # Dropout randomness is a function of (seed, step): a resumed run draws what it would have.
        step_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
        if num_micro_batches == 1:
            (loss_sum, count), grads = grad_fn(state.params, batch, step_rng)
        else:

            def accumulate(carry, xs):
                micro, i = xs
                (loss_sum, count), grads = grad_fn(
                    state.params, micro, jax.random.fold_in(step_rng, i)
                )
                acc_grads, acc_loss, acc_count = carry
                return (
                    jax.tree.map(jnp.add, acc_grads, grads),
                    acc_loss + loss_sum,
                    acc_count + count,
                ), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            micro_batches = _split_micro_batches(batch, num_micro_batches)
            (grads, loss_sum, count), _ = jax.lax.scan(
                accumulate, init, (micro_batches, jnp.arange(num_micro_batches))
            )
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": loss_sum / count, "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return train_step


def make_eval_step(model: GPT, loss_chunks: int = 0) -> Callable[[Any, Batch], Metrics]:
    """A pure `(params, batch) -> {loss_sum, tokens}` step; sums so batches average exactly."""

    def eval_step(params, batch: Batch) -> Metrics:
        loss_sum, tokens = batch_loss(model, params, batch, loss_chunks)
        return {"loss_sum": loss_sum, "tokens": tokens}

    return eval_step


# --- FLOPs and model FLOPs utilisation --------------------------------------------------------


def flops_per_token(config: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus each layer's token mixing: attention's
    scores (PaLM appendix B), or a mixer's recurrence (`mixers.gated_deltanet_flops_per_token`).

    N leaves out the lookup tables (`count_params(non_embedding=True)`): the position table, as
    nanoGPT's `estimate_mfu` does, and the token table when the head is untied (then `lm_head` is
    the V x D matmul, so an untied head costs parameters but no FLOPs). SwiGLU's third matrix and
    any other switch that adds weights count through N.
    """
    n = count_params(config, non_embedding=True)
    attention = 12 * config.n_embd * seq_len
    mixer = gated_deltanet_flops_per_token(config.n_embd, config.n_head, seq_len)
    n_attention = len(config.attention_layers)
    return 6 * n + n_attention * attention + (config.n_layer - n_attention) * mixer

