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


def stretch_positions(pos_BT: jax.Array, gap_BT: jax.Array) -> jax.Array:
    """Positions whose consecutive steps are `gap_BT` instead of 1, restarting where `pos_BT` does.

    `pos_BT` counts from each document's start (0 at the start); the stretched position of token t
    is the sum of the gaps of the tokens after its document's start, up to t. Randomized
    positions (Ruoss et al. 2023) draw the gaps at random in training: the order of tokens stays,
    exact distances do not, and longer sequences' distances get trained.
    """
    cum_BT = jnp.cumsum(gap_BT, axis=1)
    return cum_BT - jnp.take_along_axis(cum_BT, _document_start(pos_BT), axis=1)


def random_gaps(key: jax.Array, pos_BT: jax.Array, gap_max: int) -> jax.Array:
    """Gaps for `stretch_positions`: each document draws a scale s in 1..gap_max, then each of its
    gaps is drawn from 1..s. Documents of every density are trained, gap 1 throughout (what
    evaluation uses) among them, so a long test sequence's distances were seen in training at a
    higher scale; one fixed range of gaps trained only the mean density (val loss 2.13 against
    0.19 with plain RoPE after 600 arithmetic steps: evaluation at gap 1 was out of distribution).
    """
    scale_key, gap_key = jax.random.split(key)
    scale_BT = jnp.take_along_axis(  # every token takes its document's first token's draw
        jax.random.randint(scale_key, pos_BT.shape, 1, gap_max + 1), _document_start(pos_BT), axis=1
    )
    return 1 + jnp.floor(jax.random.uniform(gap_key, pos_BT.shape) * scale_BT).astype(jnp.int32)


def _document_start(pos_BT: jax.Array) -> jax.Array:
    """The column where each token's document starts, from positions counted from it."""
    return jnp.arange(pos_BT.shape[1])[None] - pos_BT
