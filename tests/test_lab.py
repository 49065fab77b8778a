"""Architecture switches and Muon: each does what it claims, and every sampled combination works
everywhere the model is used (causality, initial loss, fused loss, KV cache, document masking,
checkpoints and resume, init_from, HF export refusal)."""

from __future__ import annotations

import dataclasses
import math

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import read_metrics

from minigpt_jax import hf, train
from minigpt_jax.generate import sample
from minigpt_jax.layers import mlp_width, rms_normalize
from minigpt_jax.loss import head_cross_entropy, summed_cross_entropy
from minigpt_jax.model import GPT, MODERN, GPTConfig, count_params, head_weight
from minigpt_jax.positions import random_gaps, rope, stretch_positions
from minigpt_jax.train_state import (
    create_train_state,
    flops_per_token,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
    muon_labels,
)

V = 257
BASE = GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=32, block_size=24)

# Each switch alone, the modern stack, and sampled combinations (not the cross product).
SWITCHES = {
    "gpt2": {},
    "rope": dict(pos_emb="rope"),
    "nope": dict(pos_emb="none"),
    "rmsnorm": dict(norm="rmsnorm"),
    "nobias": dict(bias=False),
    "qknorm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "untied": dict(tie_embeddings=False),
    "zeroinit": dict(zero_init_proj=True),
    "softcap": dict(logit_softcap=15.0),
    "modern": MODERN,
    "rope+swiglu+untied": dict(pos_emb="rope", mlp="swiglu", tie_embeddings=False),
    "nope+rmsnorm+qknorm": dict(pos_emb="none", norm="rmsnorm", qk_norm=True),
    "nobias+softcap+layernorm": dict(bias=False, logit_softcap=5.0),
    "modern+swiglu": {**MODERN, "mlp": "swiglu"},
    "modern+learned+tied": {**MODERN, "pos_emb": "learned", "tie_embeddings": True},
    "rope+qknorm+zeroinit": dict(pos_emb="rope", qk_norm=True, zero_init_proj=True),
}


def cfg_of(name: str, **extra) -> GPTConfig:
    return dataclasses.replace(BASE, **{**SWITCHES[name], **extra})


def init(cfg: GPTConfig, seed: int = 0):
    dummy = jnp.zeros((1, cfg.block_size), jnp.int32)
    return jax.jit(GPT(cfg).init)(jax.random.key(seed), dummy)["params"]


def tokens(batch: int, length: int, seed: int = 1) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, V - 1)


def sharpen(params, scale: float = 6.0):
    """Larger weights than at init (zero-initialised projections made non-zero), so greedy
    decoding is not degenerate and every part of the model shapes the logits."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [p * scale + 0.05 * jax.random.normal(k, p.shape)
             for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


# --- each switch does what it claims -------------------------------------------------------------


def test_rope_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

    def score(t, s):
        return float(jnp.sum(rope(q, jnp.array([[t]])) * rope(k, jnp.array([[s]]))))

    assert score(7, 3) == pytest.approx(score(20, 16), abs=1e-4)
    assert score(7, 3) == pytest.approx(score(4, 0), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 5), abs=1e-2)  # the offset matters
    # A rotation: norms are kept.
    np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([[9]]))), jnp.linalg.norm(q),
                               rtol=1e-5)


@pytest.mark.parametrize("name", ["rope", "modern"])
def test_rope_packed_document_gets_the_logits_it_gets_alone(name):
    """Under document masking a RoPE document packed after another one gets exactly its logits
    alone at position 0; without the mask the same packing changes them (not vacuous)."""
    sep = V - 1
    seq = [sep, *np.random.default_rng(0).integers(0, V - 1, 9).tolist()]
    pad = [sep, 5, 6, 7]
    cfg = cfg_of(name, doc_sep_id=sep)
    params = sharpen(init(cfg), 3.0)
    alone = GPT(cfg).apply({"params": params}, jnp.asarray([seq]))[0]
    packed = GPT(cfg).apply({"params": params}, jnp.asarray([pad + seq]))[0, len(pad):]
    np.testing.assert_allclose(packed, alone, atol=1e-4)
    plain = dataclasses.replace(cfg, doc_sep_id=-1)
    seen = GPT(plain).apply({"params": params}, jnp.asarray([pad + seq]))[0, len(pad):]
    assert not np.allclose(seen, alone, atol=1e-3)


def test_stretched_positions_keep_order_and_restart_per_document():
    pos_BT = jnp.asarray([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]])
    gap_BT = jnp.asarray([[5, 2, 3, 7, 1, 4, 2], [9, 1, 1, 3, 1, 1, 1]])
    want = [[0, 2, 5, 0, 1, 5, 7], [0, 1, 2, 5, 6, 7, 8]]
    assert stretch_positions(pos_BT, gap_BT).tolist() == want
    ones = jnp.ones_like(gap_BT)  # gap 1 everywhere gives the positions back
    assert stretch_positions(pos_BT, ones).tolist() == pos_BT.tolist()


def test_random_gaps_draw_one_scale_per_document():
    """Gaps lie in 1..g, and each document draws its own scale s, so about 1/g of documents are
    at gap 1 throughout, as evaluation is (independent gaps would almost never be)."""
    g, docs, length = 5, 4000, 8
    pos_BT = jnp.tile(jnp.arange(length), (docs // 2, 2))  # two documents a row
    gap_BT = random_gaps(jax.random.key(0), pos_BT, g)
    assert int(gap_BT.min()) == 1 and int(gap_BT.max()) == g
    inner = gap_BT.reshape(docs, length)[:, 1:]  # a document's first gap is never used
    ones = float(jnp.mean(jnp.all(inner == 1, axis=1)))
    assert 0.17 < ones < 0.24, ones  # 1/g + (1/g)(1/2)^7 + ... = 0.2016


def test_randomized_rope_gaps_are_training_only():
    """`rope_gap_max`: evaluation (deterministic) is exactly the RoPE model with the same
    parameters; training draws gaps, so two draws give different logits, and a train step runs."""
    sep = V - 1
    cfg = cfg_of("rope", doc_sep_id=sep, rope_gap_max=4)
    params = sharpen(init(cfg), 3.0)
    x = jnp.asarray([[sep, 3, 9, 4, sep, 8, 2, 6, 1, 7]])
    model, plain = GPT(cfg), GPT(dataclasses.replace(cfg, rope_gap_max=0))
    np.testing.assert_array_equal(model.apply({"params": params}, x),
                                  plain.apply({"params": params}, x))

    def train_logits(key):
        return model.apply({"params": params}, x, deterministic=False, rngs={"positions": key})

    a, b = train_logits(jax.random.key(0)), train_logits(jax.random.key(1))
    assert not np.allclose(a, b, atol=1e-3)
    # The train step draws the gaps: its loss is not the gap-free model's on the same state.
    tx = make_optimizer(make_lr_schedule(1e-3, 1e-4, 1, 10))
    state = create_train_state(model, tx, jax.random.key(0))
    state = state.replace(params=params)
    batch = {"inputs": x, "targets": jnp.roll(x, -1, axis=1)}
    losses = [float(jax.jit(make_train_step(m, tx))(state, batch)[1]["loss"])
              for m in (model, plain)]
    assert np.isfinite(losses[0]) and abs(losses[0] - losses[1]) > 1e-4
    with pytest.raises(ValueError, match="rope_gap_max=4.*pos_emb='learned'"):
        dataclasses.replace(BASE, rope_gap_max=4)
    with pytest.raises(ValueError, match="rope_gap_max=1000000.*2\\^24"):  # would overflow
        dataclasses.replace(cfg, rope_gap_max=10**6, block_size=1024)


def test_qk_norm_gives_unit_rms_and_ignores_query_key_scale():
    x = 5.0 * jax.random.normal(jax.random.key(0), (2, 3, 4, 16))
    rms = jnp.sqrt(jnp.mean(rms_normalize(x) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, atol=1e-4)
    # In the model: scaling the query and key columns of c_attn changes nothing under QK-norm.
    toks = tokens(1, 16)
    for qk_norm in (True, False):
        cfg = cfg_of("nobias", qk_norm=qk_norm)
        params = sharpen(init(cfg), 2.0)
        kernel = params["h_0"]["attn"]["c_attn"]["kernel"]
        D = cfg.n_embd
        scaled = jax.tree.map(lambda x: x, params)
        scaled["h_0"]["attn"]["c_attn"]["kernel"] = kernel.at[:, : 2 * D].multiply(7.0)
        a = GPT(cfg).apply({"params": params}, toks)
        b = GPT(cfg).apply({"params": scaled}, toks)
        assert np.allclose(a, b, atol=1e-4) == qk_norm


def test_zero_init_first_forward_equals_the_model_without_blocks():
    toks = tokens(2, 16)
    for name in ("zeroinit", "modern"):
        cfg = cfg_of(name)
        params = init(cfg)
        no_blocks = dataclasses.replace(cfg, n_layer=0)
        kept = {k: v for k, v in params.items() if not k.startswith("h_")}
        a = GPT(cfg).apply({"params": params}, toks)
        b = GPT(no_blocks).apply({"params": kept}, toks)
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Not vacuous: GPT-2's init does change the first forward.
    params = init(BASE)
    kept = {k: v for k, v in params.items() if not k.startswith("h_")}
    a = GPT(BASE).apply({"params": params}, toks)
    b = GPT(dataclasses.replace(BASE, n_layer=0)).apply({"params": kept}, toks)
    assert not np.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("tie", [True, False])
def test_softcap_bounds_logits_and_the_fused_loss_matches_full_logits(tie):
    cap = 3.0
    cfg = cfg_of("softcap", logit_softcap=cap, tie_embeddings=tie)
    params = sharpen(init(cfg), 10.0)
    toks = tokens(2, 17)
    logits = GPT(cfg).apply({"params": params}, toks[:, :-1])
    real = np.asarray(logits[..., :V])
    assert np.abs(real).max() <= cap and np.abs(real).max() > 0.9 * cap  # bounded, and binding
    assert np.isneginf(np.asarray(logits[..., V:])).all()

    def full(p):
        logits = GPT(cfg).apply({"params": p}, toks[:, :-1])
        return summed_cross_entropy(logits, toks[:, 1:])[0]

    def fused(p):
        x = GPT(cfg).apply({"params": p}, toks[:, :-1], return_hidden=True)
        return head_cross_entropy(x, head_weight(p, cfg), toks[:, 1:], vocab_size=V, chunks=4,
                                  softcap=cap)[0]

    (la, ga), (lb, gb) = jax.value_and_grad(full)(params), jax.value_and_grad(fused)(params)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4 * float(jnp.abs(x).max()))


def test_untied_head_is_its_own_parameter_with_its_own_gradient():
    cfg = cfg_of("untied")
    params = init(cfg)
    assert params["lm_head"].shape == (cfg.padded_vocab_size, cfg.n_embd)
    assert not np.allclose(params["lm_head"], params["wte"]["embedding"])
    toks = tokens(2, 16)

    def loss(p):
        logits = GPT(cfg).apply({"params": p}, toks[:, :-1])
        return summed_cross_entropy(logits, toks[:, 1:])[0]

    grads = jax.grad(loss)(params)
    assert float(jnp.abs(grads["lm_head"]).max()) > 0
    # The token table is only read at the input: rows of tokens never fed in get no gradient.
    unused = np.setdiff1d(np.arange(V), np.asarray(toks[:, :-1]))
    np.testing.assert_array_equal(grads["wte"]["embedding"][unused], 0.0)
    # Counted once per table: V*D more than tied, none of it padding.
    assert count_params(cfg) - count_params(BASE) == V * cfg.n_embd


def test_swiglu_width_keeps_the_mlp_parameter_count():
    assert mlp_width(GPTConfig(mlp="swiglu")) == 2048  # 2/3 * 4 * 768 exactly
    assert mlp_width(dataclasses.replace(BASE, n_embd=256, mlp="swiglu")) == 704  # 682.7 -> 704
    assert mlp_width(GPTConfig()) == 3072
    for d in (256, 768):
        gelu = dataclasses.replace(BASE, n_embd=d, n_head=4)
        swiglu = dataclasses.replace(gelu, mlp="swiglu")
        mlp_gelu = 8 * d * d
        extra = count_params(swiglu) - count_params(gelu)
        assert abs(extra) / mlp_gelu / gelu.n_layer < 0.04


def test_flops_know_untied_heads_and_swiglu():
    untied = cfg_of("untied")
    # V x D more parameters, but the same FLOPs: the head is one V x D matmul either way and the
    # untied token table is a lookup.
    assert count_params(untied) > count_params(BASE)
    assert flops_per_token(untied, 16) == flops_per_token(BASE, 16)
    # Every matmul counts: a wider MLP costs 6 FLOPs per weight per token.
    wide = dataclasses.replace(BASE, mlp="swiglu")
    extra_weights = 3 * BASE.n_embd * mlp_width(wide) - 8 * BASE.n_embd**2
    extra_biases = 2 * mlp_width(wide) - 4 * BASE.n_embd
    assert flops_per_token(wide, 16) - flops_per_token(BASE, 16) == (
        6 * BASE.n_layer * (extra_weights + extra_biases))
    swiglu = dataclasses.replace(BASE, n_embd=768, n_head=12, mlp="swiglu")
    gelu = dataclasses.replace(swiglu, mlp="gelu")
    assert flops_per_token(swiglu, 16) == pytest.approx(flops_per_token(gelu, 16), rel=1e-3)


def test_bad_combinations_name_the_field():
    with pytest.raises(ValueError, match="pos_emb='rope'.*even"):
        dataclasses.replace(BASE, n_embd=30, n_head=2, pos_emb="rope")
    with pytest.raises(ValueError, match="mlp='geglu'"):
        dataclasses.replace(BASE, mlp="geglu")
    with pytest.raises(ValueError, match="logit_softcap=-1"):
        dataclasses.replace(BASE, logit_softcap=-1.0)


# --- every combination works everywhere ----------------------------------------------------------


@pytest.mark.parametrize("name", list(SWITCHES))
def test_combination_is_causal_starts_uniform_and_decodes_like_recompute(name):
    cfg = cfg_of(name)
    params = init(cfg)
    toks = tokens(4, cfg.block_size)
    model = GPT(cfg)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    logits = forward(params, toks)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], toks[:, 1:]).mean()
    assert abs(float(loss) - math.log(V)) < 0.1

    sharp = sharpen(params)
    t = 10
    changed = toks.at[:, t + 1:].set((toks[:, t + 1:] + 7) % V)
    a, b = forward(sharp, toks), forward(sharp, changed)
    np.testing.assert_allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-5)
    assert not np.allclose(a[:, t + 1:], b[:, t + 1:])

    # Greedy with the KV cache == a full forward pass per new token (two prompt lengths).
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7]]
    got = sample(cfg, sharp, prompts, 8, temperature=0.0)
    for prompt, new in zip(prompts, got, strict=True):
        seq = list(prompt)
        for _ in range(8):
            buf = np.zeros((1, cfg.block_size), np.int32)
            buf[0, : len(seq)] = seq
            seq.append(int(jnp.argmax(forward(sharp, jnp.asarray(buf))[0, len(seq) - 1, :V])))
        assert new == seq[len(prompt):]


# --- Muon ----------------------------------------------------------------------------------------


def test_muon_takes_hidden_matrices_and_orthogonalises_their_updates():
    cfg = cfg_of("modern")
    params = init(cfg)
    labels = jax.tree_util.tree_flatten_with_path(muon_labels(params))[0]
    by_name = {"/".join(str(getattr(k, "key", k)) for k in path): lab for path, lab in labels}
    assert by_name["h_0/attn/c_attn/kernel"] == "muon"
    assert by_name["h_1/mlp/c_proj/kernel"] == "muon"
    assert by_name["wte/embedding"] == by_name["lm_head"] == by_name["h_0/ln_1/scale"] == "adamw"

    schedule = make_lr_schedule(1e-3, 1e-4, 0, 10)
    tx = make_optimizer(schedule, weight_decay=0.0, grad_clip=1e9, optimizer="muon",
                        muon_lr_scale=20.0)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    # A badly conditioned gradient: Muon's update has (nearly) equal singular values anyway.
    g = grads["h_0"]["mlp"]["c_fc"]["kernel"]
    grads["h_0"]["mlp"]["c_fc"]["kernel"] = g * jnp.logspace(0, 3, g.shape[1])[None]
    updates, _ = tx.update(grads, tx.init(params), params)
    sv = np.linalg.svd(np.asarray(updates["h_0"]["mlp"]["c_fc"]["kernel"]), compute_uv=False)
    assert sv.max() / sv.min() < 2.0
    assert np.linalg.cond(np.asarray(grads["h_0"]["mlp"]["c_fc"]["kernel"])) > 10
    # The AdamW group moves by about lr per entry (Adam's first step), the Muon group by muon_lr.
    lr = float(schedule(0))
    assert float(jnp.abs(updates["wte"]["embedding"]).max()) == pytest.approx(lr, rel=1e-2)
    assert float(jnp.abs(updates["h_0"]["attn"]["c_proj"]["kernel"]).max()) > 3 * lr


def test_sgd_steps_scale_with_the_gradient_and_decay_is_decoupled_and_masked():
    params = init(cfg_of("modern"))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(4), p.shape), params)
    lr, wd, b1 = 0.1, 0.5, 0.9
    sgd = make_optimizer(lambda _: lr, weight_decay=wd, grad_clip=1e9, b1=b1, optimizer="sgd")
    adam = make_optimizer(lambda _: lr, weight_decay=0.0, grad_clip=1e9)
    state = sgd.init(params)
    first, state = sgd.update(grads, state, params)
    small, _ = sgd.update(jax.tree.map(lambda g: g / 100, grads), sgd.init(params), params)
    adam_small, _ = adam.update(jax.tree.map(lambda g: g / 100, grads), adam.init(params), params)
    k = "h_0/mlp/c_fc/kernel".split("/")
    pick = lambda t: t[k[0]][k[1]][k[2]][k[3]]  # noqa: E731
    w, g = pick(params), pick(grads)
    # first step: -lr (g + wd w) for a decayed matrix, -lr g for a gain (decay mask)
    np.testing.assert_allclose(pick(first), -lr * (g + wd * w), rtol=1e-5, atol=1e-7)
    gain = params["h_0"]["ln_1"]["scale"]
    np.testing.assert_allclose(
        first["h_0"]["ln_1"]["scale"], -lr * grads["h_0"]["ln_1"]["scale"], rtol=1e-5
    )
    assert float(jnp.abs(gain).max()) > 0
    # momentum: the second step adds b1 x the first step's gradient; the decay stays outside it
    second, _ = sgd.update(grads, state, params)
    np.testing.assert_allclose(pick(second), -lr * ((1 + b1) * g + wd * w), rtol=1e-5, atol=1e-7)
    # a 100x smaller gradient: SGD's step shrinks with it (all but the decay), Adam's does not
    np.testing.assert_allclose(pick(small), -lr * (g / 100 + wd * w), rtol=1e-4, atol=1e-7)
    assert float(jnp.abs(pick(adam_small)).max()) == pytest.approx(lr, rel=1e-2)


@pytest.mark.slow
def test_modern_muon_run_resumes_bit_exact_loads_evaluates_and_refuses_hf_export(
    tiny_shards, tmp_path, monkeypatch, capsys
):
    import signal

    from minigpt_jax import evaluate
    from minigpt_jax.checkpoint import load_params
    from minigpt_jax.init_from import load_init_params
    from minigpt_jax.loggers import JsonlLogger

    model = {f"model.{k}": v for k, v in MODERN.items()}
    common = dict(total_steps=6, checkpoint_every=0, eval_every=0, log_every=1, warmup_steps=1,
                  eval_tokens=256, optimizer="muon", muon_lr=0.02, **model)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train_and_evaluate(conftest.tiny_config(tiny_shards, straight, **common))

    write = JsonlLogger.write

    def write_then_signal(self, step, record):
        write(self, step, record)
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(JsonlLogger, "write", write_then_signal)
        assert train.train_and_evaluate(
            conftest.tiny_config(tiny_shards, resumed, **common))["stopped_at"] == 3
    train.train_and_evaluate(conftest.tiny_config(tiny_shards, resumed, **common))
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert a[-1]["val_loss"] == b[-1]["val_loss"] < math.log(V)
    params_a, record = load_params(straight)
    params_b, _ = load_params(resumed)
    assert "lm_head" in params_a and "wpe" not in params_a
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # The checkpoint loads and evaluates to the loss the run logged.
    capsys.readouterr()
    result = evaluate.main(["--run_dir", str(straight)])
    assert result["loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-4)
    # init_from=checkpoint: takes it (and says which field differs when the stack does not match).
    loaded = load_init_params(f"checkpoint:{straight}", record["model"])
    np.testing.assert_array_equal(loaded["lm_head"][:V], np.asarray(params_a["lm_head"])[:V])
    np.testing.assert_array_equal(loaded["lm_head"][V:], 0.0)  # padding rows re-padded
    from minigpt_jax.config import ConfigError

    with pytest.raises(ConfigError, match="pos_emb=rope but config.model.pos_emb=learned"):
        load_init_params(f"checkpoint:{straight}",
                         dataclasses.replace(record["model"], pos_emb="learned"))
    # HF export refuses it with one message naming the switches, exit 2.
    with pytest.raises(SystemExit) as exit_info:
        hf.main(["export", "--run_dir", str(straight), "--out_dir", str(tmp_path / "hf")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "only GPT-2's architecture exports" in err and "pos_emb='rope'" in err
    assert "Traceback" not in err and not (tmp_path / "hf").exists()


def test_untied_head_and_modern_params_get_fsdp_specs():
    from jax.sharding import PartitionSpec as P

    from minigpt_jax.model import param_shapes
    from minigpt_jax.sharding import FSDP, param_spec

    shapes = param_shapes(cfg_of("modern"))
    assert param_spec(tuple(shapes["lm_head"].shape), 2) == P(FSDP, None)  # split by vocabulary
    assert param_spec(tuple(shapes["h_0"]["ln_1"]["scale"].shape), 2) == P()  # a gain: replicated
