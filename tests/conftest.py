"""Shared fixtures: real text from ../shared/data, and tiny shard directories."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# One persistent compilation cache for the whole run, set before anything imports jax: many tests
# compile the same tiny train step, in process and in the `python -m minigpt_jax.train`
# subprocesses they start (which inherit these variables unless a test clears JAX_*), so every
# compile after the first is a disk read. xdist workers inherit the directory the controller made;
# that process removes it at the end. A JAX_COMPILATION_CACHE_DIR of your own is kept.
_OWN_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="minigpt_jax_test_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tiny compiles too
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from minigpt_jax.config import apply_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINIGPT_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE_DIR:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: tests that need real text read ../shared/data")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def gpt2_tiktoken_path() -> Path:
    return _require(SHARED_DATA / "gpt2.tiktoken")


def read_jsonl_texts(path: Path, limit: int | None = None) -> list[str]:
    texts = []
    with open(path) as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if limit is not None and len(texts) >= limit:
                break
    return texts


def write_random_shards(
    data_dir: Path, vocab_size: int = 257, train_tokens: int = 20_000, val_tokens: int = 5_000,
    seed: int = 0,
) -> Path:
    """Shards of a learnable toy language (a noisy repeating ramp) for fast training tests."""
    from minigpt_jax.shards import token_dtype, write_shard

    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        ramp = np.arange(n) % 31
        noise = rng.integers(0, vocab_size, n)
        tokens = np.where(rng.random(n) < 0.1, noise, ramp).astype(dtype)
        write_shard(data_dir / f"{split}_000000.bin", tokens)
    return data_dir


def tiny_config(data_dir: Path, run_dir: Path, **overrides):
    """A 2-layer byte-level run that trains in seconds; `model.<field>=...` sets a model field."""
    from minigpt_jax.config import default_config, model_fields

    c = default_config()
    c.model = model_fields("tiny", vocab_size=257)
    c.data_dir, c.run_dir = str(data_dir), str(run_dir)
    c.total_steps, c.batch_size, c.block_size = 12, 4, 32
    c.warmup_steps, c.log_every, c.eval_every, c.eval_tokens = 2, 3, 6, 256
    c.lr = 3e-3
    c.peak_tflops = 1.0  # skip measuring the CPU's matmul peak
    return apply_overrides(c, overrides)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def tiny_shards(tmp_path: Path) -> Path:
    return write_random_shards(tmp_path / "data")


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (relative path -> sha256, or "dir"): equal before and
    after a refused command means it changed nothing."""
    root = Path(root)
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_one_line_error(stderr: str, *names: str) -> str:
    """A user error as commands report it: one `error: ...` line naming `names`, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]
