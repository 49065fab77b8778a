import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minigpt_jax.model import GPT, GPTConfig, count_params

TINY = GPTConfig.preset("tiny", vocab_size=257)


def init(cfg: GPTConfig, seed: int = 0):
    return GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, cfg.block_size), jnp.int32))["params"]


def random_tokens(cfg: GPTConfig, batch: int = 2, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, cfg.block_size), 0, cfg.vocab_size)


def test_logits_at_t_do_not_depend_on_later_tokens():
    params = init(TINY)
    tokens = random_tokens(TINY, batch=1)
    t = 20
    changed = tokens.at[:, t + 1 :].set((tokens[:, t + 1 :] + 7) % TINY.vocab_size)
    a = GPT(TINY).apply({"params": params}, tokens)
    b = GPT(TINY).apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, : t + 1], b[:, : t + 1])
    assert not np.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_gradients_never_flow_from_later_positions():
    """nanodo's causality test, through the position table: row s is used only at position s.

    (The token table is tied to the head, so every row of it reaches every logit.)
    """
    params = init(TINY)
    tokens = random_tokens(TINY, batch=1)
    t = 10

    def logit_sum_at_t(wpe):
        p = {**params, "wpe": {"embedding": wpe}}
        return GPT(TINY).apply({"params": p}, tokens)[0, t, : TINY.vocab_size].sum()

    grad = np.asarray(jax.grad(logit_sum_at_t)(params["wpe"]["embedding"]))
    assert np.all(np.abs(grad[: t + 1]).sum(-1) > 0)
    np.testing.assert_array_equal(grad[t + 1 :], 0.0)


@pytest.mark.parametrize("vocab_size", [257, 50257])
def test_initial_loss_is_uniform(vocab_size):
    cfg = GPTConfig.preset("tiny", vocab_size=vocab_size)
    params = init(cfg)
    tokens = random_tokens(cfg, batch=4)
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    assert abs(float(loss) - math.log(vocab_size)) < 0.1


def test_padded_vocabulary_never_wins():
    cfg = GPTConfig.preset("tiny", vocab_size=50257)
    assert cfg.padded_vocab_size == 50304
    params = init(cfg)
    # Make the padded rows as attractive as possible: they still must not be predicted.
    params["wte"]["embedding"] = params["wte"]["embedding"].at[50257:].set(10.0)
    logits = GPT(cfg).apply({"params": params}, random_tokens(cfg, batch=1))
    assert logits.shape[-1] == 50304
    assert int(logits.argmax(-1).max()) < 50257
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs[..., 50257:].max()) == 0.0


def test_gpt2_parameter_count_and_presets():
    assert count_params(GPTConfig.preset("gpt2")) == 124_439_808
    assert count_params(GPTConfig.preset("gpt2-medium")) == 354_823_168
    assert count_params(GPTConfig.preset("gpt2-large")) == 774_030_080
    assert count_params(GPTConfig.preset("gpt2-xl")) == 1_557_611_200


def test_parameter_names_and_shapes_match_gpt2():
    params = init(TINY)
    D, V = TINY.n_embd, TINY.padded_vocab_size
    assert params["wte"]["embedding"].shape == (V, D)
    assert params["wpe"]["embedding"].shape == (TINY.block_size, D)
    block = params["h_0"]
    assert block["attn"]["c_attn"]["kernel"].shape == (D, 3 * D)  # HF Conv1D is (in, out) too
    assert block["attn"]["c_proj"]["kernel"].shape == (D, D)
    assert block["mlp"]["c_fc"]["kernel"].shape == (D, 4 * D)
    assert block["mlp"]["c_proj"]["kernel"].shape == (4 * D, D)
    assert set(block["ln_1"]) == {"scale", "bias"}
    assert set(params) == {"wte", "wpe", "ln_f"} | {f"h_{i}" for i in range(TINY.n_layer)}


def test_gpt2_initialisation():
    cfg = GPTConfig.preset("tiny", n_layer=8, n_embd=256, n_head=4, vocab_size=257)
    params = init(cfg)
    np.testing.assert_allclose(np.std(params["h_0"]["attn"]["c_attn"]["kernel"]), 0.02, rtol=0.05)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    np.testing.assert_allclose(
        np.std(params["h_0"]["mlp"]["c_proj"]["kernel"]), residual_std, rtol=0.05
    )
    assert not np.any(params["h_0"]["attn"]["c_attn"]["bias"])
    np.testing.assert_array_equal(params["ln_f"]["scale"], 1.0)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = GPTConfig.preset("tiny", vocab_size=257, compute_dtype="bfloat16")
    params = init(cfg)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    tokens = random_tokens(cfg)
    logits = GPT(cfg).apply({"params": params}, tokens)
    assert logits.dtype == jnp.float32
    reference = GPT(TINY).apply({"params": params}, tokens)
    np.testing.assert_allclose(logits, reference, atol=0.05)


def test_remat_changes_memory_not_results():
    params = init(TINY)
    tokens = random_tokens(TINY)

    def loss(cfg, p):
        logits = GPT(cfg).apply({"params": p}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    plain = jax.value_and_grad(lambda p: loss(TINY, p))(params)
    remat = jax.value_and_grad(
        lambda p: loss(GPTConfig.preset("tiny", vocab_size=257, remat=True), p)
    )(params)
    np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain[1], remat[1])


def test_dropout_is_off_by_default_and_random_when_on():
    params = init(TINY)
    tokens = random_tokens(TINY)
    cfg = GPTConfig.preset("tiny", vocab_size=257, dropout=0.5)
    a = GPT(cfg).apply(
        {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    b = GPT(cfg).apply(
        {"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(
        GPT(cfg).apply({"params": params}, tokens), GPT(TINY).apply({"params": params}, tokens)
    )


def test_sequence_longer_than_block_size_is_rejected():
    params = init(TINY)
    with pytest.raises(ValueError, match="block_size"):
        GPT(TINY).apply({"params": params}, jnp.zeros((1, TINY.block_size + 1), jnp.int32))


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="n_head"):
        GPTConfig.preset("tiny", n_head=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        GPTConfig.preset("gpt5")


def test_packed_documents_see_only_themselves_from_position_zero():
    """With doc_sep_id, a document packed after others gets exactly the logits it gets alone at
    position 0; without it, the same packing changes them (the check is not vacuous)."""
    sep = 256
    doc_cfg = GPTConfig.preset("tiny", vocab_size=257, doc_sep_id=sep)
    params = init(doc_cfg)
    rng = np.random.default_rng(0)
    first = [sep, *rng.integers(0, 256, 13)]
    second = [sep, *rng.integers(0, 256, 20)]
    packed = jnp.asarray([first + second])
    alone = jnp.asarray([second])
    got = GPT(doc_cfg).apply({"params": params}, packed)[0, len(first) :]
    want = GPT(doc_cfg).apply({"params": params}, alone)[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The first document is unchanged by what follows it, and equals the plain causal model.
    plain = GPT(TINY).apply({"params": params}, packed)[0]
    np.testing.assert_allclose(
        GPT(doc_cfg).apply({"params": params}, packed)[0, : len(first)],
        plain[: len(first)],
        atol=1e-5,
    )
    assert not np.allclose(plain[len(first) :], want, atol=1e-3)


def test_document_separator_must_be_a_token_and_rules_out_cudnn():
    for bad in (300, -2):
        with pytest.raises(ValueError, match=f"doc_sep_id={bad}: use -1"):
            GPTConfig.preset("tiny", vocab_size=257, doc_sep_id=bad)
    with pytest.raises(ValueError, match="document mask"):
        GPTConfig.preset("tiny", vocab_size=257, doc_sep_id=256, attention_impl="cudnn")
