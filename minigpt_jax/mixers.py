"""Token mixers beside attention: gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, arXiv 2412.06464).

Per head, a fast-weight matrix S (key width x value width) is decayed, then corrected towards the
new key-value pair by one step of the delta rule, and read by the query:

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,      o_t = S_t^T q_t

with a_t = exp(-A softplus(W_a x + dt_bias)) in (0, 1) (Mamba-2's gate) and b_t = sigmoid(W_b x).
The delta rule writes a key's value over whatever the state held for it, which is what makes it
strong at associative recall compared with purely additive linear attention (Mamba-2, RetNet).

Two forms of the same function:
- training and prefill: chunkwise. Inside a chunk of C tokens the recurrence unrolls to
  S_t = g_t S_0 + sum_{i<=t} (g_t / g_i) k_i w_i^T, where the pseudo-values w solve the unit lower
  triangular system (I + A) w = b v - b g K S_0 (the WY form; A_ti = b_t (g_t/g_i) k_t.k_i, i < t).
  Everything that does not depend on S_0 is batched matmuls and one C x C triangular inverse over
  all chunks at once; only three (C x K) @ (K x K) products per chunk run in a `lax.scan`.
- decoding: the recurrence itself, one token at a time, with a fixed-size state per layer.

Decays are kept in log space and only ever exponentiated as differences g_t - g_i with i <= t, so
every exponent is <= 0 in float32. Document resets (a separator token, or the first real column of
a left-padded prompt) are masks on those decays: nothing crosses a reset, in the state or the
short convolution.

Shape suffixes as in model.py, plus N chunks, C chunk length, W convolution taps - 1.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

CONV_WIDTH = 4  # the short causal convolution on q, k, v that every modern linear RNN uses
CHUNK = 64  # tokens per chunk in the chunkwise form (FLA's default)


class DeltaState(flax.struct.PyTreeNode):
    """What a gated DeltaNet layer carries between decode steps: independent of context length."""

    S_BHKK: jax.Array  # float32 fast weights, key width x value width per head
    conv_BWC: jax.Array  # the last CONV_WIDTH - 1 inputs of the short convolution (q, k, v)

    @classmethod
    def zeros(cls, batch: int, n_embd: int, n_head: int, dtype: Any) -> DeltaState:
        K = n_embd // n_head
        return cls(
            S_BHKK=jnp.zeros((batch, n_head, K, K), jnp.float32),
            conv_BWC=jnp.zeros((batch, CONV_WIDTH - 1, 3 * n_embd), dtype),
        )


def delta_rule_recurrent(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHK: jax.Array,
    log_a_BTH: jax.Array,
    b_BTH: jax.Array,
    reset_BT: jax.Array,
    S_BHKK: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The recurrence token by token (decoding; and the reference the chunked form is tested on)."""

    def step(S_BHKK, inputs):
        q_BHK, k_BHK, v_BHK, log_a_BH, b_BH, reset_B = inputs
        S_BHKK = jnp.where(reset_B[:, None, None, None], 0.0, S_BHKK)
        S_BHKK = jnp.exp(log_a_BH)[..., None, None] * S_BHKK
        err_BHK = v_BHK - jnp.einsum("bhkv,bhk->bhv", S_BHKK, k_BHK)
        S_BHKK = S_BHKK + jnp.einsum("bhk,bhv->bhkv", b_BH[..., None] * k_BHK, err_BHK)
        return S_BHKK, jnp.einsum("bhkv,bhk->bhv", S_BHKK, q_BHK)

    xs = (q_BTHK, k_BTHK, v_BTHK, log_a_BTH, b_BTH, reset_BT)
    S_BHKK, o_TBHK = jax.lax.scan(step, S_BHKK, jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), xs))
    return jnp.moveaxis(o_TBHK, 0, 1), S_BHKK


def delta_rule_chunked(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHK: jax.Array,
    log_a_BTH: jax.Array,
    b_BTH: jax.Array,
    reset_BT: jax.Array,
    S_BHKK: jax.Array,
    chunk: int = CHUNK,
) -> tuple[jax.Array, jax.Array]:
    """The same function as `delta_rule_recurrent`, chunkwise (see the module doc)."""
    B, T, H, K = q_BTHK.shape
    C = min(chunk, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:  # padded tokens write nothing (b = 0, k = 0) and decay nothing (log a = 0)
        q_BTHK, k_BTHK, v_BTHK, log_a_BTH, b_BTH, reset_BT = (
            jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
            for x in (q_BTHK, k_BTHK, v_BTHK, log_a_BTH, b_BTH, reset_BT)
        )

    def chunks(x):  # B (N C) ... -> N B H C ...
        x = x.reshape(B, N, C, *x.shape[2:])
        return jnp.moveaxis(x, 3, 2).swapaxes(0, 1) if x.ndim > 3 else x.swapaxes(0, 1)

    q_NBHCK, k_NBHCK, v_NBHCK = chunks(q_BTHK), chunks(k_BTHK), chunks(v_BTHK)
    log_a_NBHC, b_NBHC = chunks(log_a_BTH), chunks(b_BTH)
    reset_NBC = chunks(reset_BT)
    # Segment ids: a token sees the state of tokens with its own id only. The state entering a chunk
    # belongs to the segment before the chunk's first token.
    seg_NBC = chunks(jnp.cumsum(reset_BT, axis=1))
    seg_in_NB = seg_NBC[..., 0] - reset_NBC[..., 0]
    g_NBHC = jnp.cumsum(log_a_NBHC, axis=-1)  # log of the decay from the chunk's start
    same_NB1CC = (seg_NBC[..., :, None] == seg_NBC[..., None, :])[:, :, None]
    causal_CC = jnp.tril(jnp.ones((C, C), bool))
    gdiff_NBHCC = g_NBHC[..., :, None] - g_NBHC[..., None, :]
    decay_NBHCC = jnp.exp(jnp.where(causal_CC & same_NB1CC, gdiff_NBHCC, -jnp.inf))
    from_in_NBHC = jnp.where((seg_NBC == seg_in_NB[..., None])[:, :, None], jnp.exp(g_NBHC), 0.0)
    seg_end_NB = seg_NBC[..., -1]
    to_end_NBHC = jnp.where(
        (seg_NBC == seg_end_NB[..., None])[:, :, None],
        jnp.exp(g_NBHC[..., -1:] - g_NBHC),
        0.0,
    )
    end_NBH = jnp.where((seg_end_NB == seg_in_NB)[..., None], jnp.exp(g_NBHC[..., -1]), 0.0)

    # WY form: [U | W] = (I + A)^-1 [b v | b g k], then w = U - W S_0 once S_0 is known.
    bk_NBHCK = b_NBHC[..., None] * k_NBHCK
    kk_NBHCC = jnp.einsum("nbhck,nbhdk->nbhcd", bk_NBHCK, k_NBHCK)
    A_NBHCC = jnp.where(jnp.tril(causal_CC, -1), kk_NBHCC * decay_NBHCC, 0.0)
    rhs_NBHCX = jnp.concatenate(
        [b_NBHC[..., None] * v_NBHCK, (from_in_NBHC[..., None] * bk_NBHCK)], axis=-1
    )
    sol_NBHCX = unit_lower_inverse(A_NBHCC) @ rhs_NBHCX
    U_NBHCK, W_NBHCK = sol_NBHCX[..., :K], sol_NBHCX[..., K:]
    qk_NBHCC = jnp.einsum("nbhck,nbhdk->nbhcd", q_NBHCK, k_NBHCK) * decay_NBHCC
    qin_NBHCK = from_in_NBHC[..., None] * q_NBHCK
    kout_NBHCK = to_end_NBHC[..., None] * k_NBHCK

    def step(S_BHKK, xs):
        U_BHCK, W_BHCK, qk_BHCC, qin_BHCK, kout_BHCK, end_BH = xs
        w_BHCK = U_BHCK - W_BHCK @ S_BHKK
        o_BHCK = qin_BHCK @ S_BHKK + qk_BHCC @ w_BHCK
        S_BHKK = end_BH[..., None, None] * S_BHKK + kout_BHCK.swapaxes(-1, -2) @ w_BHCK
        return S_BHKK, o_BHCK

    xs = (U_NBHCK, W_NBHCK, qk_NBHCC, qin_NBHCK, kout_NBHCK, end_NBH)
    S_BHKK, o_NBHCK = jax.lax.scan(step, S_BHKK, xs)
    o_BTHK = jnp.moveaxis(o_NBHCK.swapaxes(0, 1), 2, 3).reshape(B, N * C, H, K)
    return o_BTHK[:, :T], S_BHKK


@jax.custom_vjp
def unit_lower_inverse(A_XCC: jax.Array) -> jax.Array:
    """(I + A)^-1 for strictly lower triangular A (batched over leading axes), by forward
    substitution: C row updates, each one batched matrix-vector product.

    Not `lax.linalg.triangular_solve`: on CPU its kernel waits on XLA's own thread pool for its
    batch and deadlocks when two solves run at once on a 2-thread pool (seen with jaxlib 0.10.2).
    The custom VJP (d(T) = -T dA T) keeps the backward pass to two matmuls instead of storing
    every row update.
    """
    return _unit_lower_inverse_fwd(A_XCC)[0]


def _unit_lower_inverse_fwd(A_XCC: jax.Array) -> tuple[jax.Array, jax.Array]:
    C = A_XCC.shape[-1]
    eye_CC = jnp.eye(C, dtype=A_XCC.dtype)

    def row(i, T_XCC):  # T[i] = e_i - A[i, :i] T[:i]; rows >= i of T are still zero
        A_i_X1C = jax.lax.dynamic_slice_in_dim(A_XCC, i, 1, axis=-2)
        T_i_X1C = jax.lax.dynamic_slice_in_dim(eye_CC, i, 1, axis=0) - A_i_X1C @ T_XCC
        return jax.lax.dynamic_update_slice_in_dim(T_XCC, T_i_X1C, i, axis=-2)

    T_XCC = jax.lax.fori_loop(0, C, row, jnp.zeros_like(A_XCC))
    return T_XCC, T_XCC


def _unit_lower_inverse_bwd(T_XCC: jax.Array, g_XCC: jax.Array) -> tuple[jax.Array]:
    T_t = T_XCC.swapaxes(-1, -2)
    strict_CC = jnp.tril(jnp.ones(T_XCC.shape[-2:], bool), -1)
    return (jnp.where(strict_CC, -(T_t @ g_XCC @ T_t), 0.0),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def _short_conv(
    x_BTC: jax.Array, kernel_WC: jax.Array, reset_BT: jax.Array, prev_BWC: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Depthwise causal convolution that reads no input from before a reset; and its next state."""
    Wm1 = prev_BWC.shape[1]
    T = x_BTC.shape[1]
    ext_BEC = jnp.concatenate([prev_BWC.astype(x_BTC.dtype), x_BTC], axis=1)
    reset_BE = jnp.pad(reset_BT, [(0, 0), (Wm1, 0)])
    seg_BE = jnp.cumsum(reset_BE, axis=1)
    y_BTC = jnp.zeros_like(x_BTC)
    for j in range(Wm1 + 1):  # tap j reads x_{t-j}: CONV_WIDTH shifted adds, not a loop over time
        same_BT = seg_BE[:, Wm1 - j : Wm1 - j + T] == seg_BE[:, Wm1:]
        tap_BTC = ext_BEC[:, Wm1 - j : Wm1 - j + T]
        y_BTC = y_BTC + jnp.where(same_BT[..., None], tap_BTC, 0) * kernel_WC[Wm1 - j]
    # The carried inputs: those after the last reset only (zero inputs are no inputs).
    tail_same_BW = seg_BE[:, -Wm1:] == seg_BE[:, -1:]
    next_BWC = jnp.where(tail_same_BW[..., None], ext_BEC[:, -Wm1:], 0)
    return y_BTC, next_BWC


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _log_uniform_dt_bias(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Mamba's dt initialisation: softplus(dt_bias) log-uniform in [1e-3, 1e-1]."""
    lo, hi = math.log(1e-3), math.log(1e-1)
    dt = jnp.maximum(jnp.exp(jax.random.uniform(key, shape, dtype, lo, hi)), 1e-4)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus


def _log_A(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0))


class GatedDeltaNet(nn.Module):
    """Gated DeltaNet token mixer, a drop-in for attention in a pre-norm block.

    q, k, v: one projection, a short causal convolution, SiLU; q and k L2-normalised per head (q
    also scaled by 1/sqrt(K)). Output: per-head RMSNorm, gated by SiLU(W_g x), then `c_proj` (as
    FLA's reference layer, with value width = key width so that the state is H x K x K).
    `proj_init` is the output projection's initialiser (the model's residual scaling).
    """

    n_embd: int
    n_head: int
    dtype: Any = jnp.float32
    proj_init: Any = nn.initializers.normal(0.02)
    chunk: int = CHUNK

    @nn.compact
    def __call__(
        self, x_BTD: jax.Array, reset_BT: jax.Array, state: DeltaState | None = None
    ) -> tuple[jax.Array, DeltaState]:
        """Outputs and the state after the last token; `state=None` starts from zeros.

        `reset_BT` marks tokens that start a document: nothing before them is seen.
        """
        B, T, D = x_BTD.shape
        H, K = self.n_head, D // self.n_head
        if state is None:
            state = DeltaState.zeros(B, D, H, self.dtype)

        def dense(features, name, init=None):
            return nn.Dense(
                features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                kernel_init=init or nn.initializers.normal(0.02), name=name,
            )

        qkv_BTC = dense(3 * D, "c_qkv")(x_BTD)
        conv_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=0)
        kernel_WC = self.param("conv", conv_init, (CONV_WIDTH, 3 * D), jnp.float32)
        qkv_BTC, conv_BWC = _short_conv(
            qkv_BTC, kernel_WC.astype(qkv_BTC.dtype), reset_BT, state.conv_BWC
        )
        qkv_BTC = nn.silu(qkv_BTC).astype(jnp.float32)  # the recurrence runs in float32
        q_BTHK, k_BTHK, v_BTHK = (t.reshape(B, T, H, K) for t in jnp.split(qkv_BTC, 3, axis=-1))
        q_BTHK = _l2_normalize(q_BTHK) / math.sqrt(K)
        k_BTHK = _l2_normalize(k_BTHK)

        A_log_H = self.param("A_log", _log_A, (H,), jnp.float32)
        dt_bias_H = self.param("dt_bias", _log_uniform_dt_bias, (H,), jnp.float32)
        a_BTH = dense(H, "c_a")(x_BTD).astype(jnp.float32)
        log_a_BTH = -jnp.exp(A_log_H) * jax.nn.softplus(a_BTH + dt_bias_H)
        b_BTH = jax.nn.sigmoid(dense(H, "c_b")(x_BTD).astype(jnp.float32))

        rule = delta_rule_recurrent if T == 1 else delta_rule_chunked
        o_BTHK, S_BHKK = rule(q_BTHK, k_BTHK, v_BTHK, log_a_BTH, b_BTH, reset_BT, state.S_BHKK)

        scale_K = self.param("o_norm", nn.initializers.ones, (K,), jnp.float32)
        o_BTHK = o_BTHK * jax.lax.rsqrt(jnp.mean(o_BTHK**2, -1, keepdims=True) + 1e-5) * scale_K
        gate_BTD = nn.silu(dense(D, "c_gate")(x_BTD).astype(jnp.float32))
        y_BTD = (o_BTHK.reshape(B, T, D) * gate_BTD).astype(self.dtype)
        y_BTD = dense(D, "c_proj", self.proj_init)(y_BTD)
        return y_BTD, DeltaState(S_BHKK=S_BHKK, conv_BWC=conv_BWC.astype(state.conv_BWC.dtype))


def gated_deltanet_flops_per_token(n_embd: int, n_head: int, seq_len: int) -> float:
    """Training FLOPs per token of one layer's recurrence (the projections are in 6N).

    Per head and token, forward: chunk-local k.k, q.k and the intra-chunk product, each 2CK; the
    inverse (C row updates of 2C^2) 2C^2; applying it to [v | k], 4CK; against the carried state,
    W S, q S and the state update, each 2K^2. Dense as executed, like the attention term of PaLM's
    formula; x3 to train.
    """
    C, K = min(CHUNK, seq_len), n_embd // n_head
    return 3 * n_head * (10 * C * K + 2 * C * C + 6 * K * K)
