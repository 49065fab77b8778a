"""Fine-tuning: init_from, frozen embeddings, and supervised fine-tuning with masked prompts."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_metrics, tiny_config

from minigpt_jax import input_pipeline, shards
from minigpt_jax.config import ConfigError
from minigpt_jax.errors import DataError
from minigpt_jax.hf import load_hf_gpt2, save_hf_gpt2
from minigpt_jax.init_from import InitSpec, load_init_params, parse_init_from
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.sft_data import (
    chat_prompt_tokens,
    encode_example,
    format_chat,
    pack_examples,
    prepare_sft,
)
from minigpt_jax.tokenizer import ByteTokenizer
from minigpt_jax.train_state import (
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

TINY = GPTConfig.preset("tiny", vocab_size=257)


def init_params(cfg: GPTConfig, seed: int = 0):
    init = jax.jit(GPT(cfg).init)
    return jax.device_get(init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"])


# --- supervised fine-tuning data --------------------------------------------------------------


def test_example_mask_covers_the_response_and_its_eot():
    tok = ByteTokenizer()
    tokens, mask = encode_example(tok, "2+2?", "4")
    prompt = tok.encode(format_chat("2+2?"))
    assert tokens == prompt + [ord("4"), tok.eot_id]
    assert mask == [0] * len(prompt) + [1, 1]
    stream, stream_mask = pack_examples(tok, [("a", "b"), ("c", "d")], np.dtype(np.uint16))
    # EOT first (as pretraining documents), then example after example.
    assert stream[0] == tok.eot_id and stream_mask[0] == 0
    assert tok.decode(stream.tolist()).count("<|endoftext|>") == 3
    assert stream_mask.sum() == 4  # "b", EOT, "d", EOT
    # Generation starts from exactly the context a response followed in training.
    assert chat_prompt_tokens(tok, "c") == [tok.eot_id, *tok.encode(format_chat("c"))]


def write_qa(path: Path, n: int = 120, prompt=lambda i: f"What is {i} plus {i}?") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": prompt(i), "response": f"It is {2 * i}."}) + "\n")
    return path


@pytest.fixture
def sft_shards(tmp_path) -> Path:
    qa = write_qa(tmp_path / "qa.jsonl")
    prepare_sft([qa], tmp_path / "sft", tokenizer_path="byte", val_examples=20)
    return tmp_path / "sft"


def test_sft_shards_carry_the_mask_into_batch_weights(sft_shards):
    from minigpt_jax.shards import check_manifest

    manifest = check_manifest(sft_shards, ByteTokenizer().identity, verify_checksums=True)
    assert manifest["format"] == "sft" and manifest["documents"] == {"train": 100, "val": 20}
    val = shards.find_shards(sft_shards, "val")
    assert [p.name for p in val] == ["val_000000.bin"]  # the mask shard is never read as tokens
    tokens = np.asarray(shards.open_shard(val[0]))
    mask = np.asarray(shards.open_shard(shards.mask_path(val[0])))
    seq = 32
    for i, batch in enumerate(input_pipeline.eval_batches(val, seq, 2, 10_000, vocab_size=257)):
        for row in range(2):
            w = (2 * i + row) * seq
            np.testing.assert_array_equal(batch["targets"][row], tokens[w + 1 : w + seq + 1])
            np.testing.assert_array_equal(batch["weights"][row], mask[w + 1 : w + seq + 1])
    # What the loss counts is exactly the answers and their end-of-text markers.
    counted = ByteTokenizer().decode(tokens[mask == 1].tolist())
    assert counted.startswith("It is 0.<|endoftext|>It is 2.<|endoftext|>")
    assert "What is" not in counted and "Question" not in counted


def test_changing_prompt_tokens_does_not_change_the_loss(sft_shards):
    """Prompt tokens as targets are outside the loss: rewriting them changes neither the loss nor
    the gradients, while rewriting one response token does."""
    batch = next(
        input_pipeline.eval_batches(
            shards.find_shards(sft_shards, "train"), 64, 4, 1024, vocab_size=257
        )
    )
    weights = batch["weights"]
    assert 0 < weights.sum() < weights.size
    rng = np.random.default_rng(0)
    other_prompts = np.where(weights == 0, rng.integers(0, 256, weights.shape), batch["targets"])
    assert (other_prompts != batch["targets"]).sum() > 50
    changed = {**batch, "targets": other_prompts.astype(np.int32)}
    one_response = batch["targets"].copy()
    r, t = np.argwhere(weights == 1)[0]
    one_response[r, t] = (one_response[r, t] + 1) % 256
    response_changed = {**batch, "targets": one_response}

    model = GPT(TINY)
    params = init_params(TINY)
    eval_step = jax.jit(make_eval_step(model))
    base = eval_step(params, batch)
    assert float(base["tokens"]) == weights.sum()
    assert float(eval_step(params, changed)["loss_sum"]) == float(base["loss_sum"])
    assert float(eval_step(params, response_changed)["loss_sum"]) != float(base["loss_sum"])

    tx = make_optimizer(lambda _: 1e-3)
    state = create_train_state(model, tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, tx))
    (s1, m1), (s2, m2) = step(state, batch), step(state, changed)
    assert float(m1["loss"]) == float(m2["loss"])
    jax.tree.map(np.testing.assert_array_equal, s1.params, s2.params)


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"prompt": "x"}', r'qa\.jsonl:2: "response" must be a string'),
        ('{"prompt": 3, "response": "y"}', r'qa\.jsonl:2: "prompt" must be a string'),
        ('{"prompt": "x", "response": ""}', r'qa\.jsonl:2: "response" is empty'),
        ("[1, 2]", r"qa\.jsonl:2: expected an object"),
        ("{oops", r"qa\.jsonl:2: not a JSON line"),
    ],
)
def test_bad_sft_lines_are_named(tmp_path, line, match):
    (tmp_path / "qa.jsonl").write_text('{"prompt": "a", "response": "b"}\n' + line + "\n")
    with pytest.raises(DataError, match=match):
        prepare_sft([tmp_path / "qa.jsonl"], tmp_path / "out", tokenizer_path="byte")
    assert not (tmp_path / "out").exists()


def test_masks_that_do_not_fit_their_shards_are_refused(sft_shards):
    train = sft_shards / "train_000000.bin"
    extra = sft_shards / "train_000001.bin"
    shards.write_shard(extra, np.arange(100, dtype=np.uint16))
    # One shard with a mask and one without cannot mix: the loss would mean two things.
    with pytest.raises(DataError, match=r"train_000001\.mask\.bin: missing"):
        input_pipeline.WindowSource(shards.find_shards(sft_shards, "train"), 16)
    extra.unlink()
    shards.write_shard(shards.mask_path(train), np.ones(3, np.uint16))
    with pytest.raises(DataError, match="holds 3 entries for a shard of"):
        input_pipeline.WindowSource([train], 16)


# --- freezing -----------------------------------------------------------------------------------


def test_freeze_embeddings_holds_wte_and_wpe_fixed():
    model = GPT(TINY)
    tx = make_optimizer(lambda _: 1e-2, weight_decay=0.1, freeze="embeddings")
    state = create_train_state(model, tx, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 17)), jnp.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    new, _ = jax.jit(make_train_step(model, tx))(state, batch)
    for name in ("wte", "wpe"):
        before = state.params[name]["embedding"]
        np.testing.assert_array_equal(new.params[name]["embedding"], before)
    fc, fc_before = new.params["h_0"]["mlp"]["c_fc"], state.params["h_0"]["mlp"]["c_fc"]
    assert not np.allclose(fc["kernel"], fc_before["kernel"])
    # No Adam moments for frozen leaves: fine-tuning the rest costs less optimizer memory.
    n_state = sum(x.size for x in jax.tree.leaves(new.opt_state))
    plain_state = make_optimizer(lambda _: 1e-2).init(state.params)
    n_plain = sum(x.size for x in jax.tree.leaves(plain_state))
    frozen = state.params["wte"]["embedding"].size + state.params["wpe"]["embedding"].size
    assert n_plain - n_state == 2 * frozen
    with pytest.raises(ValueError, match="config.freeze: 'everything'"):
        make_optimizer(lambda _: 1e-2, freeze="everything")


# --- init_from ----------------------------------------------------------------------------------


def test_parse_init_from():
    assert parse_init_from("scratch") == InitSpec("scratch")
    assert parse_init_from("hf:gpt2") == InitSpec("hf", "gpt2")
    assert parse_init_from("checkpoint:runs/a") == InitSpec("checkpoint", "runs/a")
    assert parse_init_from("checkpoint:runs/a@1200") == InitSpec("checkpoint", "runs/a", 1200)
    assert parse_init_from("checkpoint:runs/a@best") == InitSpec("checkpoint", "runs/a", "best")
    for bad in ("gpt2", "hf:", "checkpoint:runs/a@soon", "s3:bucket"):
        with pytest.raises(ConfigError, match="config.init_from"):
            parse_init_from(bad)


def test_init_from_hf_crops_context_and_repads_vocab(tmp_path):
    params = init_params(TINY, seed=1)
    save_hf_gpt2(TINY, params, tmp_path / "hf")
    target = GPTConfig.preset("tiny", vocab_size=257, block_size=16, vocab_multiple=128)
    loaded = load_init_params(f"hf:{tmp_path / 'hf'}", target)
    assert loaded["wpe"]["embedding"].shape == (16, 64)
    assert loaded["wte"]["embedding"].shape == (384, 64)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 257, (2, 16)), jnp.int32)
    ours = GPT(TINY).apply({"params": params}, tokens)[..., :257]
    theirs = GPT(target).apply({"params": loaded}, tokens)[..., :257]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    cfg, _ = load_hf_gpt2(tmp_path / "hf", compute_dtype="bfloat16")
    assert cfg.block_size == 64 and cfg.compute_dtype == "bfloat16"

    with pytest.raises(ConfigError, match=r"n_layer=2 but config\.model\.n_layer=3"):
        load_init_params(f"hf:{tmp_path / 'hf'}", GPTConfig.preset("tiny", vocab_size=257,
                                                                  n_layer=3))
    with pytest.raises(ConfigError, match="--config.model.block_size<=64"):
        load_init_params(f"hf:{tmp_path / 'hf'}", GPTConfig.preset("tiny", vocab_size=257,
                                                                  block_size=128))
    with pytest.raises(ConfigError, match=r"config\.init_from: .*no such directory"):
        load_init_params(f"hf:{tmp_path / 'missing'}", TINY)


# --- end to end through train.py ----------------------------------------------------------------


def tiny_run(data_dir: Path, run_dir: Path, **overrides):
    return tiny_config(data_dir, run_dir, **{
        "total_steps": 20, "log_every": 10, "eval_every": 10, "eval_tokens": 512, **overrides,
    })


@pytest.mark.slow
def test_fine_tune_from_a_checkpoint_starts_at_its_eval_loss(tiny_shards, tmp_path):
    from minigpt_jax.checkpoint import load_params
    from minigpt_jax.config import model_config
    from minigpt_jax.train import train_and_evaluate

    pre_cfg = tiny_run(tiny_shards, tmp_path / "pre")
    train_and_evaluate(pre_cfg)
    pre_val = read_metrics(tmp_path / "pre")[-1]["val_loss"]
    assert pre_val < 5.55 - 1.0  # ~ln(257) is what an untrained model scores

    # The params train.py's hook loads score exactly the checkpoint's logged eval loss.
    model_cfg = model_config(pre_cfg)
    params = load_init_params(f"checkpoint:{tmp_path / 'pre'}@20", model_cfg)
    batches = input_pipeline.eval_batches(
        shards.find_shards(tiny_shards, "val"), 32, 4, 512, vocab_size=257
    )
    eval_step = jax.jit(make_eval_step(GPT(model_cfg)))
    sums = [eval_step(params, b) for b in batches]
    start = sum(float(m["loss_sum"]) for m in sums) / sum(float(m["tokens"]) for m in sums)
    assert start == pytest.approx(pre_val, abs=1e-5)

    # A fine-tune run goes on from there, with config.freeze=embeddings holding the tables fixed.
    train_and_evaluate(tiny_run(
        tiny_shards, tmp_path / "ft", init_from=f"checkpoint:{tmp_path / 'pre'}",
        total_steps=6, lr=1e-3, eval_every=6, freeze="embeddings",
    ))
    assert read_metrics(tmp_path / "ft")[-1]["val_loss"] < pre_val + 0.05
    before, _ = load_params(tmp_path / "pre")
    after, _ = load_params(tmp_path / "ft")
    # (init_from zeroes the padded vocabulary rows, which no input reads and no logit shows)
    for name, rows in (("wte", 257), ("wpe", 64)):
        np.testing.assert_array_equal(
            after[name]["embedding"][:rows], before[name]["embedding"][:rows]
        )
    assert not np.array_equal(after["ln_f"]["scale"], before["ln_f"]["scale"])


@pytest.mark.slow
def test_sft_run_trains_on_responses(sft_shards, tmp_path):
    """train.py on SFT shards: the logged loss is the response-only loss, and it falls."""
    from minigpt_jax.train import train_and_evaluate

    train_and_evaluate(tiny_run(sft_shards, tmp_path / "sft", total_steps=30, eval_every=30,
                                eval_tokens=256))
    m = read_metrics(tmp_path / "sft")
    assert m[-1]["val_loss"] < m[0]["train_loss"] - 1.0


def _load_config(name: str):
    from minigpt_jax.config import load_config_file

    return load_config_file(Path(__file__).resolve().parents[1] / "configs" / f"{name}.py")


def test_fine_tuning_configs_validate_and_fit_their_starting_points(tmp_path):
    from minigpt_jax.config import model_config, validate_config

    char, small, gpt2 = (_load_config(n) for n in ("finetune_char", "small", "finetune_gpt2"))
    for c in (char, gpt2):
        c.data_dir = str(tmp_path)  # the configs' data dirs are made by download_data.py
        validate_config(c)
    # finetune_char starts from configs/small.py's run: same model shape, a lower learning rate.
    assert parse_init_from(char.init_from) == InitSpec("checkpoint", small.run_dir)
    assert model_config(char) == model_config(small)
    assert char.lr < small.lr and char.block_size <= small.block_size
    # finetune_gpt2 loads GPT-2 124M's Hugging Face weights: the shapes must be GPT-2's.
    assert parse_init_from(gpt2.init_from) == InitSpec("hf", "gpt2")
    m = model_config(gpt2)
    assert (m.n_layer, m.n_head, m.n_embd, m.vocab_size, m.block_size) == (12, 12, 768, 50257, 1024)
    assert gpt2.lr == gpt2.min_lr and gpt2.block_size == 1024  # nanoGPT's constant lr, full context
