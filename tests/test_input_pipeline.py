import re

import numpy as np
import pytest

from minigpt_jax import shards
from minigpt_jax.errors import DataError
from minigpt_jax.input_pipeline import WindowSource, eval_batches, train_dataset
from minigpt_jax.shards import HEADER_BYTES, find_shards, open_shard, token_dtype, write_shard


def test_llmc_header_layout(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(10, dtype=np.uint16))
    header = np.fromfile(path, dtype=np.int32, count=3)
    assert header.tolist() == [20240520, 1, 10]  # llm.c's GPT-2 shard header
    assert path.stat().st_size == HEADER_BYTES + 10 * 2
    np.testing.assert_array_equal(open_shard(path), np.arange(10))
    assert not list(tmp_path.glob("*.tmp"))


def test_uint32_shards_for_big_vocabularies(tmp_path):
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(100_277) == np.uint32
    path = tmp_path / "val_000000.bin"
    tokens = np.array([0, 70_000, 100_276], dtype=np.uint32)
    write_shard(path, tokens)
    assert np.fromfile(path, dtype=np.int32, count=2).tolist() == [20240801, 7]
    np.testing.assert_array_equal(open_shard(path), tokens)


def test_reads_build_nanogpt_npy_shards(tmp_path):
    path = tmp_path / "edufineweb_train_000001.npy"
    np.save(path, np.arange(100, dtype=np.uint16))
    assert open_shard(path)[99] == 99
    bad = tmp_path / "edufineweb_train_000002.npy"
    np.save(bad, np.arange(100, dtype=np.int64))
    with pytest.raises(DataError, match=r"edufineweb_train_000002\.npy.*uint16"):
        open_shard(bad)


def test_rejects_wrong_dtype_on_write(tmp_path):
    with pytest.raises(DataError, match="uint16 or uint32"):
        write_shard(tmp_path / "x.bin", np.arange(5, dtype=np.int64))


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / "train_000003.bin"
    write_shard(path, np.arange(1000, dtype=np.uint16))
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 500)
    with pytest.raises(DataError, match=r"train_000003\.bin: truncated") as e:
        open_shard(path)
    assert "(ours: scripts/download_data.py)" in str(e.value)  # no record of what made it


@pytest.mark.parametrize("writer", sorted(shards.WRITER_COMMANDS))
def test_a_damaged_shards_hint_names_the_command_that_wrote_its_directory(tmp_path, writer):
    """A damaged arithmetic shard is not re-made by the web-text downloader."""
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(1000, dtype=np.uint16))
    listed = [{"file": path.name, "split": "train", "tokens": 1000}]
    shards.write_manifest(tmp_path, {"name": "byte"}, "uint16", listed, writer=writer)
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 500)
    command = re.escape(shards.WRITER_COMMANDS[writer])
    with pytest.raises(DataError, match=f"truncated or corrupt: .*rerun {command} with its arg"):
        open_shard(path)
    with pytest.raises(DataError, match=f"of another size; .*rerun {command} with its arg"):
        shards.check_manifest(tmp_path, None)
    # An unreadable record leaves the generic hint, never a second error.
    (tmp_path / shards.MANIFEST).write_text("[1, 2]")
    with pytest.raises(DataError, match=r"truncated or .*\(ours: scripts/download_data\.py\)"):
        open_shard(path)


def test_manifests_before_the_writer_field_name_their_writer():
    assert shards.manifest_writer({"version": 1, "arithmetic": {"preset": "long"}}) == "arithmetic"
    assert shards.manifest_writer({"task": {"name": "arithmetic"}}) == "arithmetic"
    assert shards.manifest_writer({"format": "sft"}) == "sft"
    assert shards.manifest_writer({"version": 1}) == "data_prep"


def test_wrong_magic_is_named(tmp_path):
    path = tmp_path / "train_000004.bin"
    path.write_bytes(b"\x01" * 4096)
    with pytest.raises(DataError, match=r"train_000004\.bin: not a token shard"):
        open_shard(path)
    short = tmp_path / "train_000005.bin"
    short.write_bytes(b"abc")
    with pytest.raises(DataError, match="shorter than"):
        open_shard(short)


def test_finds_our_llmc_and_build_nanogpt_names(tmp_path):
    names = [
        "train_000001.bin",
        "train_000000.bin",
        "fineweb_train_000002.bin",
        "edufineweb_train_000003.npy",
        "val_000000.bin",
        "fineweb_val_000000.bin",
        "train_000000.bin.tmp",
        "notes.txt",
    ]
    for name in names:
        (tmp_path / name).touch()
    train = [p.name for p in find_shards(tmp_path, "train")]
    assert train == [
        "edufineweb_train_000003.npy",
        "fineweb_train_000002.bin",
        "train_000000.bin",
        "train_000001.bin",
    ]
    assert [p.name for p in find_shards(tmp_path, "val")] == [
        "fineweb_val_000000.bin",
        "val_000000.bin",
    ]


def two_shards(tmp_path):
    a, b = tmp_path / "train_000000.bin", tmp_path / "train_000001.bin"
    write_shard(a, np.arange(0, 41, dtype=np.uint16))  # 4 windows of 10 (+1)
    write_shard(b, np.arange(100, 125, dtype=np.uint16))  # 2 windows
    return [a, b]


def test_windows_overlap_by_one_token_and_never_straddle_shards(tmp_path):
    source = WindowSource(two_shards(tmp_path), seq_len=10)
    assert len(source) == 6
    np.testing.assert_array_equal(source[0], np.arange(0, 11))
    np.testing.assert_array_equal(source[3], np.arange(30, 41))
    np.testing.assert_array_equal(source[4], np.arange(100, 111))
    np.testing.assert_array_equal(source[5], np.arange(110, 121))
    assert source[0].dtype == np.int32


def test_ids_past_the_vocabulary_name_the_shard(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.array([1, 2, 3, 999, 4] * 10, dtype=np.uint16))
    source = WindowSource([path], seq_len=8, vocab_size=257)
    with pytest.raises(DataError, match=r"train_000000\.bin: token id 999.*vocabulary of 257"):
        source[0]


def test_too_little_data_for_one_window(tmp_path):
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(5, dtype=np.uint16))
    with pytest.raises(DataError, match="fewer than one window"):
        WindowSource([path], seq_len=8)


def test_each_epoch_is_a_permutation_and_the_state_resumes_exactly(tmp_path):
    paths = two_shards(tmp_path)
    batches = train_dataset(paths, seq_len=10, batch_size=2, seed=3)
    it = iter(batches)
    epoch = [next(it) for _ in range(3)]
    firsts = sorted(int(b["inputs"][i, 0]) for b in epoch for i in range(2))
    assert firsts == [0, 10, 20, 30, 100, 110]  # every window once, no replacement
    for b in epoch:
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    state = it.get_state()
    ahead = [next(it)["inputs"] for _ in range(4)]
    it2 = iter(train_dataset(paths, seq_len=10, batch_size=2, seed=3))
    it2.set_state(state)
    for expected in ahead:
        np.testing.assert_array_equal(next(it2)["inputs"], expected)


def test_same_seed_same_order_other_seed_other_order(tmp_path):
    paths = two_shards(tmp_path)

    def first_six(seed):
        it = iter(train_dataset(paths, seq_len=10, batch_size=1, seed=seed))
        return [int(next(it)["inputs"][0, 0]) for _ in range(6)]

    assert first_six(1) == first_six(1)
    assert first_six(1) != first_six(2)


def test_processes_read_disjoint_slices(tmp_path):
    paths = two_shards(tmp_path)
    seen = []
    for index in range(2):
        it = iter(train_dataset(paths, 10, 1, seed=0, shard_index=index, shard_count=2))
        seen.append({int(next(it)["inputs"][0, 0]) for _ in range(3)})
    assert seen[0].isdisjoint(seen[1]) and len(seen[0] | seen[1]) == 6


def test_eval_batches_are_fixed_and_bounded(tmp_path):
    paths = two_shards(tmp_path)
    a = [b["inputs"] for b in eval_batches(paths, 10, 2, max_tokens=40)]
    b = [b["inputs"] for b in eval_batches(paths, 10, 2, max_tokens=40)]
    assert len(a) == 2
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(a[0][0, 0]) == 0  # file order, not shuffled
