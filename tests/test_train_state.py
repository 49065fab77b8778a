import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.train_state import (
    create_train_state,
    decay_mask,
    flops_per_token,
    make_eval_step,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
)

TINY = GPTConfig.preset("tiny", vocab_size=257, block_size=32)


def setup(lr: float = 1e-3, warmup: int = 2, total: int = 100):
    model = GPT(TINY)
    tx = make_optimizer(make_lr_schedule(lr, lr / 10, warmup, total))
    state = create_train_state(model, tx, jax.random.key(0))
    return model, tx, state


def batch_of(rows: int, seed: int = 0, with_weights: bool = False):
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, TINY.vocab_size, (rows, TINY.block_size + 1)).astype(np.int32)
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
    if with_weights:  # uneven masks: micro-batches count different numbers of tokens
        batch["weights"] = (
            rng.random((rows, TINY.block_size)) < np.linspace(0.1, 0.9, rows)[:, None]
        )
        batch["weights"] = batch["weights"].astype(np.float32)
    return batch


def test_lr_schedule_warmup_then_cosine_to_min():
    schedule = make_lr_schedule(6e-4, 6e-5, warmup_steps=10, total_steps=110)
    np.testing.assert_allclose(schedule(0), 6e-5, rtol=1e-5)  # first step already learns
    np.testing.assert_allclose(schedule(4), 3e-4, rtol=1e-5)
    np.testing.assert_allclose(schedule(9), 6e-4, rtol=1e-5)  # peak at the last warmup step
    np.testing.assert_allclose(
        schedule(59), 6e-5 + 0.5 * (6e-4 - 6e-5), rtol=1e-4
    )  # cosine midpoint
    np.testing.assert_allclose(schedule(109), 6e-5, rtol=1e-5)  # last step at min_lr
    np.testing.assert_allclose(schedule(500), 6e-5, rtol=1e-5)


def test_lr_schedule_wsd_holds_lr_then_cools_down_linearly_to_min():
    schedule = make_lr_schedule(6e-4, 6e-5, 10, 110, shape="wsd", cooldown_frac=0.2)
    np.testing.assert_allclose(schedule(4), 3e-4, rtol=1e-5)  # the same warmup as cosine
    np.testing.assert_allclose([schedule(s) for s in (9, 50, 87)], 6e-4, rtol=1e-5)  # stable
    np.testing.assert_allclose(schedule(98), 6e-5 + 0.5 * (6e-4 - 6e-5), rtol=1e-4)  # linear
    np.testing.assert_allclose(schedule(109), 6e-5, rtol=1e-5)  # last step at min_lr
    # The point of WSD: a longer run takes the same steps until its own cooldown begins, so a run
    # extended on resume (or a stable checkpoint branched into a cooldown) changes no step taken.
    longer = make_lr_schedule(6e-4, 6e-5, 10, 220, shape="wsd", cooldown_frac=0.2)
    steps = np.arange(88)
    np.testing.assert_allclose([longer(s) for s in steps], [schedule(s) for s in steps], rtol=1e-6)
    cosine, cosine_longer = (make_lr_schedule(6e-4, 6e-5, 10, n) for n in (110, 220))
    assert abs(float(cosine_longer(50)) - float(cosine(50))) > 1e-5  # cosine changes them
    # A pure cooldown (a branch from a stable checkpoint), with or without a warmup before it.
    pure = make_lr_schedule(1.0, 0.0, 0, 5, shape="wsd", cooldown_frac=1.0)
    np.testing.assert_allclose([pure(s) for s in range(5)], [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-6)
    warm = make_lr_schedule(1.0, 0.0, 2, 6, shape="wsd", cooldown_frac=1.0)
    np.testing.assert_allclose([warm(s) for s in range(6)], [0.5, 1.0, 0.75, 0.5, 0.25, 0.0],
                               atol=1e-6)
    tiny = make_lr_schedule(1.0, 0.1, 0, 3, shape="wsd", cooldown_frac=0.01)  # rounds to 0 steps
    assert float(tiny(2)) == pytest.approx(0.1) and float(tiny(1)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="linear"):
        make_lr_schedule(6e-4, 6e-5, 10, 110, shape="linear")


def test_weight_decay_only_on_matrices_and_embeddings():
    _, _, state = setup()
    mask = decay_mask(state.params)
    assert mask["wte"]["embedding"] and mask["wpe"]["embedding"]
    assert mask["h_0"]["attn"]["c_attn"]["kernel"] and mask["h_1"]["mlp"]["c_proj"]["kernel"]
    assert not mask["h_0"]["attn"]["c_attn"]["bias"]
    assert not mask["h_0"]["ln_1"]["scale"] and not mask["ln_f"]["bias"]


def test_weight_decay_shrinks_matrices_not_biases():
    """With zero gradients, AdamW's decoupled decay alone moves only the masked-in leaves."""
    _, tx, state = setup(lr=0.1, warmup=0)
    params = jax.tree.map(lambda p: jnp.ones_like(p), state.params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(updates["h_0"]["attn"]["c_attn"]["kernel"][0, 0]) < 0
    assert float(updates["h_0"]["attn"]["c_attn"]["bias"][0]) == 0
    assert float(updates["ln_f"]["scale"][0]) == 0


@pytest.mark.parametrize("with_weights", [False, True])
def test_gradient_accumulation_equals_one_big_batch(with_weights):
    model, tx, state = setup()
    batch = batch_of(8, with_weights=with_weights)
    one, m1 = jax.jit(make_train_step(model, tx, 1))(state, batch)
    four, m4 = jax.jit(make_train_step(model, tx, 4))(state, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), one.params, four.params)
    assert int(one.step) == int(four.step) == 1


@pytest.mark.parametrize("with_weights", [False, True])
def test_fused_head_loss_equals_full_logits(with_weights):
    """The fused head + loss (time slices, gradients formed in the forward pass) takes the same
    step as the full-logits loss, with accumulation and masks; eval sums agree too. 257 -> 320
    padded vocabulary, so the padded rows are exercised."""
    model, tx, state = setup()
    batch = batch_of(8, with_weights=with_weights)
    full, m_full = jax.jit(make_train_step(model, tx, 2))(state, batch)
    fused, m_fused = jax.jit(make_train_step(model, tx, 2, loss_chunks=4))(state, batch)
    np.testing.assert_allclose(m_full["loss"], m_fused["loss"], rtol=1e-5)
    np.testing.assert_allclose(m_full["grad_norm"], m_fused["grad_norm"], rtol=1e-4)
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6)  # noqa: E731
    jax.tree.map(close, full.params, fused.params)
    e_full = jax.jit(make_eval_step(model))(state.params, batch)
    e_fused = jax.jit(make_eval_step(model, loss_chunks=5))(state.params, batch)  # -> 4 slices
    np.testing.assert_allclose(e_full["loss_sum"], e_fused["loss_sum"], rtol=1e-5)
    assert float(e_full["tokens"]) == float(e_fused["tokens"])


def test_fused_head_loss_equals_full_logits_in_bfloat16():
    """Both paths run the head's matmuls in the compute dtype with float32 accumulation."""
    from minigpt_jax.train_state import batch_loss

    cfg = GPTConfig.preset("tiny", vocab_size=257, block_size=32, compute_dtype="bfloat16")
    model = GPT(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    batch = batch_of(4)

    def loss(p, chunks):
        total, count = batch_loss(model, p, batch, chunks)
        return total / count

    (full, g_full), (fused, g_fused) = (
        jax.value_and_grad(loss)(params, n) for n in (0, 4)
    )
    np.testing.assert_allclose(full, fused, rtol=1e-3)
    np.testing.assert_allclose(
        g_full["wte"]["embedding"], g_fused["wte"]["embedding"], atol=1e-3, rtol=5e-2
    )


def test_fused_head_loss_in_bfloat16_tracks_float32():
    from minigpt_jax.loss import head_cross_entropy

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 64)), jnp.float32)
    wte = jnp.asarray(0.05 * rng.normal(size=(320, 64)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 257, (2, 16)), jnp.int32)

    def loss(x, wte, dtype):
        return head_cross_entropy(x, wte, targets, vocab_size=257, chunks=4, dtype=dtype)[0]

    (l32, g32), (l16, g16) = (
        jax.value_and_grad(loss, (0, 1))(x, wte, d) for d in (jnp.float32, jnp.bfloat16)
    )
    np.testing.assert_allclose(l16, l32, rtol=1e-2)
    assert g16[1].dtype == jnp.float32  # gradients come back in the parameters' dtype
    np.testing.assert_allclose(g16[1], g32[1], atol=2e-2)
    np.testing.assert_array_equal(g32[1][257:], 0.0)  # padded rows never get a gradient


def test_micro_batches_must_divide_the_batch():
    model, tx, state = setup()
    with pytest.raises(ValueError, match="micro-batches"):
        make_train_step(model, tx, 3)(state, batch_of(8))


def test_small_model_overfits_one_batch():
    model, tx, state = setup(lr=3e-3, warmup=5, total=150)
    step = jax.jit(make_train_step(model, tx), donate_argnums=0)
    batch = batch_of(4)
    for _ in range(150):
        state, metrics = step(state, batch)
    assert float(metrics["loss"]) < 0.2  # from ln(257) = 5.55


def test_eval_step_sums_combine_exactly():
    model, _, state = setup()
    eval_step = jax.jit(make_eval_step(model))
    batch = batch_of(4)
    whole = eval_step(state.params, batch)
    halves = [eval_step(state.params, {k: v[i : i + 2] for k, v in batch.items()}) for i in (0, 2)]
    assert float(whole["tokens"]) == 4 * TINY.block_size
    np.testing.assert_allclose(
        whole["loss_sum"], sum(float(h["loss_sum"]) for h in halves), rtol=1e-6
    )


def test_flops_per_token_matches_a_hand_count_and_xla():
    """TINY (2 layers, width 64, 32-token windows, 257 ids): training FLOPs per token, by hand.

    Matmul weights: per layer qkv 64x192 + proj 64x64 + mlp 64x256 + 256x64 = 49152, x 2 layers,
    + the tied head 257x64 = 16448 -> 114752; biases and LayerNorms 2 x 832 + ln_f 128 = 1792.
    6 FLOPs per weight per token (forward 2, backward 4) -> 6 x 116544 = 699264, plus attention
    scores and their use, q.k and p.v: 2 x 2 x 64 x 32 per layer forward, x 3 x 2 layers = 49152.
    """
    assert flops_per_token(TINY, 32) == 699_264 + 49_152

    # XLA's own count of the compiled forward pass (matmuls over the padded 320-row head, plus the
    # elementwise work) is about a third of that: the backward pass costs twice the forward.
    model = GPT(TINY)
    x = jnp.zeros((2, 32), jnp.int32)
    params = model.init(jax.random.key(0), x)["params"]
    compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    forward_per_token = cost["flops"] / x.size
    assert forward_per_token == pytest.approx(flops_per_token(TINY, 32) / 3, rel=0.1)
