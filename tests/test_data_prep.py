"""scripts/download_data.py / minigpt_jax.data_prep on local text: counts, cuts, resume, errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, read_jsonl_texts

from minigpt_jax import data_prep, documents
from minigpt_jax.data_prep import PrepArgs, prepare
from minigpt_jax.errors import DataError
from minigpt_jax.shards import check_manifest, find_shards, manifest_tokenizer_spec, open_shard
from minigpt_jax.tokenizer import ByteTokenizer, load_tokenizer


def write_jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({field: t, "id": len(t)}) + "\n")
    return path


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    """~60 real documents, cut to 1-2k characters so byte-level runs stay small."""
    docs = read_jsonl_texts(shared_data / "classics" / "austen.jsonl", limit=30)
    docs += read_jsonl_texts(shared_data / "classics" / "kjv.jsonl", limit=30)
    return [d[: 1000 + 37 * i % 1000] for i, d in enumerate(docs)]


@pytest.fixture
def corpus(tmp_path, texts) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", texts)


@pytest.fixture
def gpt2_env(gpt2_tiktoken_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_GPT2_TIKTOKEN", str(gpt2_tiktoken_path))


def run(out_dir: Path, files, **kw) -> dict:
    defaults = dict(data_files=tuple(map(str, files)), out_dir=str(out_dir), tokenizer_path="byte",
                    num_proc=1, streaming=True, progress=False, shard_size=10_000, val_tokens=3_000)
    return prepare(PrepArgs(**{**defaults, **kw}))


def stream_of(tokenizer, texts: list[str]) -> np.ndarray:
    """What the shards must hold: per document, EOT then its tokens."""
    out = []
    for t in texts:
        out += [tokenizer.eot_id, *tokenizer.encode(t)]
    return np.array(out, np.int64)


def split_tokens(out_dir: Path, split: str) -> list[np.ndarray]:
    return [np.asarray(open_shard(p), np.int64) for p in find_shards(out_dir, split)]


def all_bytes(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


# ------------------------------------------------------------------------------------------------
# What the shards hold


@pytest.mark.parametrize("spec", ["byte", "gpt2"])
def test_tokens_are_the_documents_with_one_eot_each(tmp_path, corpus, texts, spec, request):
    if spec == "gpt2":
        request.getfixturevalue("gpt2_env")
    tok = load_tokenizer(spec)
    manifest = run(tmp_path / "out", [corpus], tokenizer_path=spec, shard_size=4_000,
                   val_tokens=1_500)
    expected = stream_of(tok, texts)
    val, train = split_tokens(tmp_path / "out", "val"), split_tokens(tmp_path / "out", "train")
    np.testing.assert_array_equal(np.concatenate(val + train), expected)
    assert manifest["tokens"] == {"val": 1_500, "train": expected.size - 1_500}
    assert sum(manifest["documents"].values()) == len(texts)
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer"] == {**tok.identity, "spec": spec}
    assert manifest["input_bytes"] == sum(len(t.encode()) for t in texts)
    on_disk = {p.name for p in (tmp_path / "out").iterdir()}
    assert on_disk == {s["file"] for s in manifest["shards"]} | {"manifest.json"}


def test_eot_text_inside_a_document_is_not_a_document_boundary(tmp_path, gpt2_env):
    docs = ["a <|endoftext|> b", "<|endoftext|>", "plain"]
    run(tmp_path / "out", [write_jsonl(tmp_path / "e.jsonl", docs)], tokenizer_path="gpt2",
        val_tokens=2)
    tokens = np.concatenate(split_tokens(tmp_path / "out", "val")
                            + split_tokens(tmp_path / "out", "train"))
    assert int((tokens == 50256).sum()) == len(docs)


def test_shard_boundaries_and_threshold(tmp_path, corpus, texts):
    expected = stream_of(ByteTokenizer(), texts)
    manifest = run(tmp_path / "out", [corpus], shard_size=4_000, val_tokens=9_000,
                   tokens_threshold=10_000)
    sizes = [(s["split"], s["tokens"]) for s in manifest["shards"]]
    assert sizes == [("val", 4_000), ("val", 4_000), ("val", 1_000),
                     ("train", 4_000), ("train", 4_000), ("train", 2_000)]
    val, train = split_tokens(tmp_path / "out", "val"), split_tokens(tmp_path / "out", "train")
    np.testing.assert_array_equal(np.concatenate(val + train), expected[:19_000])
    assert [p.name for p in find_shards(tmp_path / "out", "train")] == [
        "train_000000.bin", "train_000001.bin", "train_000002.bin"]


def test_default_val_of_an_input_smaller_than_a_shard_is_its_first_tenth(tmp_path, corpus,
                                                                          texts):
    expected = stream_of(ByteTokenizer(), texts)
    manifest = run(tmp_path / "out", [corpus], shard_size=10**6, val_tokens=None)
    n_val = expected.size // 10
    assert manifest["tokens"] == {"val": n_val, "train": expected.size - n_val}
    val, train = split_tokens(tmp_path / "out", "val"), split_tokens(tmp_path / "out", "train")
    np.testing.assert_array_equal(np.concatenate(val + train), expected)
    eot_in_val = int((val[0] == ByteTokenizer.eot_id).sum())
    assert manifest["documents"] == {"val": eot_in_val, "train": len(texts) - eot_in_val}
    assert manifest["input_bytes"] == sum(len(t.encode()) for t in texts)


def test_separate_validation_files(tmp_path, texts):
    train_f = write_jsonl(tmp_path / "train.jsonl", texts[:40])
    val_f = write_jsonl(tmp_path / "val.jsonl", texts[40:])
    manifest = run(tmp_path / "out", [train_f], val_data_files=(str(val_f),), val_tokens=None)
    tok = ByteTokenizer()
    np.testing.assert_array_equal(np.concatenate(split_tokens(tmp_path / "out", "val")),
                                  stream_of(tok, texts[40:]))
    np.testing.assert_array_equal(np.concatenate(split_tokens(tmp_path / "out", "train")),
                                  stream_of(tok, texts[:40]))
    assert manifest["documents"] == {"train": 40, "val": len(texts) - 40}


def test_txt_parquet_and_jsonl_give_the_same_stream(tmp_path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = texts[:12]
    jsonl = write_jsonl(tmp_path / "c.jsonl", docs)
    pq.write_table(pa.table({"text": docs}), tmp_path / "c.parquet", row_group_size=5)
    txt_dir = tmp_path / "txt"
    txt_dir.mkdir()
    for i, d in enumerate(docs):  # one document per file, in name order
        (txt_dir / f"{i:03d}.txt").write_text(d)
    outs = {}
    for name, files in [("jsonl", [jsonl]), ("parquet", [tmp_path / "c.parquet"]),
                        ("txt", [txt_dir / "*.txt"])]:
        for streaming in (True, False):
            out = tmp_path / f"{name}_{streaming}"
            run(out, files, streaming=streaming, cache_dir=str(tmp_path / "cache"))
            outs[(name, streaming)] = [p.read_bytes() for p in sorted(out.glob("*.bin"))]
    first = outs[("jsonl", True)]
    assert all(v == first for v in outs.values())


def test_shuffle_with_seed_is_a_deterministic_permutation(tmp_path, corpus, texts):
    a = run(tmp_path / "a", [corpus], seed=3, streaming=False, cache_dir=str(tmp_path / "c"))
    b = run(tmp_path / "b", [corpus], seed=3, streaming=False, cache_dir=str(tmp_path / "c"))
    assert all_bytes(tmp_path / "a").keys() == all_bytes(tmp_path / "b").keys()
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    got = np.concatenate(split_tokens(tmp_path / "a", "val")
                         + split_tokens(tmp_path / "a", "train"))
    plain = stream_of(ByteTokenizer(), texts)
    assert got.size == plain.size and not np.array_equal(got, plain)
    assert sorted(got.tolist()) == sorted(plain.tolist())


# ------------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_bytes_twice_with_threads_and_with_processes(tmp_path, corpus, gpt2_env, monkeypatch):
    monkeypatch.setattr(documents, "_TASK_CHARS", 3_000)  # many tasks: the workers really run
    args = dict(tokenizer_path="gpt2", shard_size=2_000, val_tokens=1_000)
    run(tmp_path / "one", [corpus], **args)
    run(tmp_path / "again", [corpus], **args)
    run(tmp_path / "threads", [corpus], num_proc=2, **args)
    monkeypatch.setattr(data_prep, "_THREADED_BATCHES", 4)  # a "large" input: spawned processes
    spawned = []
    real_pool = data_prep.multiprocessing.get_context("spawn").Pool
    monkeypatch.setattr(
        data_prep.multiprocessing.get_context("spawn"),
        "Pool",
        lambda *a, **k: spawned.append(1) or real_pool(*a, **k),
    )
    run(tmp_path / "processes", [corpus], num_proc=2, **args)
    assert spawned
    one = all_bytes(tmp_path / "one")
    assert len(one) > 5
    assert one == all_bytes(tmp_path / "again") == all_bytes(tmp_path / "threads")
    assert one == all_bytes(tmp_path / "processes")


@pytest.mark.parametrize("streaming", [True, False])
def test_interrupted_run_resumes_to_the_same_bytes(tmp_path, corpus, monkeypatch, streaming):
    """Streaming sources resume by reading past the finished documents, Arrow ones by index."""
    monkeypatch.setattr(documents, "_TASK_CHARS", 5_000)
    prep = functools.partial(run, streaming=streaming, cache_dir=str(tmp_path / "cache"))
    prep(tmp_path / "ref", [corpus], shard_size=3_000, val_tokens=4_000)
    real_flush = data_prep.ShardWriter.flush
    calls = []

    def dying_flush(self):
        real_flush(self)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if killed after the 4th shard

    monkeypatch.setattr(data_prep.ShardWriter, "flush", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        prep(tmp_path / "out", [corpus], shard_size=3_000, val_tokens=4_000)
    assert (tmp_path / "out" / "progress.json").is_file()
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(DataError, match="unfinished"):
        check_manifest(tmp_path / "out", None)
    monkeypatch.setattr(data_prep.ShardWriter, "flush", real_flush)
    prep(tmp_path / "out", [corpus], shard_size=3_000, val_tokens=4_000)
    assert all_bytes(tmp_path / "out") == all_bytes(tmp_path / "ref")
    # A rerun of a finished directory does nothing; other arguments are refused.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    prep(tmp_path / "out", [corpus], shard_size=3_000, val_tokens=4_000)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    with pytest.raises(DataError, match="shard_size"):
        prep(tmp_path / "out", [corpus], shard_size=5_000, val_tokens=4_000)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_bytes(tmp_path, shared_data, gpt2_tiktoken_path):
    """SIGKILL the real command line mid-way; the rerun finishes with the uninterrupted bytes."""
    cmd = [sys.executable, str(REPO / "scripts" / "download_data.py"), "--data_files",
           str(shared_data / "classics" / "austen.jsonl"), "--streaming=1", "--shard_size=50000",
           "--val_tokens=75000", "--num_proc=2", "--progress=0"]
    env = {**os.environ, "MINIGPT_GPT2_TIKTOKEN": str(gpt2_tiktoken_path)}
    subprocess.run([*cmd, f"--out_dir={tmp_path / 'ref'}"], env=env, check=True)
    out = tmp_path / "out"
    proc = subprocess.Popen([*cmd, f"--out_dir={out}"], env=env)
    progress = out / "progress.json"
    while proc.poll() is None:
        if progress.is_file() and len(json.loads(progress.read_text())["shards"]) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "manifest.json").exists()
    subprocess.run([*cmd, f"--out_dir={out}"], env=env, check=True)
    assert all_bytes(out) == all_bytes(tmp_path / "ref")
    assert len(find_shards(out, "train")) > 5


# ------------------------------------------------------------------------------------------------
# Tokenizers and the manifest training reads


def test_trained_tokenizer_travels_with_the_shards(tmp_path, corpus, texts, gpt2_env):
    from minigpt_jax.bpe import Tokenizer

    trained = Tokenizer.train(texts, vocab_size=300, name="tiny")
    trained.save(tmp_path / "tiny.json")
    manifest = run(tmp_path / "out", [corpus], tokenizer_path=str(tmp_path / "tiny.json"))
    assert manifest["tokenizer"] == {**trained.identity, "spec": "tokenizer.json"}
    copied = tmp_path / "out" / "tokenizer.json"
    assert copied.read_bytes() == (tmp_path / "tiny.json").read_bytes()
    spec = manifest_tokenizer_spec(tmp_path / "out", manifest)
    again = load_tokenizer(spec)
    assert again.identity == trained.identity
    tokens = np.concatenate(split_tokens(tmp_path / "out", "val")
                            + split_tokens(tmp_path / "out", "train"))
    np.testing.assert_array_equal(tokens, stream_of(trained, texts))
    assert check_manifest(tmp_path / "out", trained.identity)["shards"] == manifest["shards"]
    gpt2 = load_tokenizer("gpt2").identity
    with pytest.raises(DataError, match=r"made with tokenizer 'tiny'.*this run uses 'gpt2'"):
        check_manifest(tmp_path / "out", gpt2)


def test_check_manifest(tmp_path, corpus):
    assert check_manifest(tmp_path, None) is None  # shards from elsewhere: nothing to check
    manifest = run(tmp_path / "out", [corpus])
    assert check_manifest(tmp_path / "out", ByteTokenizer().identity, verify_checksums=True) == (
        manifest)
    shard = tmp_path / "out" / manifest["shards"][-1]["file"]
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="another size"):
        check_manifest(tmp_path / "out", None)


def test_pydoc_quick_start_command_line(tmp_path, capsys):
    out = tmp_path / "pydoc"
    rc = data_prep.main(["--dataset=pydoc", "--tokenizer_path=byte", f"--out_dir={out}",
                         "--val_tokens=65536", "--shard_size=1000000", "--progress=1"])
    assert rc == 0
    manifest = check_manifest(out, ByteTokenizer().identity)
    assert manifest["tokens"]["val"] == 65_536 and manifest["tokens"]["train"] > 300_000
    assert manifest["documents"]["train"] + manifest["documents"]["val"] > 50
    assert "bytes/token" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Bad input: one clear message, nothing left behind


def test_unreachable_hub_says_so_and_suggests_local_files(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    args = PrepArgs(dataset="no-such-user/no-such-dataset", name=None, tokenizer_path="byte",
                    out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                    progress=False)
    with pytest.raises(DataError, match=r"cannot reach dataset.*Hugging Face hub.*--data_files"):
        prepare(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing_field", "empty", "all_val", "no_file", "bad_type",
                                  "threshold_below_shard", "null_text", "bad_json",
                                  "bad_json_arrow"])
def test_bad_input_gives_one_clear_error_and_leaves_nothing(tmp_path, texts, case):
    out = tmp_path / "out"
    good = write_jsonl(tmp_path / "good.jsonl", texts[:5])
    kw, files, match = {}, [good], None
    if case == "missing_field":
        files = [write_jsonl(tmp_path / "body.jsonl", texts[:5], field="body")]
        match = r"no field 'text' \(fields: \['body', 'id'\]\).*--text_field"
    elif case == "empty":
        (tmp_path / "empty.jsonl").write_text("")
        files, match = [tmp_path / "empty.jsonl"], "empty: no documents"
    elif case == "all_val":
        kw, match = {"val_tokens": 10**6}, "all held out as validation.*lower --val_tokens"
    elif case == "no_file":
        files, match = [tmp_path / "nothing*.jsonl"], "matches no file"
    elif case == "bad_type":
        (tmp_path / "a.docx").write_text("x")
        files, match = [tmp_path / "a.docx"], "unsupported file type"
    elif case == "threshold_below_shard":
        kw, match = {"tokens_threshold": 5_000}, "below one shard.*--shard_size"
    elif case == "null_text":
        (tmp_path / "n.jsonl").write_text('{"text": "a"}\n{"text": null}\n')
        files, match = [tmp_path / "n.jsonl"], "document 1 has NoneType"
    elif case.startswith("bad_json"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(good.read_text() * 50 + '{"text": "unterminated\n')
        files, match = [bad], r"bad.jsonl.*(JSON|json)"
        if case == "bad_json_arrow":
            kw = {"streaming": False, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(DataError, match=match):
        run(out, files, **kw)
    assert not out.exists()


def test_data_files_flags_add_up_and_name_the_output_dir():
    """`--data_files` takes comma lists and repeats; with no --out_dir the output is named after
    the first local file, or else after the hub dataset (its last path part)."""
    two = data_prep.parse_args(["--data_files", "a.jsonl,b.jsonl", "--data_files=c.jsonl"])
    assert two.data_files == ("a.jsonl", "b.jsonl", "c.jsonl")
    local = data_prep.parse_args(["--data_files", "../corpora/kjv.jsonl.gz"])
    assert local.resolved_out_dir() == Path("data/kjv")
    hub = data_prep.parse_args(["--dataset", "roneneldan/TinyStories"])
    assert hub.resolved_out_dir() == Path("data/TinyStories")
    assert data_prep.parse_args(["--out_dir", "x/y"]).resolved_out_dir() == Path("x/y")
