"""GPT-2 weights in and out of the Hugging Face format, without torch for safetensors.

Our parameter names are OpenAI's, and our Dense kernels are laid out (in, out) exactly as
GPT-2's `Conv1D` weights are, so the PyTorch format is a rename: `h_3/attn/c_attn/kernel` <->
`transformer.h.3.attn.c_attn.weight`, with the fused q|k|v columns in the same order. Two things
need care: the token table, padded here to a multiple of 64 rows (50257 -> 50304) and unpadded
on export; and the Flax format (`flax_model.msgpack`), whose `FlaxConv1D` kernels are stored
(out, in) and so are transposed on import.

Every check a foreign directory can fail (architecture, activation, shapes, missing or extra
tensors) raises one `CheckpointError` that names the file and the key.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from minigpt_jax.errors import CheckpointError, exit_on_user_error
from minigpt_jax.files import atomic_write, write_json_atomic
from minigpt_jax.model import GPTConfig, param_shapes

# The names OpenAI published; `gpt2` etc. are aliases the hub still resolves.
HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
# Both are tanh-approximate GELU, which is what our MLP computes.
_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")
# Non-parameter buffers older checkpoints carry: the causal mask and its fill value.
_BUFFER_KEY = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# Flax leaf names -> PyTorch's.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "flax_model.msgpack",
)


# --- names ---------------------------------------------------------------------------------------


def _hf_name(path: tuple[str, ...]) -> str:
    """Our param path -> the PyTorch GPT2Model tensor name (no `transformer.` prefix)."""
    *modules, leaf = path
    parts = []
    for m in modules:
        parts.extend(m.split("_", 1) if re.fullmatch(r"h_\d+", m) else [m])
    return ".".join([*parts, _TORCH_LEAF.get(leaf, leaf)])


def _expected_hf_shapes(config: GPTConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """HF name -> (our param path, HF shape) for every tensor of `config`'s GPT-2."""
    flat = traverse_util.flatten_dict(param_shapes(config))
    out = {}
    for path, leaf in flat.items():
        shape = tuple(leaf.shape)
        if path == ("wte", "embedding"):
            shape = (config.vocab_size, config.n_embd)
        out[_hf_name(path)] = (path, shape)
    return out


# --- reading -------------------------------------------------------------------------------------


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; a Hugging Face model directory holds config.json next to "
            f"model.safetensors (save one with `model.save_pretrained(dir)`)"
        )
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    return hf


def _check_config(hf: Mapping[str, Any], path: Path) -> None:
    """Reject every GPT-2 variant whose forward pass differs from ours, before reading weights."""
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(
            f"{path}: model_type is {model_type!r}; only GPT-2 (model_type 'gpt2', "
            f"architectures {list(_ARCHITECTURES)}) can be imported"
        )
    architectures = hf.get("architectures") or []
    unknown = [a for a in architectures if a not in _ARCHITECTURES]
    if unknown:
        raise CheckpointError(
            f"{path}: architectures {unknown} are not a plain GPT-2 language model; "
            f"only {list(_ARCHITECTURES)} import"
        )
    n_embd = hf.get("n_embd")
    checks = [
        ("activation_function", hf.get("activation_function", "gelu_new") in _ACTIVATIONS,
         f"must be one of {list(_ACTIVATIONS)} (the tanh GELU)"),
        ("n_inner", hf.get("n_inner") in (None, 4 * (n_embd or 0)), "must be null or 4 * n_embd"),
        ("layer_norm_epsilon", abs(float(hf.get("layer_norm_epsilon", 1e-5)) - 1e-5) < 1e-12,
         "must be 1e-05"),
        ("scale_attn_weights", hf.get("scale_attn_weights", True) is True, "must be true"),
        ("scale_attn_by_inverse_layer_idx", not hf.get("scale_attn_by_inverse_layer_idx", False),
         "must be false"),
        ("add_cross_attention", not hf.get("add_cross_attention", False), "must be false"),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True) is True,
         "must be true (the head is the token table)"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise CheckpointError(f"{path}: {key}={hf.get(key)!r} {rule} to match this GPT-2")
    for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
        if not isinstance(hf.get(key), int) or hf[key] <= 0:
            raise CheckpointError(f"{path}: {key}={hf.get(key)!r} must be a positive integer")


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> GPTConfig:
    """GPTConfig of a GPT-2 config.json. Dropout defaults to 0 (nanoGPT's fine-tuning choice)."""
    fields = dict(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        dropout=0.0,
    )
    return GPTConfig(**{**fields, **overrides})


def _to_float32(array: Any) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(path, framework="np") as f:
        keys = list(f.keys())
        bf16 = [k for k in keys if f.get_slice(k).get_dtype() == "BF16"]
        for k in keys:
            if k not in bf16:
                tensors[k] = _to_float32(f.get_tensor(k))
    if bf16:  # numpy has no bfloat16: read those through JAX's, which does
        with safe_open(path, framework="flax") as f:
            for k in bf16:
                tensors[k] = _to_float32(f.get_tensor(k))
    return tensors


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch (`pip install torch`); or convert it "
            f"once to model.safetensors, which imports without torch"
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}


def _read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    """HF's Flax GPT-2 tree, renamed to the PyTorch names; FlaxConv1D kernels are (out, in)."""
    from flax import serialization

    tree = serialization.msgpack_restore(path.read_bytes())
    tensors = {}
    for key, value in traverse_util.flatten_dict(tree, sep=".").items():
        stem, leaf = key.rsplit(".", 1)
        value = _to_float32(value)
        if leaf == "kernel":
            value = value.T
        leaf = _TORCH_LEAF.get(leaf, leaf)
        tensors[f"{stem}.{leaf}"] = value
    return tensors


def _read_index(path: Path, reader) -> dict[str, np.ndarray]:
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a sharded-weights index with a weight_map ({e})") from e
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(set(weight_map.values())):
        shard = path.parent / name
        if not shard.is_file():
            raise CheckpointError(f"{path}: names shard {name}, which is not in {path.parent}")
        tensors.update(reader(shard))
    return tensors


def _read_weights(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The first weights file found, in order of preference (safetensors needs no torch)."""
    readers = {
        "model.safetensors": _read_safetensors,
        "model.safetensors.index.json": lambda p: _read_index(p, _read_safetensors),
        "pytorch_model.bin": _read_torch_bin,
        "pytorch_model.bin.index.json": lambda p: _read_index(p, _read_torch_bin),
        "flax_model.msgpack": _read_flax_msgpack,
    }
    for name in _WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            try:
                return path, readers[name](path)
            except CheckpointError:
                raise
            except Exception as e:  # a truncated or foreign file: name it, whatever the reader said
                raise CheckpointError(
                    f"{path}: cannot be read as weights ({type(e).__name__}: {e})"
                ) from e
    raise CheckpointError(
        f"{directory}: no weights file; expected one of {', '.join(_WEIGHT_FILES)}"
    )


def _strip_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel saves `transformer.`-prefixed names, GPT2Model (the hub's gpt2) bare ones."""
    return {k.removeprefix("transformer."): v for k, v in tensors.items()}


def params_from_hf_tensors(
    tensors: Mapping[str, np.ndarray], config: GPTConfig, source: str = "weights"
) -> dict[str, Any]:
    """HF-named tensors -> our params pytree for `config`, checking every name and shape."""
    tensors = dict(_strip_prefix(dict(tensors)))
    for key in [k for k in tensors if _BUFFER_KEY.fullmatch(k)]:
        del tensors[key]
    head = tensors.pop("lm_head.weight", None)
    expected = _expected_hf_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: the tensors do not match GPT-2 with n_layer={config.n_layer}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    flat = {}
    for name, (path, shape) in expected.items():
        value = tensors[name]
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(value.shape)}, but config.json implies "
                f"{shape}; the config and the weights disagree"
            )
        flat[path] = value
    wte = flat[("wte", "embedding")]
    if head is not None and (head.shape != wte.shape or not np.array_equal(head, wte)):
        raise CheckpointError(
            f"{source}: lm_head.weight differs from the token table; this GPT-2 ties them "
            f"(tie_word_embeddings) and cannot import an untied head"
        )
    flat[("wte", "embedding")] = pad_vocab(wte, config.padded_vocab_size)
    return traverse_util.unflatten_dict(flat)


def pad_vocab(wte_VD: np.ndarray, rows: int) -> np.ndarray:
    """Zero rows up to `rows`: padded ids are never inputs and their logits are masked to -inf."""
    wte_VD = np.asarray(wte_VD, np.float32)
    if wte_VD.shape[0] > rows:
        raise ValueError(f"token table of {wte_VD.shape[0]} rows does not fit in {rows}")
    return np.pad(wte_VD, ((0, rows - wte_VD.shape[0]), (0, 0)))


def resolve_hf_dir(dir_or_name: str | os.PathLike) -> Path:
    """A local directory as is; a hub name (`gpt2`, `owner/name`) downloaded into the HF cache."""
    path = Path(dir_or_name).expanduser()
    if path.is_dir():
        return path
    name = str(dir_or_name)
    repo_id = HUB_NAMES.get(name, name)
    if name not in HUB_NAMES and not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise CheckpointError(
            f"{name}: no such directory, and not a hub name ({', '.join(HUB_NAMES)} or owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors"])
        )
    except Exception as e:  # offline, unknown repo, no huggingface_hub: one message for all
        raise CheckpointError(
            f"{name}: could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Where the network allows, run "
            f"`hf download {repo_id} config.json model.safetensors --local-dir DIR` and pass "
            f"hf:DIR (or the directory) instead"
        ) from e


def load_hf_gpt2(dir_or_name: str | os.PathLike, **overrides: Any) -> tuple[GPTConfig, Any]:
    """(GPTConfig, params) of a Hugging Face GPT-2, for `GPT(config).apply({"params": p}, ...)`.

    `overrides` set GPTConfig fields the format does not carry (compute_dtype, dropout, remat, ...).
    """
    directory = resolve_hf_dir(dir_or_name)
    hf = _read_config(directory)
    _check_config(hf, directory / "config.json")
    config = config_from_hf(hf, **overrides)
    source, tensors = _read_weights(directory)
    return config, params_from_hf_tensors(tensors, config, str(source))


# --- writing -------------------------------------------------------------------------------------


def hf_config_dict(config: GPTConfig, eot_id: int | None = None) -> dict[str, Any]:
    """config.json for `transformers.GPT2LMHeadModel`; end-of-text is the last id unless given."""
    eot = config.vocab_size - 1 if eot_id is None else eot_id
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }


def check_exportable(config: GPTConfig) -> None:
    """HF's GPT2LMHeadModel is GPT-2's architecture only: any other switch is refused here."""
    changed = config.gpt2_differences()
    if changed:
        raise CheckpointError(
            f"only GPT-2's architecture exports to transformers' GPT2LMHeadModel; this model sets "
            f"{', '.join(changed)}. Train with the GPT-2 defaults to export"
        )


def hf_tensors_from_params(config: GPTConfig, params: Any) -> dict[str, np.ndarray]:
    """Our params -> GPT2LMHeadModel's state dict (prefixed, unpadded, lm_head left tied)."""
    check_exportable(config)
    flat = traverse_util.flatten_dict(dict(params))
    expected = _expected_hf_shapes(config)
    ours = {path for path, _ in expected.values()}
    if set(flat) != ours:
        diff = sorted("/".join(p) for p in set(flat) ^ ours)
        raise ValueError(f"params do not match GPT-2 {config}: differing entries {diff[:5]}")
    tensors = {}
    for name, (path, shape) in expected.items():
        value = np.asarray(flat[path], dtype=np.float32)
        if path == ("wte", "embedding"):
            value = value[: config.vocab_size]
        if value.shape != shape:
            raise ValueError(f"param {'/'.join(path)} has shape {value.shape}, expected {shape}")
        tensors[f"transformer.{name}"] = np.ascontiguousarray(value)
    return tensors


def save_hf_gpt2(
    config: GPTConfig, params: Any, out_dir: str | os.PathLike, eot_id: int | None = None
) -> Path:
    """Write `config.json` + `model.safetensors` that `GPT2LMHeadModel.from_pretrained` loads.

    Each file is written to a temporary name and renamed; config.json goes last, so a directory with
    a config.json always has the weights that belong to it.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors_from_params(config, params)
    atomic_write(
        out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"})
    )
    write_json_atomic(out / "config.json", hf_config_dict(config, eot_id), indent=2)
    return out


# --- run directories: the command line --------------------------------------------------------


def _default_tokenizer_spec(config: GPTConfig) -> str | None:
    """GPT-2's own BPE for its vocabulary, bytes for ours; anything else must be named."""
    return {50257: "gpt2", 257: "byte"}.get(config.vocab_size)


def import_as_run(
    dir_or_name: str,
    run_dir: str | os.PathLike,
    like_run: str | os.PathLike | None = None,
    data_dir: str | None = None,
    tokenizer: str | None = None,
) -> Path:
    """An HF GPT-2 as a run directory with one checkpoint (step 0), so that every command that
    takes a run (`evaluate`, `generate`, `init_from=checkpoint:`) takes OpenAI's weights too.

    `like_run` copies another run's evaluation settings (data_dir, block_size, batch sizes,
    eval_tokens), so `python -m minigpt_jax.evaluate` scores both on the same validation tokens.
    """
    import dataclasses

    import ml_collections

    from minigpt_jax import checkpoint
    from minigpt_jax.config import config_record, default_config, write_run_files

    config, params = load_hf_gpt2(dir_or_name)
    if like_run:
        path = Path(like_run) / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: not found; --like_run takes a training run directory")
        cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    else:
        cfg = default_config()
    cfg.unlock()
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k != "compute_dtype"}
    cfg.model = ml_collections.ConfigDict({"preset": "gpt2", **fields})
    cfg.init_from, cfg.run_dir = f"hf:{dir_or_name}", str(run_dir)
    cfg.block_size = min(cfg.block_size, config.block_size)
    if data_dir:
        cfg.data_dir = data_dir
    spec = tokenizer or _default_tokenizer_spec(config)
    record = None
    if spec:
        from minigpt_jax.tokenizer import load_tokenizer, tokenizer_record

        tok = load_tokenizer(spec)
        if tok.vocab_size != config.vocab_size:
            raise CheckpointError(
                f"tokenizer {spec!r} has {tok.vocab_size} ids, the model {config.vocab_size}"
            )
        record = tokenizer_record(spec, tok)
    run = Path(run_dir)
    ckpts = checkpoint.RunCheckpoints(run, async_save=False)
    try:
        if ckpts.latest_step() is not None:
            raise CheckpointError(f"{run}: already holds checkpoints; pick a new --run_dir")
        state = {"step": np.zeros((), np.int32), "params": jax.device_put(params)}
        ckpts.save(0, state, None, config_record(cfg), record)
        ckpts.wait()
    finally:
        ckpts.close()
    write_run_files(run, cfg, record)
    return run


def export_run(run_dir: str, out_dir: str, step: str | None = None) -> Path:
    """A training run's checkpoint as a `transformers` GPT-2 directory."""
    from minigpt_jax.checkpoint import load_params

    if step is not None and step not in ("latest", "best"):
        step = int(step)
    params, record = load_params(run_dir, None if step == "latest" else step)
    check_exportable(record["model"])
    if record["model"].doc_sep_id >= 0:
        warnings.warn(
            f"{run_dir}: trained with document masking (doc_sep_id={record['model'].doc_sep_id}); "
            f"transformers' GPT-2 has none, so it matches this model only on one document per "
            f"input, starting with that token",
            stacklevel=2,
        )
    eot = (record.get("tokenizer") or {}).get("eot_id")
    return save_hf_gpt2(record["model"], jax.device_get(params), out_dir, eot_id=eot)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m minigpt_jax.hf", description="GPT-2 weights in and out of HF format."
    )
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="an HF GPT-2 as a run dir (evaluate/generate take it)")
    imp.add_argument("source", help="a directory with config.json + weights, or gpt2, gpt2-xl...")
    imp.add_argument("--run_dir", required=True)
    imp.add_argument("--like_run", default=None, help="copy this run's data and eval settings")
    imp.add_argument("--data_dir", default=None, help="validation shards for evaluate")
    imp.add_argument("--tokenizer", default=None, help="default: gpt2 (50257 ids), byte (257)")
    exp = sub.add_parser("export", help="a run's checkpoint as config.json + model.safetensors")
    exp.add_argument("--run_dir", required=True)
    exp.add_argument("--step", default=None, help="a step number, latest (default) or best")
    exp.add_argument("--out_dir", required=True)
    args = p.parse_args(argv)
    with exit_on_user_error(OSError):
        if args.command == "import":
            out = import_as_run(args.source, args.run_dir, args.like_run, args.data_dir,
                                args.tokenizer)
            print(f"{out}: checkpoint 0 of {args.source}; now "
                  f"`python -m minigpt_jax.evaluate --run_dir {out}`")
        else:
            out = export_run(args.run_dir, args.out_dir, args.step)
            print(f"{out}: GPT2LMHeadModel.from_pretrained({str(out)!r}) loads it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
