"""Next-token cross-entropy: from materialised logits, or fused with the head in time chunks.

Both return (sum of per-token losses, number of counted tokens) in float32: sums rather than means,
so that micro-batches, devices and eval batches combine exactly.

The fused form exists because the head dominates a GPT-2 step's memory traffic: B x T x 50304
float32 logits are 13 GB for one 64 x 1024 micro-batch, written by the forward pass and read again
by the softmax, its gradient and two matmuls. `head_cross_entropy` computes logits, loss and both
gradients one time-slice at a time inside the forward pass, so the full logits never exist and each
slice is still in cache when its gradient is formed (the trick of Liger-Kernel's fused linear
cross-entropy, written in plain JAX). Slicing along time keeps the batch axis intact, so a
batch-sharded array stays on its devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from minigpt_jax.model import head_matmul, mask_padded_logits


def summed_cross_entropy(
    logits_BTV: jax.Array, targets_BT: jax.Array, weights_BT: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(sum of per-token losses, number of counted tokens) from logits."""
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
    if weights_BT is None:
        return losses_BT.sum(), jnp.asarray(losses_BT.size, jnp.float32)
    weights_BT = weights_BT.astype(jnp.float32)
    return (losses_BT * weights_BT).sum(), weights_BT.sum()


def head_cross_entropy(
    x_BTD: jax.Array,
    wte_VD: jax.Array,
    targets_BT: jax.Array,
    weights_BT: jax.Array | None = None,
    *,
    vocab_size: int,
    chunks: int,
    dtype=jnp.float32,
    softcap: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """(loss sum, token count) of the head `x @ wte.T` without materialising its logits.

    `x_BTD` is the final norm's output and `wte_VD` the head (`model.head_weight`: the token table
    when tied); rows past `vocab_size` (vocabulary padding) never win. `softcap` = c > 0 caps the
    logits at c * tanh(logits / c), as the model's head does. Matmuls run in `dtype`, the softmax
    in float32. T is split into equal slices, as many as the largest divisor of T that is at most
    `chunks`. Reverse mode only (the gradient is formed in the forward pass): `jax.grad`, not
    `jax.jvp`.

    On a multi-device mesh XLA all-reduces the head's gradient once per slice, not once per step:
    a few slices (the default 8) keep that small next to the matmuls.
    """
    T = x_BTD.shape[1]
    chunks = max(d for d in range(1, max(1, min(chunks, T)) + 1) if T % d == 0)
    if weights_BT is None:
        weights_BT = jnp.ones(targets_BT.shape, jnp.float32)
    weights_BT = jax.lax.stop_gradient(weights_BT.astype(jnp.float32))  # data, never a variable
    loss_sum = _fused(
        x_BTD, wte_VD, targets_BT, weights_BT, vocab_size, chunks, jnp.dtype(dtype), float(softcap)
    )
    return loss_sum, weights_BT.sum()


def _time_slices(x, chunks: int):
    """(B, T, ...) -> (chunks, B, T/chunks, ...): the scan axis first, the batch axis kept."""
    B, T = x.shape[:2]
    return x.reshape(B, chunks, T // chunks, *x.shape[2:]).swapaxes(0, 1)


def _slice_logits(x_BCD, wte_VD, vocab_size, dtype, softcap):
    """(logits, d logits / d raw logits or None): the soft-cap's derivative is 1 - tanh^2, taken
    from the finite pre-mask values so that padded entries (-inf) give 0, not NaN."""
    raw_BCV = head_matmul(x_BCD, wte_VD, dtype)
    if not softcap:
        return mask_padded_logits(raw_BCV, vocab_size), None
    tanh_BCV = jnp.tanh(raw_BCV / softcap)
    return mask_padded_logits(softcap * tanh_BCV, vocab_size), 1 - tanh_BCV * tanh_BCV


def _slice_loss(logits_BCV, targets_BC, weights_BC):
    """Per-token losses and the softmax, sharing one max and one exp pass over the slice."""
    max_BC1 = logits_BCV.max(-1, keepdims=True)
    exp_BCV = jnp.exp(logits_BCV - max_BC1)
    sum_BC1 = exp_BCV.sum(-1, keepdims=True)
    target_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], -1)[..., 0]
    losses_BC = (max_BC1[..., 0] + jnp.log(sum_BC1[..., 0]) - target_BC) * weights_BC
    return losses_BC.sum(), exp_BCV / sum_BC1


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(x_BTD, wte_VD, targets_BT, weights_BT, vocab_size, chunks, dtype, softcap):
    """Loss only (evaluation): one slice of logits at a time, no gradient work."""

    def body(total, xs):
        x_BCD, t_BC, w_BC = xs
        logits_BCV, _ = _slice_logits(x_BCD, wte_VD, vocab_size, dtype, softcap)
        loss, _ = _slice_loss(logits_BCV, t_BC, w_BC)
        return total + loss, None

    xs = tuple(_time_slices(a, chunks) for a in (x_BTD, targets_BT, weights_BT))
    return jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)[0]


def _fused_fwd(x_BTD, wte_VD, targets_BT, weights_BT, vocab_size, chunks, dtype, softcap):
    """Loss and both gradients, slice by slice: d loss / d logits = (softmax - onehot) * weight,
    times 1 - tanh^2 under the soft-cap."""
    V = wte_VD.shape[0]

    def body(carry, xs):
        total, dwte_VD = carry
        x_BCD, t_BC, w_BC = xs
        logits_BCV, dcap_BCV = _slice_logits(x_BCD, wte_VD, vocab_size, dtype, softcap)
        loss, softmax_BCV = _slice_loss(logits_BCV, t_BC, w_BC)
        dlogits_BCV = (softmax_BCV - jax.nn.one_hot(t_BC, V, dtype=jnp.float32)) * w_BC[..., None]
        if dcap_BCV is not None:
            dlogits_BCV = dlogits_BCV * dcap_BCV
        dlogits_BCV = dlogits_BCV.astype(dtype)
        dx_BCD = jnp.einsum(
            "bcv,vd->bcd", dlogits_BCV, wte_VD.astype(dtype), preferred_element_type=jnp.float32
        )
        dwte_VD = dwte_VD + jnp.einsum(
            "bcv,bcd->vd", dlogits_BCV, x_BCD.astype(dtype), preferred_element_type=jnp.float32
        )
        return (total + loss, dwte_VD), dx_BCD

    xs = tuple(_time_slices(a, chunks) for a in (x_BTD, targets_BT, weights_BT))
    init = (jnp.zeros((), jnp.float32), jnp.zeros(wte_VD.shape, jnp.float32))
    (loss_sum, dwte_VD), dx_KBCD = jax.lax.scan(body, init, xs)
    dx_BTD = dx_KBCD.swapaxes(0, 1).reshape(x_BTD.shape)
    return loss_sum, (dx_BTD.astype(x_BTD.dtype), dwte_VD.astype(wte_VD.dtype))


def _fused_bwd(vocab_size, chunks, dtype, softcap, residuals, g):
    dx_BTD, dwte_VD = residuals
    return g * dx_BTD, g * dwte_VD, None, None  # targets and weights are data


_fused.defvjp(_fused_fwd, _fused_bwd)
