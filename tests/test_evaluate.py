"""`python -m minigpt_jax.evaluate`: training's val_loss again, plus perplexity and bits/byte."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from conftest import (
    assert_one_line_error,
    read_jsonl_texts,
    read_metrics,
    tiny_config,
    write_random_shards,
)

from minigpt_jax import evaluate, train
from minigpt_jax.shards import open_shard, token_dtype, write_shard
from minigpt_jax.tokenizer import ByteTokenizer, load_tokenizer

# Val text of the trained run: "abc" + end-of-text, repeated. Any stretch of targets whose length is
# a multiple of 4 holds exactly 3 bytes per 4 tokens.
VAL_PERIOD = [ord("a"), ord("b"), ord("c"), ByteTokenizer().eot_id]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = write_random_shards(root / "data")
    val = np.tile(np.array(VAL_PERIOD, dtype=token_dtype(257)), 1250)
    write_shard(data / "val_000000.bin", val)
    c = tiny_config(
        data, root / "run", tokenizer="byte", total_steps=4, warmup_steps=1, log_every=1,
        eval_every=2, eval_tokens=1024, checkpoint_every=2, lr=6e-4,
    )
    train.train_and_evaluate(c)
    logged = read_metrics(root / "run")
    return root / "run", {r["step"]: r["val_loss"] for r in logged if "val_loss" in r}


def test_reproduces_the_logged_val_loss(trained_run, capsys):
    run_dir, val_losses = trained_run
    for step in (2, 4):
        result = evaluate.main(["--run_dir", str(run_dir), "--step", str(step)])
        assert result["loss"] == pytest.approx(val_losses[step], rel=1e-6)
        assert result["perplexity"] == pytest.approx(math.exp(val_losses[step]))
        written = json.loads((run_dir / f"eval_step{step}.json").read_text())
        assert written == result
    out = capsys.readouterr().out
    assert f"step 4  loss {val_losses[4]:.4f}" in out
    best = evaluate.evaluate_checkpoint(run_dir, "best")
    assert best["step"] == min(val_losses, key=val_losses.get)


def test_bits_per_byte_counts_the_evaluated_text(trained_run):
    run_dir, _ = trained_run
    result = evaluate.evaluate_checkpoint(run_dir, eval_tokens=512)
    assert result["tokens"] == 512  # the override: 4 sequences of 32 tokens x 4 batches
    # Every 32-target window of "abc<eot>abc<eot>..." holds 8 end-of-text ids and 24 bytes.
    assert result["bytes"] == 384
    # nats per token -> bits per token (/ ln 2) -> bits per byte (x 4 tokens / 3 bytes).
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2) * 4 / 3)


def test_evaluated_bytes_skips_end_of_text_and_keeps_multibyte_characters():
    tok = ByteTokenizer()
    text = "naïve café"
    ids = np.array([list(text.encode()) + [tok.eot_id]])
    assert evaluate.evaluated_bytes([ids[:, :5], ids[:, 5:]], tok) == text.encode()


@pytest.mark.parametrize("spec", ["byte", "gpt2"])
def test_evaluated_bytes_are_the_utf8_of_real_text(spec, shared_data, monkeypatch):
    """Documents joined by end-of-text and cut into batches anywhere (even inside a character
    GPT-2 splits over several tokens) give back exactly their UTF-8 bytes."""
    monkeypatch.setenv("MINIGPT_GPT2_TIKTOKEN", str(shared_data / "gpt2.tiktoken"))
    tok = load_tokenizer(spec)
    texts = read_jsonl_texts(shared_data / "classics" / "web.jsonl", limit=3)
    texts = [t[:2000] for t in texts] + ["naïve café — 🦜 “quoted”"]
    ids = []
    for t in texts:
        ids += tok.encode(t) + [tok.eot_id]
    ids = np.array(ids)
    cut = len(ids) - 9  # between the first two of the parrot emoji's 3 GPT-2 tokens
    batches = [ids[:cut], ids[cut:]]
    assert evaluate.evaluated_bytes(batches, tok) == b"".join(t.encode() for t in texts)


def test_evaluated_bytes_are_only_the_weighted_targets():
    """With loss masks the loss covers only some targets: bits per byte divides by their bytes."""
    tok = ByteTokenizer()
    ids = np.asarray([tok.encode("prompt:answer")])
    weights = np.zeros_like(ids)
    weights[:, 7:] = 1
    assert evaluate.evaluated_bytes([ids], tok, [weights]) == b"answer"


def test_missing_run_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--run_dir", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no checkpoints here" in err and "Traceback" not in err


def test_run_tokenizer_is_found_in_the_data_dir_or_named(tmp_path):
    from minigpt_jax.errors import TokenizerError
    from minigpt_jax.tokenizer import load_run_tokenizer

    byte = ByteTokenizer().identity
    assert load_run_tokenizer({**byte, "spec": "byte"}).eot_id == 256
    with pytest.raises(TokenizerError, match="tokenizer file 'tok.json' not found"):
        load_run_tokenizer({**byte, "spec": "tok.json"}, tmp_path)
    with pytest.raises(TokenizerError, match="recorded no tokenizer"):
        load_run_tokenizer(None)
    with pytest.raises(TokenizerError, match="differs from the run's"):
        load_run_tokenizer({**byte, "spec": "byte", "sha256": "0" * 64})


# ---------------------------------------------------------------- baselines and the word rate


def test_compressors_charge_little_for_text_the_training_text_already_holds(shared_data):
    """A paragraph the context already holds costs gzip and xz a small fraction of what it costs
    them alone; an unrelated context of the same size does not help."""
    book = "\n".join(read_jsonl_texts(shared_data / "classics" / "austen.jsonl", limit=60))
    book = book.encode()[:100_000]
    paragraph = book[-6_000:]
    alone = evaluate.compressor_bits_per_byte(b"", paragraph)
    seen = evaluate.compressor_bits_per_byte(book, paragraph)
    unrelated = evaluate.compressor_bits_per_byte(
        np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes(), paragraph
    )
    for name in ("gzip", "xz"):
        assert 2.0 < alone[name] < 5.0  # English prose: 2.5-4 bits/byte for both
        assert seen[name] < 0.1 * alone[name]
        assert unrelated[name] > 0.8 * alone[name]
    with pytest.raises(ValueError, match="no text"):
        evaluate.compressor_bits_per_byte(book, b"")


def test_train_text_is_the_last_bytes_of_the_train_shards_without_end_of_text(tmp_path):
    tok = ByteTokenizer()
    write_shard(tmp_path / "train_000000.bin", np.array([*b"hello", tok.eot_id], np.uint16))
    write_shard(tmp_path / "train_000001.bin", np.array([*b" world"], np.uint16))
    assert evaluate.train_text(tmp_path, tok) == (b"hello world", 12)
    assert evaluate.train_text(tmp_path, tok, cap=8) == (b"lo world", 12)


def test_real_word_rate_counts_the_generated_complete_words():
    vocabulary = evaluate.words("The quick fox jumps over the lazy dog, naïve café. x I")
    assert vocabulary == {"The", "quick", "fox", "jumps", "over", "the", "lazy", "dog", "naïve",
                          "café"}
    sample = "The quick brwn fox, a naïve dgo jumps ov"
    # "ov" runs to the end (maybe cut by the length limit): not counted; nor is the one-letter "a".
    assert evaluate.real_word_rate(sample, vocabulary) == (5, 7)
    # Only words that end after the prompt ("The quick") count.
    assert evaluate.real_word_rate(sample, vocabulary, start=len("The quick")) == (3, 5)
    assert evaluate.real_word_rate("12 + 3 = 15\n", vocabulary) == (0, 0)


def test_baselines_score_the_same_bytes_and_print_after_the_model(trained_run, capsys):
    run_dir, _ = trained_run
    result = evaluate.main(["--run_dir", str(run_dir), "--step", "4", "--baselines"])
    b = result["baselines"]
    # The val text is "abc" + end-of-text repeated: both compressors take it for almost nothing.
    assert b["gzip"] < 0.5 and b["xz"] < 0.5 < result["bits_per_byte"]
    train = open_shard(run_dir.parent / "data" / "train_000000.bin")
    assert b["train_tokens"] == train.size
    assert b["train_bytes"] == int((train != ByteTokenizer().eot_id).sum())
    assert json.loads((run_dir / "eval_step4.json").read_text()) == result
    out = capsys.readouterr().out
    assert out.index("bits/byte") < out.index("gzip -9") < out.index("wrote")
    assert f"xz -9 {b['xz']:.3f}" in out and "the whole train split" in out


def test_baselines_flag_errors_are_one_line(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    no_train = tmp_path / "val_only"
    no_train.mkdir()
    shutil.copy(run_dir.parent / "data" / "val_000000.bin", no_train)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--run_dir", str(run_dir), "--data_dir", str(no_train), "--baselines"])
    assert e.value.code == 2
    assert_one_line_error(capsys.readouterr().err, str(no_train), "train_*.bin")
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--run_dir", str(run_dir), "--task", "hellaswag", "--baselines"])
    assert e.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--baselines", "hellaswag")
