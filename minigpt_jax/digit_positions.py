"""Digit positions (Abacus embeddings, McLeish et al. 2024): where a digit sits within its number.

A learned absolute position ties each arithmetic step to a column index it saw in training, so a
model trained on 10-digit numbers has nothing to say about the 11th column. Abacus gives every
digit token one more embedding: its 1-based index within its run of consecutive digit tokens (the
number it belongs to), whatever its position in the text. Digits with the same index in two
operands share that embedding, so "the i-th digit of the other number" is one attention lookup
that is the same for every i. Training adds one random offset k in [0, offset_max) per sequence to
every index, so the embeddings of indices beyond the trained lengths are trained too (as the same
relative pattern); evaluation uses k = 0.

Which token ids are digits comes from the tokenizer (`digit_token_ids`: ids that decode to a single
ASCII digit, for the byte tokenizer and BPE alike) and lives in GPTConfig, so a checkpoint's model
config is all that generation needs. The index is a running count, so decoding with a KV cache
carries one integer per row (the length of the digit run the last token ended) and never looks
back.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DIGITS = frozenset("0123456789")


def digit_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids whose decoded text is exactly one ASCII digit, ascending.

    A BPE token such as "12" or " 3" is not one of them: its digits are not one index each, so it
    gets no digit position (the byte tokenizer has exactly the ten ids 48..57).
    """
    eot = getattr(tokenizer, "eot_id", None)
    return tuple(
        i for i in range(tokenizer.vocab_size) if i != eot and tokenizer.decode([i]) in DIGITS
    )


def digit_indices(
    tokens_BT: jax.Array,
    digit_ids: Sequence[int],
    run_B: jax.Array | None = None,
    offset_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(index_BT, run_B): each digit token's 1-based index within its run of digits plus the row's
    `offset_B` (training's random shift; default 0), 0 for every other token; and the unshifted
    run length at the last column (0 when it is not a digit).

    `run_B` is the run length that ends just before column 0 (a KV-cache decode's state; default
    0): a digit at column 0 then continues that run, so decoding token by token gives the indices
    the whole sequence gives at once.
    """
    B, T = tokens_BT.shape
    is_digit_BT = jnp.isin(tokens_BT, jnp.asarray(digit_ids, tokens_BT.dtype))
    t_T = jnp.arange(T, dtype=jnp.int32)
    before_B = -1 - (jnp.zeros((B,), jnp.int32) if run_B is None else run_B.astype(jnp.int32))
    # The column of the last non-digit at or before each column (a run starts after it).
    last_non_BT = jax.lax.cummax(
        jnp.maximum(jnp.where(is_digit_BT, -(1 << 30), t_T[None]), before_B[:, None]), axis=1
    )
    run_BT = jnp.where(is_digit_BT, t_T[None] - last_non_BT, 0)
    shift_B1 = 0 if offset_B is None else offset_B[:, None]
    return jnp.where(is_digit_BT, run_BT + shift_B1, 0), run_BT[:, -1]
