"""`python -m minigpt_jax.evaluate`: training's val_loss again, plus perplexity and bits/byte."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import read_jsonl_texts, read_metrics, tiny_config, write_random_shards

from minigpt_jax import evaluate, train
from minigpt_jax.shards import token_dtype, write_shard
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


def test_count_bytes_skips_end_of_text_and_keeps_multibyte_characters():
    tok = ByteTokenizer()
    text = "naïve café"
    ids = np.array([list(text.encode()) + [tok.eot_id]])
    assert evaluate.count_bytes([ids[:, :5], ids[:, 5:]], tok) == len(text.encode())


@pytest.mark.parametrize("spec", ["byte", "gpt2"])
def test_count_bytes_is_the_utf8_length_of_real_text(spec, shared_data, monkeypatch):
    """Documents joined by end-of-text and cut into batches anywhere (even inside a character
    GPT-2 splits over several tokens) count exactly their UTF-8 bytes."""
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
    assert evaluate.count_bytes(batches, tok) == sum(len(t.encode("utf-8")) for t in texts)


def test_count_bytes_counts_only_weighted_targets():
    """With loss masks the loss covers only some targets: bits per byte divides by their bytes."""
    tok = ByteTokenizer()
    ids = np.asarray([tok.encode("prompt:answer")])
    weights = np.zeros_like(ids)
    weights[:, 7:] = 1
    assert evaluate.count_bytes([ids], tok, [weights]) == len("answer")


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
