"""Checkpoints: round trip, exact resume, crash safety, signals, and the errors users meet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import conftest
import jax
import numpy as np
import pytest
from conftest import REPO, read_metrics

from minigpt_jax import checkpoint, input_pipeline, sharding, shards, train
from minigpt_jax.checkpoint import CheckpointError, RunCheckpoints, load_params
from minigpt_jax.config import ConfigError, config_record
from minigpt_jax.loggers import JsonlLogger
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.train_state import create_train_state, make_lr_schedule, make_optimizer

TOKENIZER = {"spec": "byte", "name": "byte", "sha256": "ab" * 32, "vocab_size": 257, "eot_id": 256}


def tiny_config(data_dir: Path, run_dir: Path, **overrides):
    return conftest.tiny_config(data_dir, run_dir, **{
        "total_steps": 6, "warmup_steps": 1, "log_every": 1, "eval_every": 3,
        "eval_tokens": 512, "checkpoint_every": 3, "lr": 6e-4, **overrides,
    })


def tiny_state(n_embd: int = 64, seed: int = 0):
    model = GPT(GPTConfig.preset("tiny", vocab_size=257, n_embd=n_embd))
    tx = make_optimizer(make_lr_schedule(1e-3, 1e-4, 1, 10))
    init = lambda rng: create_train_state(model, tx, rng)
    abstract = jax.eval_shape(init, jax.random.key(seed))
    shardings = sharding.tree_shardings(abstract, sharding.make_mesh())
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed)), abstract, shardings


def data_iterator(data_dir: Path, batch_size: int = 4):
    paths = shards.find_shards(data_dir, "train")
    return iter(input_pipeline.train_dataset(paths, 32, batch_size, seed=0, vocab_size=257))


def test_round_trip_every_leaf_while_the_device_copy_is_gone(tiny_shards, tmp_path):
    state, abstract, shardings = tiny_state()
    state = state.replace(step=state.step + 7)
    it = data_iterator(tiny_shards)
    for _ in range(3):
        next(it)
    expected = jax.tree.map(np.asarray, state)
    ckpts = RunCheckpoints(tmp_path / "run")
    ckpts.save(7, state, it, {"lr": 1e-3}, TOKENIZER, val_loss=2.5)
    next(it)  # the iterator moves on while the save is written
    jax.tree.map(lambda x: x.delete(), state)  # as donation to the next train step would
    ckpts.close()

    ckpts = RunCheckpoints(tmp_path / "run", read_only=True)
    fresh = data_iterator(tiny_shards)
    restored, restored_it = ckpts.restore(7, abstract, shardings, fresh)
    got, want = jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(expected)
    assert len(got) == len(want) > 10
    for (path, leaf), ref, target in zip(got, want, jax.tree.leaves(shardings), strict=True):
        assert leaf.dtype == ref.dtype, path
        np.testing.assert_array_equal(np.asarray(leaf), ref, err_msg=str(path))
        assert leaf.sharding == target, path
    assert restored_it.get_state() == {"next_index": 3}
    reference = data_iterator(tiny_shards)
    for _ in range(3):
        next(reference)
    np.testing.assert_array_equal(next(restored_it)["inputs"], next(reference)["inputs"])
    assert ckpts.record(7) == {"step": 7, "config": {"lr": 1e-3}, "tokenizer": TOKENIZER}
    assert ckpts.resolve_step("best") == 7
    ckpts.close()


def test_keeps_last_n_and_the_best(tiny_shards, tmp_path):
    state, _, _ = tiny_state()
    ckpts = RunCheckpoints(tmp_path / "run", keep=2, keep_best=True)
    val = {2: 3.0, 4: 1.0, 6: 2.0, 8: None, 10: 2.5}
    for step in range(1, 11):
        ckpts.save(step, state, None, {}, None, val_loss=val.get(step))
        ckpts.wait()
    assert ckpts.steps() == [4, 9, 10]
    assert ckpts.resolve_step("best") == 4
    assert ckpts.resolve_step(None) == 10
    ckpts.close()


def test_missing_checkpoint_and_step_errors_are_clear(tiny_shards, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints here"):
        load_params(tmp_path / "nothing")
    state, _, _ = tiny_state()
    ckpts = RunCheckpoints(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no checkpoint found; train first"):
        ckpts.resolve_step(None)
    ckpts.save(3, state, None, {}, None)
    ckpts.wait()
    with pytest.raises(CheckpointError, match="no checkpoint at step 5; available: 3"):
        ckpts.resolve_step(5)
    with pytest.raises(CheckpointError, match="none has a val_loss"):
        ckpts.resolve_step("best")
    ckpts.close()


def test_other_model_shape_lists_the_mismatched_parameters(tiny_shards, tmp_path):
    state, _, _ = tiny_state(n_embd=64)
    ckpts = RunCheckpoints(tmp_path / "run")
    config = config_record(tiny_config(tiny_shards, tmp_path / "run"))
    ckpts.save(1, state, None, config, TOKENIZER)
    ckpts.close()
    params, record = load_params(tmp_path / "run")  # its own config: fine
    assert record["step"] == 1 and record["tokenizer"] == TOKENIZER
    other = GPTConfig.preset("tiny", vocab_size=257, n_embd=32)
    with pytest.raises(CheckpointError) as e:
        load_params(tmp_path / "run", model_cfg=other)
    message = str(e.value)
    assert "another model shape" in message
    assert "h_0/attn/c_attn/kernel: checkpoint (64, 192), model (32, 96)" in message
    assert "wte/embedding: checkpoint (320, 64), model (320, 32)" in message
    assert "Traceback" not in message


def _raise_sigterm_at(monkeypatch, stop_step: int) -> None:
    """Deliver a real SIGTERM to this process while step `stop_step` is being logged."""
    write = JsonlLogger.write

    def write_then_signal(self, step, record):
        write(self, step, record)
        if step == stop_step:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(JsonlLogger, "write", write_then_signal)


def test_exact_resume_after_sigterm(tiny_shards, tmp_path, monkeypatch, capsys):
    # Dropout on: its randomness must follow the step, not the process.
    common = dict(total_steps=8, checkpoint_every=0, eval_every=0, **{"model.dropout": 0.1})
    straight = tmp_path / "straight"
    train.train_and_evaluate(tiny_config(tiny_shards, straight, **common))

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _raise_sigterm_at(m, 4)
        stopped = train.train_and_evaluate(tiny_config(tiny_shards, resumed, **common))
    assert stopped["stopped_at"] == 4 and stopped["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back
    assert RunCheckpoints(resumed, read_only=True).steps() == [4]
    train.train_and_evaluate(tiny_config(tiny_shards, resumed, **common))
    assert "resuming from step 4" in capsys.readouterr().out

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert a[-1]["val_loss"] == b[-1]["val_loss"]
    params_a, _ = load_params(straight)
    params_b, _ = load_params(resumed)
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fresh_start_never_overwrites_a_run(tiny_shards, tmp_path):
    run = tmp_path / "run"
    ckpts = RunCheckpoints(run)
    state, _, _ = tiny_state()
    ckpts.save(2, state, None, {}, None)
    ckpts.close()
    (run / "config.json").write_text("the other run's config")
    with pytest.raises(CheckpointError, match="resume=False; pass a new --config.run_dir"):
        train.train_and_evaluate(tiny_config(tiny_shards, run, resume=False))
    assert (run / "config.json").read_text() == "the other run's config"


def test_data_position_follows_a_new_batch_size(tiny_shards):
    it = data_iterator(tiny_shards, batch_size=4)
    for _ in range(6):
        next(it)
    bigger = data_iterator(tiny_shards, batch_size=8)
    bigger.set_state(it.get_state())
    checkpoint.rescale_data_position(bigger, saved_batch_size=4, batch_size=8)
    expected = np.concatenate([next(it)["inputs"], next(it)["inputs"]])
    np.testing.assert_array_equal(next(bigger)["inputs"], expected)


def _train_command(run_dir: Path, data_dir: Path, total_steps: int, **extra) -> list[str]:
    flags = dict(
        data_dir=data_dir, run_dir=run_dir, total_steps=total_steps, batch_size=4, block_size=32,
        warmup_steps=1, log_every=1, eval_every=0, eval_tokens=512, peak_tflops=1.0,
        **{"model.n_layer": 2, "model.n_head": 2, "model.n_embd": 64, "model.block_size": 64},
        **extra,
    )
    base = [sys.executable, "-m", "minigpt_jax.train", "--config", str(REPO / "configs/small.py")]
    return base + [f"--config.{k}={v}" for k, v in flags.items()]


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout  # a guard against hanging CI, not a speed assertion
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_saves_the_last_step_and_exits_zero(tiny_shards, tmp_path):
    run = tmp_path / "run"
    cmd = _train_command(run, tiny_shards, total_steps=100_000, checkpoint_every=0)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = run / "metrics.jsonl"
    _wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, proc, "step 3")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate()[0].decode()
    assert proc.returncode == 0, out
    assert "SIGTERM: saved step" in out
    steps = RunCheckpoints(run, read_only=True).steps()
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    assert steps == [last_logged] and last_logged >= 3


_KILL_MID_SAVE = textwrap.dedent(
    """
    import os, signal, sys, jax
    from minigpt_jax.checkpoint import RunCheckpoints, load_params
    from minigpt_jax.model import GPTConfig
    run_dir = sys.argv[1]
    params, record = load_params(run_dir)
    ckpts = RunCheckpoints(run_dir)
    # A state large enough that its write is still going when the process dies.
    big = {"params": params, "opt_state": [jax.numpy.ones((4096, 4096)) for _ in range(4)],
           "step": jax.numpy.int32(99)}
    ckpts.save(99, big, None, record["config"], record["tokenizer"])
    pending = [p.name for p in ckpts.directory.iterdir() if "tmp" in p.name]
    print("pending", pending, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.slow
def test_sigkill_during_save_keeps_the_previous_checkpoint(tiny_shards, tmp_path, capsys):
    run = tmp_path / "run"
    train.train_and_evaluate(tiny_config(tiny_shards, run, total_steps=3, checkpoint_every=3))
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_SAVE, str(run)], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "pending ['99.orbax-checkpoint-tmp" in proc.stdout, proc.stdout  # killed mid-save
    ckpts = RunCheckpoints(run, read_only=True)
    assert ckpts.steps() == [3]
    ckpts.close()
    capsys.readouterr()
    last = train.train_and_evaluate(tiny_config(tiny_shards, run, total_steps=5))
    assert "resuming from step 3" in capsys.readouterr().out
    assert last["step"] == 5
    ckpts = RunCheckpoints(run, read_only=True)
    assert ckpts.latest_step() == 5
    assert not [p for p in ckpts.directory.iterdir() if "tmp" in p.name]  # the partial save is gone


def test_a_run_refused_at_start_up_leaves_its_run_dir_as_it_found_it(tiny_shards, tmp_path):
    """A bad init_from is found after the checkpoints are opened: the run dir it created must
    not stay behind (empty checkpoints/ and checksum dirs), and a killed save's leftovers are
    cleaned before close() returns, not by a thread racing the process's exit."""
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="init_from.*no checkpoints here"):
        train.train_and_evaluate(tiny_config(tiny_shards, run, init_from=f"checkpoint:{tmp_path}"))
    assert not run.exists()

    stale = checkpoint.checkpoint_dir(run) / "7.orbax-checkpoint-tmp-1234"
    stale.mkdir(parents=True)
    RunCheckpoints(run).close()
    assert not stale.exists() and not checkpoint.checkpoint_dir(run).exists()
    assert list(run.iterdir()) == []  # what close() did not create stays: here, run/ itself
