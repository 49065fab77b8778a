"""Fault injection for training (issue 13, items 2-7 and the train tracebacks; issue 12's NaN stop).

Each case runs the command as a user would (in-process through the same entry-point wrapper as
`main`, or a subprocess where signals, flags or exit at interpreter shutdown matter) and asserts
the exit status, ONE line on stderr naming the file or key, no traceback, and that the run
directory is byte-identical afterwards (or, for resume cases, continues exactly).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, read_metrics, tiny_config, write_random_shards

from minigpt_jax import checkpoint, run_dir, shards, train
from minigpt_jax.errors import exit_on_user_error
from minigpt_jax.tokenizer import ByteTokenizer, tokenizer_record

BYTE = tokenizer_record("byte", ByteTokenizer())


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (empty if it does not exist)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_data(root: Path, tokenizer=BYTE, **kw) -> Path:
    """Random shards with a manifest recording `tokenizer`."""
    data = write_random_shards(root, **kw)
    listed = [
        {"file": p.name, "split": split, "tokens": int(shards.open_shard(p).size)}
        for split in ("train", "val")
        for p in shards.find_shards(data, split)
    ]
    shards.write_manifest(data, tokenizer, "uint16", listed, writer="download_data")
    return data


def cfg_for(data: Path, run: Path, **overrides):
    return tiny_config(data, run, **{
        "total_steps": 6, "warmup_steps": 1, "log_every": 3, "eval_every": 3,
        "eval_tokens": 256, "checkpoint_every": 3, **overrides,
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, run dir) of one finished 6-step run with checkpoints at 3 and 6."""
    root = tmp_path_factory.mktemp("trained")
    data = make_data(root / "data")
    train.train_and_evaluate(cfg_for(data, root / "run"))
    return data, root / "run"


def copy_run(trained, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained[1], dst)
    return dst


def run_in_process(cfg, capsys) -> tuple[int, str]:
    """What `main` does with cfg: (exit status, stderr)."""
    capsys.readouterr()
    code = 0
    try:
        with exit_on_user_error():
            train.train_and_evaluate(cfg)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # not tqdm
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


def train_cli(*flags: str, **kw) -> list[str]:
    base = [sys.executable, "-m", "minigpt_jax.train", "--config", str(REPO / "configs/small.py")]
    return base + list(flags) + [f"--config.{k}={v}" for k, v in kw.items()]


def tiny_flags(data: Path, run: Path, **extra) -> dict:
    return {
        "data_dir": data, "run_dir": run, "total_steps": 6, "batch_size": 4, "block_size": 32,
        "warmup_steps": 1, "log_every": 3, "eval_every": 3, "eval_tokens": 256,
        "checkpoint_every": 3, "peak_tflops": 1.0, "lr": 3e-3, "model.preset": "tiny",
        "model.vocab_size": 257, **extra,
    }


def finite_checkpoints(run: Path) -> dict[int, bool]:
    out = {}
    for step in checkpoint.RunCheckpoints(run, read_only=True).steps():
        params, _ = checkpoint.load_params(run, step)
        out[step] = all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(params))
    return out


# --- item 7: config values, each naming its key; nothing is created -----------------------------

@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"lr": -1.0}, "config.lr"),
        ({"lr": -1.0, "min_lr": -2.0}, "config.lr"),
        ({"lr": 1e-3, "min_lr": -1e-4}, "config.min_lr"),
        ({"lr": 1e-3, "min_lr": 1e-2}, "config.min_lr"),
        ({"lr_schedule": "linear"}, "config.lr_schedule"),
        ({"cooldown_frac": 0.0}, "config.cooldown_frac"),
        ({"lr_schedule": "wsd", "warmup_steps": 6}, "config.warmup_steps"),  # = total_steps
        ({"model.dropout": 1.5}, "config.model.dropout"),
        ({"model.dropout": -0.5}, "config.model.dropout"),
        ({"seed": -1}, "config.seed"),
        ({"model.n_head": 0}, "config.model.n_head"),
        ({"model.n_head": 3}, "config.model.n_embd"),  # 64 % 3
        ({"model.attention_impl": "cudnn"}, "config.model.attention_impl"),
        ({"tokenizer": "/nonexistent/tok.json"}, "config.tokenizer"),
    ],
)
def test_bad_config_values_name_the_key(trained, tmp_path, capsys, overrides, key):
    if "model.attention_impl" in overrides and jax.default_backend() == "gpu":
        pytest.skip("cudnn is valid on a GPU")
    run = tmp_path / "fresh"
    code, err = run_in_process(cfg_for(trained[0], run, **overrides), capsys)
    assert code == 2
    assert_one_line(err, key)
    assert not run.exists()  # the lock's directory is removed again


def test_damaged_tokenizer_file_is_named(trained, tmp_path, capsys):
    bad = tmp_path / "tok.tiktoken"
    bad.write_bytes(b"\x00\xffnot a tokenizer\n")
    code, err = run_in_process(cfg_for(trained[0], tmp_path / "fresh", tokenizer=str(bad)),
                               capsys)
    assert code == 2
    assert_one_line(err, "config.tokenizer", str(bad))


def test_run_dir_that_is_a_file(trained, tmp_path, capsys):
    path = tmp_path / "run"
    path.write_text("not a directory")
    code, err = run_in_process(cfg_for(trained[0], path), capsys)
    assert code == 2
    assert_one_line(err, "config.run_dir", str(path))
    assert path.read_text() == "not a directory"


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs (root only): read-only and disk-full cases."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_read_only_run_dir(trained, tmpfs, capsys):
    run = tmpfs / "run"
    shutil.copytree(trained[1], run)
    before = tree_hashes(run)
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)]).returncode == 0
    code, err = run_in_process(cfg_for(trained[0], run, total_steps=9), capsys)
    assert code == 2
    assert_one_line(err, "config.run_dir", "Read-only")
    assert tree_hashes(run) == before


def test_disk_full_during_save(trained, tmpfs, capsys):
    run = tmpfs / "run"
    (tmpfs / "filler").write_bytes(b"\0" * (4 * 2**20 - 300_000))  # leaves ~300 KB: too little
    code, err = run_in_process(cfg_for(trained[0], run), capsys)
    assert code == 2
    assert_one_line(err, str(run / "checkpoints"), "No space left on device")
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()] == []


# --- item 2: one writer per run directory --------------------------------------------------------

def test_lock_refuses_a_second_run_and_stale_locks_are_taken_over(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    with run_dir.locked(run):  # a live holder: this process
        before = tree_hashes(run)
        code, err = run_in_process(cfg_for(trained[0], run, total_steps=9), capsys)
        assert code == 2
        assert_one_line(err, "config.run_dir", f"in use by pid {os.getpid()}")
        assert tree_hashes(run) == before  # the first run's files (its lock too) untouched
    assert not (run / "lock").exists()  # released on exit

    # A holder killed with SIGKILL leaves its lock file; the kernel dropped its flock.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from minigpt_jax import run_dir; "
         "run_dir.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(600)", str(run)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert (run / "lock").exists()
    capsys.readouterr()
    last = train.train_and_evaluate(cfg_for(trained[0], run, total_steps=9))
    assert last["step"] == 9
    err = capsys.readouterr().err
    assert f"taking over the stale lock of pid {holder.pid}" in err
    assert not (run / "lock").exists()


@pytest.mark.slow
def test_second_process_exits_2_and_the_first_is_unharmed(trained, tmp_path):
    data, run = trained[0], tmp_path / "run"
    first = subprocess.Popen(
        train_cli(**tiny_flags(data, run, total_steps=100_000, checkpoint_every=0, log_every=1)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    log = run / "metrics.jsonl"
    deadline = time.monotonic() + 300  # a guard against a hung CI job, not a speed assertion
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.2)
    second = subprocess.run(train_cli(**tiny_flags(data, run)), cwd=REPO, capture_output=True,
                            text=True)
    assert second.returncode == 2
    assert_one_line(second.stderr, "config.run_dir", f"in use by pid {first.pid}")
    first.send_signal(signal.SIGTERM)
    out = first.communicate()[0].decode()
    assert first.returncode == 0, out
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == list(range(1, steps[-1] + 1))  # one writer: no interleaved lines
    assert checkpoint.RunCheckpoints(run, read_only=True).steps() == [steps[-1]]


# --- items 3 and 4: resume checks before anything is written --------------------------------------

def test_resume_refuses_shards_of_another_tokenizer_of_the_same_size(trained, tmp_path, capsys):
    other = {**BYTE, "name": "other-byte", "sha256": "cd" * 32}  # same vocab_size, 257
    data = make_data(tmp_path / "other", tokenizer=other)
    run = copy_run(trained, tmp_path)
    before = tree_hashes(run)
    code, err = run_in_process(cfg_for(data, run, total_steps=9), capsys)
    assert code == 2
    assert_one_line(err, "config.data_dir", "other-byte", str(run / "checkpoints" / "6"))
    assert tree_hashes(run) == before

    fresh = tmp_path / "finetune"
    code, err = run_in_process(
        cfg_for(data, fresh, init_from=f"checkpoint:{trained[1]}"), capsys)
    assert code == 2
    assert_one_line(err, "config.init_from", "other-byte")
    assert tree_hashes(fresh) == {}


@pytest.mark.slow
def test_failed_resume_keeps_config_json_and_prints_no_orbax_traceback(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = tree_hashes(run)
    proc = subprocess.run(
        train_cli(**tiny_flags(trained[0], run, total_steps=9, **{"model.n_embd": 128})),
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cannot schedule new futures" not in proc.stderr
    assert "another model shape" in proc.stderr
    assert tree_hashes(run) == before  # config.json still says width 64


# --- item 5: the val split is checked before the first step -------------------------------------

def _val_cases(tmp_path: Path):
    small = make_data(tmp_path / "small", val_tokens=40)  # one window, batch of 4
    past = make_data(tmp_path / "past")
    tokens = shards.open_shard(past / "val_000000.bin").copy()
    tokens[10] = 300
    shards.write_shard(past / "val_000000.bin", tokens)
    masked = make_data(tmp_path / "masked")
    for split, value in (("train", 1), ("val", 0)):
        n = shards.open_shard(masked / f"{split}_000000.bin").size
        shards.write_shard(masked / f"{split}_000000.mask.bin", np.full(n, value, np.uint16))
    return [(small, "fewer than one batch"), (past, "token id 300"), (masked, "no token the loss")]


def test_val_split_problems_stop_before_the_first_step(tmp_path, capsys):
    for data, needle in _val_cases(tmp_path):
        run = tmp_path / f"run_{data.name}"
        code, err = run_in_process(cfg_for(data, run), capsys)
        assert code == 2, err
        assert_one_line(err, needle, str(data))
        assert tree_hashes(run) == {}


def test_an_eval_failure_saves_the_train_state(trained, tmp_path, capsys, monkeypatch):
    from minigpt_jax.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("val shards vanished")

    monkeypatch.setattr(train, "evaluate", broken)
    run = tmp_path / "run"
    code, err = run_in_process(cfg_for(trained[0], run, checkpoint_every=0), capsys)
    assert code == 2
    assert "val shards vanished" in err and "Traceback" not in err
    assert checkpoint.RunCheckpoints(run, read_only=True).steps() == [3]  # the first eval step


# --- item 6: NaN never saved; a damaged checkpoint is caught ------------------------------------

@pytest.mark.parametrize("log_every, checkpoint_every", [(1, 100), (100, 1)])
def test_nan_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(
    trained, tmp_path, capsys, log_every, checkpoint_every
):
    """Issue 12's NaN stop: detected when the loss is logged, or by the save-time check when
    checkpoints come between logged steps."""
    run = copy_run(trained, tmp_path)
    cfg = cfg_for(trained[0], run, total_steps=12, lr=1e38, min_lr=0.0, log_every=log_every,
                  eval_every=0, checkpoint_every=checkpoint_every)
    code, err = run_in_process(cfg, capsys)
    assert code == 3
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    assert "not finite" in lines[0] or "train loss is nan" in lines[0], err
    finite = finite_checkpoints(run)
    assert all(finite.values()) and 6 in finite, finite
    assert f"last good checkpoint is step {max(finite)}" in lines[0]


def test_a_flipped_bit_falls_back_to_the_previous_checkpoint(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    sums = json.loads((run / "checkpoint_checksums" / "6.json").read_text())
    data_file = max((n for n in sums if n.startswith("state/")),
                    key=lambda n: (run / "checkpoints/6" / n).stat().st_size)
    path = run / "checkpoints/6" / data_file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))

    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.load_params(run, 6)
    capsys.readouterr()
    last = train.train_and_evaluate(cfg_for(trained[0], run))  # resumes from 3, redoes 4..6
    out = capsys.readouterr()
    assert f"checkpoint step 6 is damaged: {path}" in out.err
    assert "falling back to step 3" in out.err and "resuming from step 3" in out.out
    assert last["step"] == 6
    assert (run / "corrupt_checkpoints" / "6").is_dir()  # set aside, not deleted
    original = read_metrics(trained[1])
    assert last["train_loss"] == original[-1]["train_loss"]  # continues exactly


# --- signals and flags (subprocesses) -----------------------------------------------------------

def test_config_file_syntax_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "minigpt_jax.train", "--config", str(bad)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert_one_line(proc.stderr, f"{bad}:1", "syntax error")


@pytest.mark.slow
def test_ctrl_c_during_start_up_exits_cleanly(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = tree_hashes(run)
    proc = subprocess.Popen(train_cli(**tiny_flags(trained[0], run, total_steps=9)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "lock").exists():  # locked: checking, compiling, restoring
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGINT during start-up" in err
    assert tree_hashes(run) == before
