"""Fault injection for the data writers and tokenizers (issue 13, items 1 and 9 and the data
commands' tracebacks): every bad input or hostile environment ends in one line naming the file or
flag, exit 2, no traceback, and the directory exactly as it was (or, for an interruption, a rerun
that finishes with the bytes of an uninterrupted run).

Commands run in-process through `main(argv)` except where a signal or the real exit status of the
process matters. Read-only and full-disk cases mount a small tmpfs (root only, skipped otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, read_jsonl_texts, tree_hashes

from minigpt_jax import data_prep, sft, train_tokenizer
from minigpt_jax.bpe import Tokenizer
from minigpt_jax.errors import TokenizerError
from minigpt_jax.shards import find_shards, read_manifest
from minigpt_jax.tasks.arithmetic import data as arithmetic_data
from minigpt_jax.tokenizer import ByteTokenizer


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of a command's `main(argv)`."""
    capsys.readouterr()
    try:
        rc = main(argv) or 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    return rc, capsys.readouterr().err


def refused(main, argv: list[str], capsys, *names, watch: Path | None = None) -> str:
    """Run a command that must refuse: exit 2, one line naming `names`, `watch` untouched."""
    before = tree_hashes(watch) if watch else None
    rc, err = run_main(main, argv, capsys)
    assert rc == 2, err
    line = assert_one_line_error(err, *names)
    if watch:
        assert tree_hashes(watch) == before
    return line


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    docs = read_jsonl_texts(shared_data / "classics" / "austen.jsonl", limit=40)
    return [d[:1000] for d in docs]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", texts)


def prep_argv(out: Path, files, *extra: str) -> list[str]:
    return ["--data_files", *map(str, files), f"--out_dir={out}", "--tokenizer_path=byte",
            "--streaming=1", "--progress=0", "--num_proc=1", "--shard_size=4000",
            "--val_tokens=4000", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> dict[str, str]:
    """The bytes an uninterrupted run writes: every resumed run must end with exactly these."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert data_prep.main(prep_argv(out, [corpus])) == 0
    return tree_hashes(out)


@pytest.fixture(scope="module")
def qa(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": f"What is {i} + {i}?", "response": f"{2 * i}."}) + "\n"
        for i in range(40)))
    return path


def sft_argv(out: Path, files, *extra: str) -> list[str]:
    return ["--data_files", *map(str, files), f"--out_dir={out}", "--tokenizer_path=byte",
            "--val_examples=2", *extra]


# ------------------------------------------------------------------------------------------------
# A small tmpfs, for a read-only directory and a full disk (root ignores permission bits)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


# ------------------------------------------------------------------------------------------------
# Item 1: no writer clobbers a directory it did not make; --overwrite replaces it completely


def test_writers_refuse_each_others_directories(tmp_path, corpus, qa, capsys, gpt2_tiktoken_path):
    pre = tmp_path / "pretrain"
    assert data_prep.main(prep_argv(pre, [corpus])) == 0
    refused(sft.main, sft_argv(pre, [qa]), capsys, f"--out_dir={pre}", "data_prep", "--overwrite",
            watch=pre)
    refused(arithmetic_data.main, ["--out_dir", str(pre), "--train_tokens=2000",
                                   "--val_tokens=1000", "--block_size=256"], capsys,
            f"--out_dir={pre}", "data_prep", watch=pre)

    tuned = tmp_path / "sft"
    assert run_main(sft.main, sft_argv(tuned, [qa]), capsys)[0] == 0
    refused(data_prep.main, prep_argv(tuned, [corpus]), capsys, "sft", "--overwrite", watch=tuned)
    # The same writer with another tokenizer did not make it either.
    refused(sft.main, [*sft_argv(tuned, [qa]), f"--tokenizer_path={gpt2_tiktoken_path}"], capsys,
            "tokenizer 'byte'", watch=tuned)

    other = tmp_path / "notes"
    other.mkdir()
    (other / "README.txt").write_text("my notes")
    for main, argv in ((data_prep.main, prep_argv(other, [corpus])),
                       (sft.main, sft_argv(other, [qa]))):
        refused(main, argv, capsys, "README.txt", "--overwrite", watch=other)
    (tmp_path / "a_file").write_text("x")
    refused(sft.main, sft_argv(tmp_path / "a_file", [qa]), capsys, "a_file", "not a directory")


def test_overwrite_replaces_and_leaves_no_stale_shard(tmp_path, corpus, qa, capsys):
    out = tmp_path / "out"
    assert data_prep.main(prep_argv(out, [corpus])) == 0
    assert len(find_shards(out, "train")) > 3
    (out / "README.txt").write_text("kept: not data")
    rc, err = run_main(sft.main, [*sft_argv(out, [qa]), "--overwrite"], capsys)
    assert rc == 0, err
    manifest = read_manifest(out)
    listed = {s["file"] for s in manifest["shards"]} | {s["mask"] for s in manifest["shards"]}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json", "README.txt"}

    # SFT data made again, smaller, by SFT with the same tokenizer: the extra shards go.
    many = tmp_path / "many"
    assert run_main(sft.main, [*sft_argv(many, [qa]), "--shard_size=100"], capsys)[0] == 0
    assert len(find_shards(many, "train")) > 5
    assert run_main(sft.main, sft_argv(many, [qa]), capsys)[0] == 0
    assert [p.name for p in find_shards(many, "train")] == ["train_000000.bin"]
    assert read_manifest(many)["shards"][0]["file"] == "train_000000.bin"

    # data_prep with other arguments: refused, then replaced with --overwrite.
    argv = prep_argv(tmp_path / "p", [corpus])
    assert data_prep.main(argv) == 0
    refused(data_prep.main, [*argv, "--shard_size=9000"], capsys, "shard_size", "--overwrite",
            watch=tmp_path / "p")
    assert data_prep.main([*argv, "--shard_size=9000", "--overwrite"]) == 0
    sizes = [json.loads(json.dumps(s))["tokens"] for s in read_manifest(tmp_path / "p")["shards"]]
    assert len(list((tmp_path / "p").glob("*.bin"))) == len(sizes) and max(sizes) == 9000


def test_arithmetic_data_refuses_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "arith"
    argv = ["--out_dir", str(out), "--train_tokens=2000", "--val_tokens=1000", "--block_size=256"]
    (out).mkdir()
    (out / "train_000000.bin").write_bytes(b"not mine")
    refused(arithmetic_data.main, argv, capsys, "train_000000.bin", "--overwrite", watch=out)
    assert run_main(arithmetic_data.main, [*argv, "--overwrite"], capsys)[0] == 0
    assert read_manifest(out)["writer"] == "arithmetic"


@pytest.mark.parametrize("main", [data_prep.main, sft.main])
@pytest.mark.parametrize("size", ["-5", "0", str(10**12)])
def test_bad_shard_size(tmp_path, corpus, qa, capsys, main, size):
    argv = prep_argv if main is data_prep.main else sft_argv
    files = [corpus] if main is data_prep.main else [qa]
    refused(main, [*argv(tmp_path / "out", files), f"--shard_size={size}"], capsys,
            f"--shard_size={size}")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# Item 9: a resume or a finished directory checks the shards it recorded


def interrupted_run(out: Path, corpus: Path, monkeypatch, after: int = 4) -> None:
    """data_prep killed (KeyboardInterrupt) after `after` shards: progress.json, no manifest."""
    real_flush = data_prep.ShardWriter.flush
    count = []

    def dying_flush(self):
        real_flush(self)
        count.append(1)
        if len(count) == after:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(data_prep.ShardWriter, "flush", dying_flush)
        with pytest.raises(SystemExit) as e:
            data_prep.main(prep_argv(out, [corpus]))
    assert e.value.code == 130 and (out / "progress.json").is_file()


@pytest.mark.parametrize("damage", ["deleted", "changed"])
def test_resume_makes_a_damaged_recorded_shard_again(tmp_path, corpus, reference, monkeypatch,
                                                     capsys, damage):
    out = tmp_path / "out"
    interrupted_run(out, corpus, monkeypatch)
    shard = out / json.loads((out / "progress.json").read_text())["shards"][1]["file"]
    if damage == "deleted":
        shard.unlink()
    else:  # same size, other bytes
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.write_bytes(bytes(data))
    rc, err = run_main(data_prep.main, prep_argv(out, [corpus]), capsys)
    assert rc == 0 and shard.name in err
    assert tree_hashes(out) == reference


def test_finished_directory_with_a_changed_shard_is_not_complete(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    assert data_prep.main(prep_argv(out, [corpus])) == 0
    shard = find_shards(out, "train")[2]
    data = bytearray(shard.read_bytes())
    data[2000] ^= 1
    shard.write_bytes(bytes(data))
    refused(data_prep.main, prep_argv(out, [corpus]), capsys, shard.name, "sha256", watch=out)


# ------------------------------------------------------------------------------------------------
# download_data: bad input, a damaged record, a hostile file system, Ctrl-C


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
@pytest.mark.parametrize("streaming", ["0", "1"])
def test_non_utf8_input_names_the_file_and_reruns_cleanly(tmp_path, texts, capsys, suffix,
                                                          streaming):
    bad = tmp_path / f"latin1{suffix}"
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts) if suffix == ".jsonl" else (
        "\n".join(texts))
    bad.write_bytes(body.encode() + b'{"text": "caf\xe9"}\n')
    out = tmp_path / "out"
    argv = [*prep_argv(out, [bad], f"--streaming={streaming}"), f"--cache_dir={tmp_path / 'c'}"]
    for _ in range(2):  # the rerun fails the same way: nothing stale was left behind
        line = refused(data_prep.main, argv, capsys, str(bad), "UTF-8")
        assert "fineweb" not in line
        assert not out.exists()
    # A progress.json left by such a failure in older versions (no shard recorded) is no obstacle.
    out.mkdir()
    (out / "progress.json").write_text(json.dumps({"args": {}, "inputs": [], "shards": []}))
    bad.write_bytes(body.encode())
    assert data_prep.main(argv) == 0


def test_blank_lines_name_the_file_not_the_default_dataset(tmp_path, capsys):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n\n")
    for streaming in ("0", "1"):
        argv = [*prep_argv(tmp_path / "out", [blank], f"--streaming={streaming}"),
                f"--cache_dir={tmp_path / 'c'}"]
        line = refused(data_prep.main, argv, capsys, str(blank), "no documents")
        assert "fineweb" not in line.lower()


@pytest.mark.parametrize("record", ["progress.json", "manifest.json"])
def test_damaged_record_is_named_and_overwrite_recovers(tmp_path, corpus, monkeypatch, capsys,
                                                        record):
    out = tmp_path / "out"
    if record == "progress.json":
        interrupted_run(out, corpus, monkeypatch)
    else:
        assert data_prep.main(prep_argv(out, [corpus])) == 0
    (out / record).write_text('{"shards": [')
    refused(data_prep.main, prep_argv(out, [corpus]), capsys, record, "--overwrite", watch=out)
    assert data_prep.main([*prep_argv(out, [corpus]), "--overwrite"]) == 0
    assert read_manifest(out)["shards"]


def test_read_only_out_dir(tmp_path, corpus, qa, capsys):
    with tmpfs(tmp_path / "ro", "4m") as mnt:
        assert data_prep.main(prep_argv(mnt / "done", [corpus])) == 0
        (mnt / "empty").mkdir()
        remount(mnt, "ro")
        for out in (mnt / "empty", mnt / "new"):
            refused(data_prep.main, prep_argv(out, [corpus]), capsys, str(mnt), watch=mnt)
            refused(sft.main, sft_argv(out, [qa]), capsys, str(mnt), watch=mnt)
        # A finished directory on a read-only disk is still checked and reported complete.
        assert data_prep.main(prep_argv(mnt / "done", [corpus])) == 0
        refused(train_tokenizer.main, ["--input", str(corpus), "--vocab_size=300",
                                       f"--out={mnt / 'tok.json'}"], capsys, "--out=", watch=mnt)


def test_disk_full_then_resume(tmp_path, corpus, reference, capsys):
    with tmpfs(tmp_path / "small", "48k") as mnt:
        out = mnt / "out"
        line = refused(data_prep.main, prep_argv(out, [corpus]), capsys, str(mnt))
        assert "No space left" in line
        assert not list(out.glob("*.tmp"))
        remount(mnt, "size=4m")
        assert data_prep.main(prep_argv(out, [corpus])) == 0
        assert tree_hashes(out) == reference


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(tmp_path, shared_data):
    """The real command line, interrupted by SIGINT mid-way (tokenizer threads running)."""
    texts = [t[:3000] for t in read_jsonl_texts(shared_data / "classics" / "kjv.jsonl", limit=None)]
    # Three copies: enough shards after the first that a loaded machine cannot finish first.
    corpus = write_jsonl(tmp_path / "kjv.jsonl", texts * 3)
    argv = prep_argv(tmp_path / "out", [corpus], "--num_proc=2")
    cmd = [sys.executable, str(REPO / "scripts" / "download_data.py"), *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert data_prep.main([*argv, f"--out_dir={tmp_path / 'ref'}"]) == 0
    progress = tmp_path / "out" / "progress.json"
    for attempt in range(3):
        # As from a terminal: a shell's background job (`pytest ... &`) inherits SIGINT ignored,
        # and an ignored SIGINT survives exec, so Python would never raise KeyboardInterrupt.
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                if len(json.loads(progress.read_text())["shards"]) >= 1:
                    proc.send_signal(signal.SIGINT)
                    break
            time.sleep(0.005)
        err = proc.communicate()[1]
        if proc.returncode == 0 and attempt < 2:  # it finished before the signal landed: a race
            shutil.rmtree(tmp_path / "out")  # lost by this test's polling, not a failure; again
            continue
        break
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().startswith("interrupted:") and "resume" in err
    assert len(err.strip().splitlines()) == 1
    subprocess.run(cmd, env=env, check=True)
    assert tree_hashes(tmp_path / "out") == tree_hashes(tmp_path / "ref")


# ------------------------------------------------------------------------------------------------
# sft


def test_sft_bad_input(tmp_path, qa, capsys):
    out = tmp_path / "out"
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(qa.read_bytes() + b'{"prompt": "caf\xe9", "response": "yes"}\n')
    refused(sft.main, sft_argv(out, [latin1]), capsys, f"{latin1}:41", "UTF-8")
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text(qa.read_text() + '{"prompt": "a\\ud800b", "response": "yes"}\n')
    refused(sft.main, sft_argv(out, [surrogate]), capsys, f"{surrogate}:41", '"prompt"',
            "U+D800")
    assert not out.exists()


def damaged_tokenizers(tmp_path: Path) -> list[Path]:
    good = Tokenizer.train(["hello world, hello there"] * 3, 270)
    good.save(tmp_path / "good.json")
    text = (tmp_path / "good.json").read_text()
    spec = json.loads(text)
    files = {"truncated.json": text[: len(text) // 2],
             "pattern.json": json.dumps({**spec, "pattern": "(?r)a"}),
             "empty_match.json": json.dumps({**spec, "pattern": "a*"}),
             "merge.json": json.dumps({**spec, "merges": [[1, 999, "x"]]}),
             "binary.tiktoken": "\x00\x01 garbage\n"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    return [tmp_path / name for name in files]


def test_damaged_tokenizer_is_named(tmp_path, qa, corpus, capsys):
    for tok in damaged_tokenizers(tmp_path):
        refused(sft.main, [*sft_argv(tmp_path / "o", [qa]), f"--tokenizer_path={tok}"], capsys,
                str(tok))
        refused(data_prep.main, [*prep_argv(tmp_path / "o", [corpus]),
                                 f"--tokenizer_path={tok}"], capsys, str(tok))
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# train_tokenizer


def test_train_tokenizer_refusals(tmp_path, corpus, capsys):
    tok_argv = lambda *a: ["--input", *map(str, a[:-1]), "--vocab_size=300", f"--out={a[-1]}"]
    (tmp_path / "dir.json").mkdir()
    refused(train_tokenizer.main, tok_argv(corpus, tmp_path / "dir.json"), capsys,
            "dir.json", "directory", watch=tmp_path)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    for empty in (blank, write_jsonl(tmp_path / "empties.jsonl", ["", ""])):
        refused(train_tokenizer.main, tok_argv(empty, tmp_path / "t.json"), capsys, str(empty))
        assert not (tmp_path / "t.json").exists()
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"plain text\ncaf\xe9\n")
    refused(train_tokenizer.main, tok_argv(corpus, latin1, tmp_path / "t.json"), capsys,
            str(latin1), "UTF-8")
    refused(train_tokenizer.main, ["--input", str(corpus), "--vocab_size=100",
                                   f"--out={tmp_path / 't.json'}"], capsys, "--vocab_size")
    refused(train_tokenizer.main, tok_argv(tmp_path / "missing.jsonl", tmp_path / "t.json"),
            capsys, "missing.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "blank.txt", "dir.json", "empties.jsonl", "latin1.txt"]


def test_train_tokenizer_errors_exit_2_from_the_command_line(tmp_path):
    """The script's real exit status, not a SystemExit message (which exits 1)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_tokenizer.py"), "--input",
         str(tmp_path / "missing.jsonl"), "--vocab_size=300", f"--out={tmp_path / 't.json'}"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "missing.jsonl")


def test_failed_save_leaves_no_tmp_file(tmp_path, monkeypatch):
    tok = Tokenizer.train(["hello world"] * 3, 260)
    target = tmp_path / "tok.json"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        tok.save(target)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Lone surrogates: every encoder refuses them, naming the position


@pytest.fixture(scope="module")
def bpe(texts) -> Tokenizer:
    return Tokenizer.train(texts, 400)


def test_lone_surrogate_is_refused_by_every_encoder(bpe):
    text = "caf\u00e9 \ud83d ok"  # a high surrogate without its low half, at character 5
    for tok in (ByteTokenizer(), bpe):
        batch = lambda t, tok=tok: tok.encode_batch(["ok", t])
        for encode in (tok.encode, tok.encode_array, batch):
            with pytest.raises(TokenizerError, match="lone surrogate U\\+D83D at character 5"):
                encode(text)
    with pytest.raises(TokenizerError, match="character 5"):
        bpe.encode_reference(text)
    with pytest.raises(TokenizerError, match="character 0"):
        Tokenizer.train(["fine", "\udc00 not fine"], 300)
    # Valid text, astral characters (a surrogate *pair* in UTF-16) included, still round-trips.
    for s in ("caf\u00e9 \U0001F600 ok", "\U0001F600" * 3, ""):
        for tok in (ByteTokenizer(), bpe):
            assert tok.decode(tok.encode(s)) == s
            np.testing.assert_array_equal(tok.encode_array(s), tok.encode(s))


def test_arithmetic_data_refuses_a_token_count_that_is_not_positive(tmp_path, capsys):
    """--train_tokens -5 used to write a one-chunk shard and exit 0."""
    base = ["--out_dir", str(tmp_path / "a"), "--train_tokens=2000", "--val_tokens=1000",
            "--block_size=256"]
    for flag, value in (("--train_tokens", "-5"), ("--val_tokens", "0"), ("--block_size", "0")):
        refused(arithmetic_data.main, [*base, f"{flag}={value}"], capsys, flag, value)
        assert not (tmp_path / "a").exists()


def test_arithmetic_data_refuses_op_weights_that_draw_nothing(tmp_path, capsys):
    base = ["--out_dir", str(tmp_path / "a"), "--train_tokens=2000", "--val_tokens=1000",
            "--block_size=256", "--op_weights"]
    for weights in (["0", "0", "0", "0"], ["1", "-1", "1", "1"], ["1", "nan", "1", "1"],
                    ["1", "1", "inf", "1"], ["1e+308", "1e+308", "1e+308", "1e+308"]):
        refused(arithmetic_data.main, [*base, *weights], capsys, "--op_weights", " ".join(weights))
        assert not (tmp_path / "a").exists()
