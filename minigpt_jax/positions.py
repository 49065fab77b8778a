"""Rotary position embeddings (RoPE, Su et al. 2021), the model's alternative to a position table.

Each pair of a head's channels is rotated by an angle proportional to the token's position, so the
score q_t . k_s depends on t - s only: attention sees relative positions and nothing is learned.
The same rotation serves training (per-document positions under document masking) and KV-cache
decoding (each row's positions counted from its own first real column): the model passes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ROPE_BASE = 10_000.0  # as in RoFormer, LLaMA and modded-nanogpt's early records


def rope(x_BTHK: jax.Array, pos_BT: jax.Array, base: float = ROPE_BASE) -> jax.Array:
    """Rotate channel pairs (i, i + K/2) of every head by pos * base^(-2i/K) (GPT-NeoX layout).

    Angles and the rotation run in float32 (positions up to block_size lose no precision); the
    result has `x`'s dtype. `pos_BT` broadcasts over the batch (shape (1, T) for one stream).
    """
    half = x_BTHK.shape[-1] // 2
    inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_BTF = pos_BT.astype(jnp.float32)[..., None] * inv_freq_F
    cos_BT1F, sin_BT1F = jnp.cos(angle_BTF)[:, :, None], jnp.sin(angle_BTF)[:, :, None]
    x = x_BTHK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x1 * sin_BT1F + x2 * cos_BT1F], axis=-1)
    return out.astype(x_BTHK.dtype)
