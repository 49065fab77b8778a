"""GPT-2 weights in and out of the Hugging Face format, checked against `transformers` itself."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax.errors import CheckpointError
from minigpt_jax.hf import load_hf_gpt2, save_hf_gpt2
from minigpt_jax.model import GPT, GPTConfig

VOCAB = 257  # not a multiple of 64: the import pads to 320 rows, the export unpads


def random_params(cfg: GPTConfig, seed: int = 0):
    """Params with every leaf random (LayerNorm and biases too), so no tensor can be mis-mapped
    unnoticed behind an all-ones or all-zeros initial value."""
    init = jax.jit(GPT(cfg).init)
    params = jax.device_get(init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape, np.float32), params)


def our_logits(cfg: GPTConfig, params, tokens: np.ndarray) -> np.ndarray:
    logits = GPT(cfg).apply({"params": params}, jnp.asarray(tokens), deterministic=True)
    return np.asarray(logits)[..., : cfg.vocab_size]


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, size=(3, 48))


# --- without torch: our own round trip and the errors ----------------------------------------


def test_export_then_import_is_exact(tmp_path):
    cfg = GPTConfig.preset("tiny", vocab_size=VOCAB)
    params = random_params(cfg)
    save_hf_gpt2(cfg, params, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors"
    ]  # no temporary files left behind
    cfg2, params2 = load_hf_gpt2(tmp_path / "out")
    assert (cfg2.vocab_size, cfg2.block_size, cfg2.n_layer, cfg2.n_head, cfg2.n_embd) == (
        VOCAB, 64, 2, 2, 64
    )
    params = jax.device_get(params)
    wte, wte2 = params["wte"].pop("embedding"), params2["wte"].pop("embedding")
    np.testing.assert_array_equal(wte[:VOCAB], wte2[:VOCAB])
    assert wte2.shape == (320, 64) and not wte2[VOCAB:].any()  # padding rows come back as zeros
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    hf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf["architectures"] == ["GPT2LMHeadModel"] and hf["eos_token_id"] == VOCAB - 1


def _export(tmp_path: Path) -> Path:
    cfg = GPTConfig.preset("tiny", vocab_size=VOCAB)
    return save_hf_gpt2(cfg, random_params(cfg), tmp_path / "gpt")


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"model_type": "llama"}, r"config\.json: model_type is 'llama'"),
        ({"architectures": ["GPT2ForSequenceClassification"]}, "not a plain GPT-2"),
        ({"activation_function": "relu"}, "activation_function='relu'"),
        ({"n_inner": 100}, "n_inner=100"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"n_embd": 128}, r"tensor h\.0\.attn\.c_attn\.bias has shape \(192,\), but config"),
        ({"n_layer": 3}, r"missing \['h\.2\."),
        ({"n_layer": 1}, r"unexpected \['h\.1\."),
        ({"vocab_size": 50257}, r"wte\.weight has shape \(257, 64\), but config\.json implies"),
    ],
)
def test_wrong_architecture_or_shape_is_rejected_clearly(tmp_path, changes, match):
    directory = _export(tmp_path)
    _edit_config(directory, **changes)
    with pytest.raises(CheckpointError, match=match):
        load_hf_gpt2(directory)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory, and not a hub name"):
        load_hf_gpt2(tmp_path / "nowhere")
    directory = _export(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file; expected one of model.safetensors"):
        load_hf_gpt2(directory)
    (directory / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: cannot be read as weights"):
        load_hf_gpt2(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_hf_gpt2(directory)


def test_hub_name_without_network_says_what_to_do(tmp_path, monkeypatch):
    """Offline (as here, and as CI is), `gpt2` fails at once with the command that fixes it."""
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(CheckpointError) as info:
        load_hf_gpt2("gpt2")
    message = str(info.value)
    assert "openai-community/gpt2" in message
    assert "hf download openai-community/gpt2 config.json model.safetensors" in message


# --- against transformers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # LayerNorm ones and zero biases would hide a swapped tensor
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


def _save_torch_bin(model, directory: Path) -> None:
    import torch

    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")


def _save_flax_msgpack(model, directory: Path) -> None:
    """HF's Flax GPT-2 layout: `transformer/h/0/attn/c_attn/kernel` stored (out, in)."""
    from flax import serialization, traverse_util

    flat = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        *stem, leaf = name.split(".")
        value = tensor.numpy()
        if leaf == "weight":
            is_embedding = stem[-1] in ("wte", "wpe")
            is_norm = stem[-1].startswith("ln_")
            leaf = "embedding" if is_embedding else "scale" if is_norm else "kernel"
            if leaf == "kernel":
                value = value.T
        flat[(*stem, leaf)] = value
    model.config.save_pretrained(directory)
    tree = traverse_util.unflatten_dict(flat)
    (directory / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(tree))


def _save_hub_layout(model, directory: Path) -> None:
    """As openai-community/gpt2's own model.safetensors: GPT2Model names (no `transformer.`),
    no lm_head, and each layer's causal-mask buffer `h.N.attn.bias` stored as a tensor."""
    from safetensors.numpy import save_file

    n = model.config.n_positions
    tensors = {
        k.removeprefix("transformer."): v.numpy()
        for k, v in model.state_dict().items() if k != "lm_head.weight"
    }
    for i in range(model.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((n, n), np.float32))[None, None]
    model.config.save_pretrained(directory)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize(
    "fmt", ["safetensors", "hub layout", "pytorch_model.bin", "flax_model.msgpack"]
)
def test_import_gives_transformers_logits(hf_model, tokens, tmp_path, fmt):
    directory = tmp_path / fmt.replace(" ", "_")
    if fmt == "safetensors":
        hf_model.save_pretrained(directory)
        assert (directory / "model.safetensors").is_file()
    elif fmt == "hub layout":
        _save_hub_layout(hf_model, directory)
    elif fmt == "pytorch_model.bin":
        _save_torch_bin(hf_model, directory)
    else:
        _save_flax_msgpack(hf_model, directory)
    cfg, params = load_hf_gpt2(directory)
    assert cfg.padded_vocab_size == 320 and params["wte"]["embedding"].shape == (320, 64)
    np.testing.assert_allclose(
        our_logits(cfg, params, tokens), _hf_logits(hf_model, tokens), atol=1e-4, rtol=0
    )


def test_export_loads_in_transformers_with_the_same_logits(tokens, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    cfg = GPTConfig.preset("tiny", vocab_size=VOCAB)
    params = random_params(cfg, seed=3)
    save_hf_gpt2(cfg, params, tmp_path / "ours")
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    np.testing.assert_allclose(
        _hf_logits(model, tokens), our_logits(cfg, params, tokens), atol=1e-4, rtol=0
    )


def test_untied_head_is_rejected(hf_model, tmp_path):
    import torch
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in hf_model.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    hf_model.config.save_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert isinstance(state["lm_head.weight"], torch.Tensor)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from the token table"):
        load_hf_gpt2(tmp_path)


def test_imported_gpt2_evaluates_and_exports_through_the_run_commands(tmp_path, tiny_shards):
    """`python -m minigpt_jax.hf import` makes a run dir that evaluate scores like any run (the
    same val windows and eval step), and `export` of that run gives back the same bytes."""
    from minigpt_jax import input_pipeline, shards
    from minigpt_jax.evaluate import evaluate_checkpoint
    from minigpt_jax.hf import main
    from minigpt_jax.train_state import make_eval_step

    cfg = GPTConfig.preset("tiny", vocab_size=VOCAB)
    params = random_params(cfg, seed=5)
    save_hf_gpt2(cfg, params, tmp_path / "hf")
    run = tmp_path / "run"
    assert main(["import", str(tmp_path / "hf"), "--run_dir", str(run),
                 "--data_dir", str(tiny_shards)]) == 0
    result = evaluate_checkpoint(run, eval_tokens=2048)

    batches = input_pipeline.eval_batches(
        shards.find_shards(tiny_shards, "val"), 64, 8, 2048, VOCAB
    )
    eval_step = jax.jit(make_eval_step(GPT(cfg)))
    sums = [eval_step(params, b) for b in batches]
    expected = sum(float(m["loss_sum"]) for m in sums) / sum(float(m["tokens"]) for m in sums)
    assert result["step"] == 0 and result["loss"] == pytest.approx(expected, rel=1e-5)

    with pytest.raises(SystemExit) as refused:  # never overwrites
        main(["import", str(tmp_path / "hf"), "--run_dir", str(run)])
    assert refused.value.code == 2
    assert main(["export", "--run_dir", str(run), "--out_dir", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (
        tmp_path / "hf" / "model.safetensors"
    ).read_bytes()


def test_bfloat16_safetensors_import_without_torch_dtypes(hf_model, tmp_path):
    """numpy has no bfloat16: those tensors are read through JAX's and widened to float32."""
    import copy

    import torch

    model = copy.deepcopy(hf_model).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    _, params = load_hf_gpt2(tmp_path)
    wte = model.transformer.wte.weight.detach().float().numpy()
    assert params["wte"]["embedding"].dtype == np.float32
    np.testing.assert_array_equal(params["wte"]["embedding"][:VOCAB], wte)
