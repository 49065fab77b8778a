"""Gated DeltaNet: the chunkwise form is the recurrence; causal; blind across document resets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax import mixers
from minigpt_jax.mixers import DeltaState, GatedDeltaNet

B, H, K = 2, 2, 8
D = H * K


def rule_inputs(T: int, seed: int = 0, log_a_scale: float = 1.0, reset_p: float = 0.1):
    ks = jax.random.split(jax.random.key(seed), 7)
    q = mixers._l2_normalize(jax.random.normal(ks[0], (B, T, H, K))) / np.sqrt(K)
    k = mixers._l2_normalize(jax.random.normal(ks[1], (B, T, H, K)))
    v = jax.random.normal(ks[2], (B, T, H, K))
    log_a = -log_a_scale * jax.nn.softplus(jax.random.normal(ks[3], (B, T, H)))
    b = jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H)))
    reset = jax.random.uniform(ks[5], (B, T)) < reset_p
    S0 = jax.random.normal(ks[6], (B, H, K, K))
    return q, k, v, log_a, b, reset, S0


@pytest.mark.parametrize(
    "T,chunk,log_a_scale", [(37, 8, 1.0), (64, 16, 1.0), (5, 64, 1.0), (40, 16, 60.0)]
)
def test_chunked_rule_equals_recurrence(T, chunk, log_a_scale):
    """Lengths off the chunk grid, one partial chunk, and gates that decay to zero within a chunk
    (exp of large negative cumulative sums) all match the token-by-token recurrence."""
    inputs = rule_inputs(T, log_a_scale=log_a_scale)
    o_ref, S_ref = jax.jit(mixers.delta_rule_recurrent)(*inputs)
    o, S = jax.jit(functools.partial(mixers.delta_rule_chunked, chunk=chunk))(*inputs)
    assert np.all(np.isfinite(o))
    np.testing.assert_allclose(o, o_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(S, S_ref, atol=1e-5, rtol=0)


def test_delta_rule_overwrites_a_key():
    """The property the mixer is chosen for: writing a key twice (b = 1, no decay) leaves the second
    value, where additive linear attention would return the sum."""
    k = jnp.zeros((1, 3, 1, 4)).at[0, :, 0, 0].set(1.0)
    v = jnp.zeros((1, 3, 1, 4)).at[0, 0, 0, 1].set(1.0).at[0, 1, 0, 2].set(1.0)
    q = k
    log_a, b = jnp.zeros((1, 3, 1)), jnp.ones((1, 3, 1)).at[0, 2, 0].set(0.0)
    no_reset, S0 = jnp.zeros((1, 3), bool), jnp.zeros((1, 1, 4, 4))
    o, _ = mixers.delta_rule_chunked(q, k, v, log_a, b, no_reset, S0)
    np.testing.assert_allclose(o[0, 2, 0], [0, 0, 1, 0], atol=1e-6)


def layer_and_params(seed: int = 0, chunk: int = 8):
    layer = GatedDeltaNet(n_embd=D, n_head=H, chunk=chunk)
    x = jnp.zeros((1, 4, D))
    params = jax.jit(layer.init)(jax.random.key(seed), x, jnp.zeros((1, 4), bool))["params"]
    return layer, params


def random_x(T: int, seed: int = 3) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (B, T, D))


def test_layer_step_by_step_equals_parallel_with_a_prefill():
    """Decoding form: prefill 13 tokens chunkwise, then one token at a time with the fixed-size
    state (convolution taps included) reproduces the parallel pass over all 29 tokens."""
    layer, params = layer_and_params()
    T, P = 29, 13
    x = random_x(T)
    reset = jnp.zeros((B, T), bool).at[1, 17].set(True)
    apply = jax.jit(layer.apply)
    y_ref, state_ref = apply({"params": params}, x, reset)
    y_pre, state = apply({"params": params}, x[:, :P], reset[:, :P])
    ys = [y_pre]
    step = apply
    for t in range(P, T):
        y_t, state = step({"params": params}, x[:, t : t + 1], reset[:, t : t + 1], state)
        ys.append(y_t)
    np.testing.assert_allclose(jnp.concatenate(ys, 1), y_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(state.S_BHKK, state_ref.S_BHKK, atol=1e-5, rtol=0)
    np.testing.assert_allclose(state.conv_BWC, state_ref.conv_BWC, atol=1e-6, rtol=0)
    assert state.S_BHKK.shape == DeltaState.zeros(B, D, H, jnp.float32).S_BHKK.shape


def test_layer_is_causal():
    layer, params = layer_and_params()
    T, t = 24, 10
    x = random_x(T)
    reset = jnp.zeros((B, T), bool)

    def out_t(x):
        return layer.apply({"params": params}, x, reset)[0][:, t].sum()

    g = np.asarray(jax.jit(jax.grad(out_t))(x))
    assert np.all(np.abs(g[:, : t + 1]).sum(-1) > 0)
    np.testing.assert_array_equal(g[:, t + 1 :], 0.0)


def test_reset_equals_running_documents_separately():
    """Two documents packed in one row, the second starting at a reset, give what each gives alone:
    no state and no convolution tap crosses the boundary (in the chunked and the recurrent form)."""
    layer, params = layer_and_params()
    x = random_x(30)
    cut = 11  # inside the second chunk of 8
    reset = jnp.zeros((B, 30), bool).at[:, cut].set(True)
    apply = jax.jit(layer.apply)
    y_packed, _ = apply({"params": params}, x, reset)
    y_a, _ = apply({"params": params}, x[:, :cut], reset[:, :cut])
    y_b, _ = apply({"params": params}, x[:, cut:], jnp.zeros((B, 30 - cut), bool))
    np.testing.assert_allclose(y_packed[:, :cut], y_a, atol=1e-5, rtol=0)
    np.testing.assert_allclose(y_packed[:, cut:], y_b, atol=1e-5, rtol=0)
    # A state full of an earlier document is forgotten at a reset, in a one-token step too.
    _, dirty = apply({"params": params}, random_x(9, seed=7), jnp.zeros((B, 9), bool))
    first = jnp.ones((B, 1), bool)
    y_step, _ = apply({"params": params}, x[:, cut : cut + 1], first, dirty)
    np.testing.assert_allclose(y_step, y_b[:, :1], atol=1e-5, rtol=0)


def test_flops_grow_linearly_with_context_beyond_a_chunk():
    f = mixers.gated_deltanet_flops_per_token
    assert f(256, 4, 4096) == f(256, 4, 256) == f(256, 4, mixers.CHUNK)
    assert f(256, 4, 16) < f(256, 4, 64)


def test_chunked_gradients_equal_the_recurrence_gradients():
    """The chunked form's backward pass (the triangular inverse has its own VJP) is the
    recurrence's, for every input including the gates."""
    q, k, v, log_a, b, reset, S0 = rule_inputs(21)
    w = jax.random.normal(jax.random.key(9), (B, 21, H, K))

    def loss(rule, *xs):
        o, S = rule(*xs, reset, S0)
        return jnp.sum(o * w) + jnp.sum(S)

    grad = jax.jit(jax.grad(loss, (1, 2, 3, 4, 5)), static_argnums=0)
    ref = grad(mixers.delta_rule_recurrent, q, k, v, log_a, b)
    got = grad(functools.partial(mixers.delta_rule_chunked, chunk=8), q, k, v, log_a, b)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)
