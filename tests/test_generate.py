"""KV-cached sampling: same tokens as recomputing everything, sampling sets, padding, the CLI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax import generate
from minigpt_jax.checkpoint import RunCheckpoints
from minigpt_jax.generate import filter_logits, sample, sample_growing
from minigpt_jax.model import GPT, GPTConfig

CFG = GPTConfig.preset("tiny", vocab_size=257, block_size=32)


@pytest.fixture(scope="module")
def params():
    """A random model with sharpened weights, so greedy decoding does not just repeat one token."""
    raw = jax.jit(GPT(CFG).init)(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.tree.map(lambda x: x * 6.0, raw)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n).tolist() for n in lengths]


@jax.jit
def _full_forward(params, tokens_1T):
    return GPT(CFG).apply({"params": params}, tokens_1T)


def greedy_recomputed(params, prompt, max_new_tokens):
    """The reference: a full forward pass over the whole sequence for every new token.

    The sequence sits right-padded in a block_size buffer (one compile); attention is causal, so
    the logits at the last real position do not see the padding.
    """
    seq = list(prompt)
    for _ in range(max_new_tokens):
        buffer = np.zeros((1, CFG.block_size), np.int32)
        buffer[0, : len(seq)] = seq
        logits = _full_forward(params, jnp.asarray(buffer))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_cached_greedy_equals_full_recompute(params):
    # Every test here uses 2 prompts of 9-16 tokens and 8 new tokens: one compiled loop per mode.
    for prompts in (prompts_of([3, 13]), prompts_of([16, 10], seed=1)):
        got = sample(CFG, params, prompts, 8, temperature=0)
        want = [greedy_recomputed(params, p, 8) for p in prompts]
        assert got == want
        assert any(len(set(row)) > 2 for row in want)  # the check is not vacuous


def test_new_prompt_lengths_and_settings_reuse_the_compiled_loop(params):
    sample(CFG, params, prompts_of([5, 9]), 8, temperature=0)
    compiled = generate._decode._cache_size()
    sample(CFG, params, prompts_of([16, 2], seed=1), 8, temperature=0)  # same power-of-two buckets
    sample(CFG, params, prompts_of([11, 3], seed=2), 8, temperature=0)
    assert generate._decode._cache_size() == compiled

    sample(CFG, params, prompts_of([5, 9]), 8, temperature=0.7, top_k=5, seed=3)
    compiled = generate._decode._cache_size()
    sample(CFG, params, prompts_of([12, 2]), 8, temperature=1.3, top_k=9, seed=4)  # traced
    assert generate._decode._cache_size() == compiled


def test_top_k_and_top_p_never_sample_outside_their_sets():
    logits = jax.random.normal(jax.random.key(0), (3, 50)) * 2.0
    keys = jax.random.split(jax.random.key(1), 4000)
    draw = jax.jit(jax.vmap(lambda k, lg: jax.random.categorical(k, lg), in_axes=(0, None)))

    filtered = filter_logits(logits, 1.0, top_k=5)
    drawn = np.asarray(draw(keys, filtered))  # (4000, 3)
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    for row in range(3):
        assert set(drawn[:, row]) <= set(top5[row])
        assert len(set(drawn[:, row])) == 5  # and every member of the set does occur

    filtered = filter_logits(logits, 1.0, top_p=0.6)
    drawn = np.asarray(draw(keys, filtered))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    for row in range(3):
        order = np.argsort(-probs[row])
        mass_before = np.cumsum(probs[row][order]) - probs[row][order]
        nucleus = set(order[mass_before < 0.6])
        assert set(drawn[:, row]) <= nucleus
        assert probs[row][list(nucleus)].sum() >= 0.6


def test_degenerate_sampling_settings_are_greedy(params):
    prompts = prompts_of([4, 9])
    greedy = sample(CFG, params, prompts, 8, temperature=0)
    assert sample(CFG, params, prompts, 8, temperature=1.0, top_k=1, seed=5) == greedy
    assert sample(CFG, params, prompts, 8, temperature=1.0, top_p=1e-6, seed=6) == greedy
    a = sample(CFG, params, prompts, 8, temperature=1.0, seed=1)
    assert a == sample(CFG, params, prompts, 8, temperature=1.0, seed=1)
    assert a != sample(CFG, params, prompts, 8, temperature=1.0, seed=2)


def test_stops_at_end_of_text_and_crops_long_prompts(params):
    prompts = prompts_of([12, 9])
    greedy = sample(CFG, params, prompts, 8, temperature=0)
    eot = greedy[0][4]
    cut = sample(CFG, params, prompts, 8, temperature=0, eot_id=eot)
    assert cut == [row[: row.index(eot)] if eot in row else row for row in greedy]
    assert len(cut[0]) <= 4

    long = prompts_of([100, 40])  # block_size 32: keeps the last 32 - 8 + 1 = 25 tokens
    cropped = sample(CFG, params, long, 8, temperature=0)
    assert cropped == sample(CFG, params, [p[-25:] for p in long], 8, temperature=0)
    assert cropped[0] == greedy_recomputed(params, long[0][-25:], 8)
    with pytest.raises(ValueError, match="at least one token"):
        sample(CFG, params, [[]], 4)
    with pytest.raises(ValueError, match="max_new_tokens=33"):
        sample(CFG, params, [[1]], 33)


def test_growing_room_gives_the_one_pass_tokens(params):
    """Each stage prefills what the last one decoded, so greedy rows that cross stage boundaries
    (rooms 2, 4, 8) are the one pass's tokens, end-of-text cuts included; with room for
    everything at once it is the one pass, sampled draws too."""
    prompts = prompts_of([12, 9, 3])
    greedy = sample(CFG, params, prompts, 8, temperature=0)
    assert sample_growing(CFG, params, prompts, 8, first_tokens=2, eot_id=None,
                          temperature=0) == greedy
    eot = greedy[0][5]  # row 0 ends in the third stage; rows without it run to the limit
    cut = sample(CFG, params, prompts, 8, temperature=0, eot_id=eot)
    assert sample_growing(CFG, params, prompts, 8, first_tokens=2, eot_id=eot,
                          temperature=0) == cut
    assert len(cut[0]) < 8 and any(len(row) == 8 for row in cut)

    drawn = sample(CFG, params, prompts, 8, temperature=1.0, seed=3)
    assert sample_growing(CFG, params, prompts, 8, first_tokens=8, eot_id=None,
                          temperature=1.0, seed=3) == drawn
    grown = sample_growing(CFG, params, prompts, 8, first_tokens=2, eot_id=None,
                           temperature=1.0, seed=3)
    assert [row[:2] for row in grown] == [row[:2] for row in drawn]  # the first stage's draws
    assert grown != drawn  # later stages draw with their own seeds

    long = prompts_of([100, 40])  # cropped to the last 25 tokens, as one pass crops them
    assert sample_growing(CFG, params, long, 8, first_tokens=3, eot_id=None,
                          temperature=0) == sample(CFG, params, long, 8, temperature=0)
    assert sample_growing(CFG, params, prompts, 8, first_tokens=0, eot_id=None,
                          temperature=1.0, seed=3) == drawn  # 0: one pass
    with pytest.raises(ValueError, match="first_tokens=-1"):
        sample_growing(CFG, params, prompts, 8, first_tokens=-1, eot_id=None)


def test_cli_decodes_with_the_runs_tokenizer(params, tmp_path, capsys):
    run = tmp_path / "run"
    ckpts = RunCheckpoints(run)
    config = {"model": {"preset": "tiny", "vocab_size": 257, "block_size": 32}, "data_dir": "x",
              "compute_dtype": "float32"}
    tokenizer = {"spec": "byte", "name": "byte", "vocab_size": 257, "eot_id": 256}
    state = {"params": params, "opt_state": (), "step": jnp.int32(5)}
    ckpts.save(5, state, None, config, tokenizer)
    ckpts.close()
    texts = generate.main([
        "--run_dir", str(run), "--prompt", "Hello, world!", "--max_new_tokens", "8",
        "--temperature", "0", "--num_samples", "2",
    ])
    ids = sample(CFG, params, [list(b"Hello, world!")] * 2, 8, temperature=0, eot_id=256)[0]
    assert texts == ["Hello, world!" + bytes(ids).decode("utf-8", errors="replace")] * 2
    assert "--- sample 1 (step 5)" in capsys.readouterr().out

    from minigpt_jax.sft_data import chat_prompt_tokens, format_chat
    from minigpt_jax.tokenizer import ByteTokenizer

    chat = generate.main([
        "--run_dir", str(run), "--prompt", "2+2?", "--max_new_tokens", "8", "--temperature", "0",
        "--chat",
    ])
    ids = sample(CFG, params, [chat_prompt_tokens(ByteTokenizer(), "2+2?")], 8, temperature=0,
                 eot_id=256)[0]
    assert chat == [format_chat("2+2?") + ByteTokenizer().decode(ids)]


def test_document_masked_model_samples_only_its_last_document(params):
    """Earlier documents in a prompt cannot reach a document-masked model, so they are dropped and
    the continuation is that of the last document alone, which greedy recompute confirms."""
    doc_cfg = CFG.__class__(**{**CFG.__dict__, "doc_sep_id": 256})
    sep = 256
    last = [sep, *prompts_of([9], seed=3)[0]]
    with_history = [*prompts_of([7], seed=4)[0], sep, 5, 6, *last]
    got = sample(doc_cfg, params, [with_history, last], 8, temperature=0, eot_id=sep)
    assert got[0] == got[1]
    assert got[1] == greedy_recomputed(params, last, 8)[: len(got[1])]
    # A prompt without its separator gets one: documents start with it in training.
    assert sample(doc_cfg, params, [last[1:]], 8, temperature=0, eot_id=sep) == [got[1]]
    with pytest.raises(ValueError, match="eot_id=256"):
        sample(doc_cfg, params, [last], 8, temperature=0)


def test_last_document_keeps_the_separator_and_fits():
    from minigpt_jax.generate import last_document

    assert last_document([1, 9, 2, 3, 9, 4, 5], 9, 8) == [9, 4, 5]
    assert last_document([4, 5], 9, 8) == [9, 4, 5]  # a missing separator is added
    assert last_document([9, 1, 2, 3, 4], 9, 3) == [9, 3, 4]  # cut from the left, separator kept
    assert last_document([9, 1, 2], 9, 1) == [9]


def test_word_rate_is_printed_before_the_sample_and_needs_the_train_split(
    params, tmp_path, capsys
):
    from conftest import assert_one_line_error

    from minigpt_jax.evaluate import real_word_rate, words
    from minigpt_jax.shards import write_shard

    data = tmp_path / "data"
    data.mkdir()
    train = "the with statement wraps a block; with open(path) as f: read the lines"
    write_shard(data / "train_000000.bin", np.array(list(train.encode()), np.uint16))
    run = tmp_path / "run"
    ckpts = RunCheckpoints(run)
    config = {"model": {"preset": "tiny", "vocab_size": 257, "block_size": 32},
              "data_dir": str(data), "compute_dtype": "float32"}
    tokenizer = {"spec": "byte", "name": "byte", "vocab_size": 257, "eot_id": 256}
    ckpts.save(5, {"params": params, "opt_state": (), "step": jnp.int32(5)}, None, config,
               tokenizer)
    ckpts.close()
    prompt = "The with statement"
    args = ["--run_dir", str(run), "--prompt", prompt, "--max_new_tokens", "24", "--word_rate"]
    texts = generate.main(args)
    out = capsys.readouterr().out
    found, total = real_word_rate(texts[0], words(train), len(prompt))
    rate = f"{found / total:.0%} ({found} of {total} words" if total else "no complete word"
    assert out.startswith("real words: ") and rate in out.splitlines()[0]
    assert out.endswith(texts[0] + "\n")  # the sample is the last thing shown

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        generate.main([*args, "--data_dir", str(empty)])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before sampling
    assert_one_line_error(captured.err, str(empty), "train_*.bin")
