import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from conftest import read_metrics, tiny_config

from minigpt_jax.config import ConfigError, validate_config
from minigpt_jax.train import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


def test_training_logs_learns_and_repeats_exactly(tiny_shards, tmp_path):
    train_and_evaluate(tiny_config(tiny_shards, tmp_path / "a"))
    train_and_evaluate(tiny_config(tiny_shards, tmp_path / "b"))
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in a] == [3, 6, 9, 12]
    for key in ("step", "train_loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert all(key in r for r in a), key
    assert [r["step"] for r in a if "val_loss" in r] == [6, 12]
    # MFU: achieved FLOP/s over the configured 1 TFLOP/s peak; the tiny model on 32-token windows
    # costs 748416 training FLOPs per token (counted by hand in test_train_state.py).
    for r in a:
        assert r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * 748_416 / 1e12)
    assert a[-1]["train_loss"] < a[0]["train_loss"] < 5.6
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_loss"] for r in a if "val_loss" in r] == [
        r["val_loss"] for r in b if "val_loss" in r
    ]


def test_gradient_accumulation_run_matches_plain_run(tiny_shards, tmp_path, monkeypatch, capsys):
    # the host-memory hint is asked with the run's backend and shown once (host_memory.py)
    backends = []
    monkeypatch.setattr("minigpt_jax.train.hugepage_hint", lambda b: backends.append(b) or "HINT")
    train_and_evaluate(tiny_config(tiny_shards, tmp_path / "plain", total_steps=3))
    assert backends == [jax.default_backend()] and capsys.readouterr().out.count("HINT") == 1
    train_and_evaluate(
        tiny_config(tiny_shards, tmp_path / "accum", total_steps=3, micro_batch_size=1)
    )
    plain, accum = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "accum")
    assert plain[-1]["train_loss"] == pytest.approx(accum[-1]["train_loss"], rel=1e-5)


def test_validation_names_the_key(tiny_shards, tmp_path):
    with pytest.raises(ConfigError, match="micro_batch_size"):
        validate_config(tiny_config(tiny_shards, tmp_path, micro_batch_size=3))
    with pytest.raises(ConfigError, match=r"config\.block_size"):
        validate_config(tiny_config(tiny_shards, tmp_path, block_size=65))
    with pytest.raises(ConfigError, match="cannot be split over 8 devices"):
        validate_config(tiny_config(tiny_shards, tmp_path), num_devices=8)
    with pytest.raises(ConfigError, match=r"model\.vocab_size"):
        c = tiny_config(tiny_shards, tmp_path)
        c.model.vocab_size = 50257
        (tiny_shards / "manifest.json").write_text(
            json.dumps(
                {
                    "version": 1,
                    "tokenizer": {"name": "byte", "vocab_size": 257, "sha256": "x", "spec": "byte"},
                }
            )
        )
        train_and_evaluate(c)


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minigpt_jax.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_trains_on_shards(tiny_shards, tmp_path):
    result = run_cli(
        "--config",
        "configs/small.py",
        f"--config.data_dir={tiny_shards}",
        f"--config.run_dir={tmp_path / 'run'}",
        "--config.model.preset=tiny",
        "--config.total_steps=4",
        "--config.log_every=2",
        "--config.batch_size=2",
        "--config.block_size=32",
        "--config.warmup_steps=1",
        "--config.eval_tokens=64",
        "--config.peak_tflops=1.0",
    )
    assert result.returncode == 0, result.stderr
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [2, 4] and "val_loss" in records[-1]


def test_cli_rejects_an_unknown_key(tmp_path):
    result = run_cli("--config", "configs/small.py", "--config.lrr=1e-3")
    assert result.returncode == 2
    assert "lrr" in result.stderr and 'Did you mean "lr"' in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_a_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_cli("--config", "configs/small.py", f"--config.data_dir={missing}")
    assert result.returncode == 2
    assert f"config.data_dir: {missing} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_a_missing_config_file():
    result = run_cli("--config", "configs/nope.py")
    assert result.returncode == 2 and "nope.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_a_corrupt_shard(tiny_shards, tmp_path):
    shard = tiny_shards / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:2000])
    result = run_cli(
        "--config",
        "configs/small.py",
        f"--config.data_dir={tiny_shards}",
        f"--config.run_dir={tmp_path / 'run'}",
        "--config.model.preset=tiny",
        "--config.block_size=32",
    )
    assert result.returncode == 2
    assert "train_000000.bin: truncated" in result.stderr and "Traceback" not in result.stderr


def test_shards_from_another_tokenizer_are_refused(tiny_shards, tmp_path):
    from minigpt_jax.errors import DataError
    from minigpt_jax.tokenizer import ByteTokenizer

    identity = {**ByteTokenizer().identity, "spec": "byte"}
    (tiny_shards / "manifest.json").write_text(json.dumps({"version": 1, "tokenizer": identity}))
    c = tiny_config(tiny_shards, tmp_path / "run", tokenizer="byte", total_steps=1, warmup_steps=0)
    assert train_and_evaluate(c)["step"] == 1
    assert (
        json.loads((tmp_path / "run" / "tokenizer.json").read_text())["sha256"]
        == identity["sha256"]
    )
    identity["sha256"] = "0" * 64  # as if made by a trained BPE
    (tiny_shards / "manifest.json").write_text(json.dumps({"version": 1, "tokenizer": identity}))
    with pytest.raises(DataError, match="made with tokenizer 'byte'.*this run uses 'byte'"):
        train_and_evaluate(tiny_config(tiny_shards, tmp_path / "run2", tokenizer="byte"))
