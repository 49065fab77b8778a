"""Digit positions (Abacus): indices on hand-written text, the tokenizer's digit ids, the model
option in training (random offset) and in KV-cached decoding (cache == recompute)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax.digit_positions import digit_indices, digit_token_ids
from minigpt_jax.generate import sample
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.tokenizer import ByteTokenizer

BYTE_DIGITS = digit_token_ids(ByteTokenizer())


def indices(text: str, offset: int | None = None) -> list[int]:
    tokens = jnp.asarray([list(text.encode())], jnp.int32)
    offset_B = None if offset is None else jnp.asarray([offset], jnp.int32)
    return digit_indices(tokens, BYTE_DIGITS, offset_B=offset_B)[0][0].tolist()


def test_byte_and_bpe_digit_ids(gpt2_tiktoken_path):
    from minigpt_jax.bpe import Tokenizer

    assert BYTE_DIGITS == tuple(range(48, 58))
    gpt2 = Tokenizer.load(gpt2_tiktoken_path)
    ids = digit_token_ids(gpt2)
    assert [gpt2.decode([i]) for i in ids] == list("0123456789")
    assert gpt2.encode("7") == [ids[7]] and len(gpt2.encode("12")) == 1  # "12" is one token
    assert gpt2.encode("12")[0] not in ids


@pytest.mark.parametrize(
    "text, want",
    [
        # a number at the start, in the middle and at the end of a line
        ("347+85\n", [1, 2, 3, 0, 1, 2, 0]),
        ("a=12;b", [0, 0, 1, 2, 0, 0]),
        ("x 9\n1234", [0, 0, 1, 0, 1, 2, 3, 4]),
        # adjacent numbers: any non-digit ends a run, a newline too
        ("12 34\n5", [1, 2, 0, 1, 2, 0, 1]),
        ("1+2+0=03", [1, 0, 1, 0, 1, 0, 1, 2]),
        # non-digits only, and several non-digits between numbers
        ("abc", [0, 0, 0]),
        ("7r--08", [1, 0, 0, 0, 1, 2]),
    ],
)
def test_indices_on_hand_written_lines(text, want):
    assert indices(text) == want


def test_random_offset_shifts_digits_only():
    assert indices("12 34\n5", offset=5) == [6, 7, 0, 6, 7, 0, 6]
    assert indices("ab", offset=3) == [0, 0]
    # the run length a decode carries is the unshifted one
    tokens = jnp.asarray([list(b"x12"), list(b"123")], jnp.int32)
    _, run = digit_indices(tokens, BYTE_DIGITS, offset_B=jnp.asarray([4, 9]))
    assert run.tolist() == [2, 3]


def test_indices_token_by_token_equal_the_whole_sequence():
    text = b"98+7\n0-12345\n6A:003"
    tokens = jnp.asarray([list(text)], jnp.int32)
    whole, _ = digit_indices(tokens, BYTE_DIGITS)
    run, pieces = jnp.zeros((1,), jnp.int32), []
    singles = [text[i : i + 1] for i in range(11, len(text))]
    for chunk in (text[:3], text[3:4], text[4:11], *singles):
        idx, run = digit_indices(jnp.asarray([list(chunk)], jnp.int32), BYTE_DIGITS, run)
        pieces += idx[0].tolist()
    assert pieces == whole[0].tolist()
    assert whole[0].tolist()[5:12] == [1, 0, 1, 2, 3, 4, 5]


# A tiny model without absolute positions: digit positions are its only sense of place. Half of
# all ids count as digits so that random weights generate long runs across decode steps.
CFG = GPTConfig.preset(
    "tiny",
    vocab_size=257,
    block_size=32,
    pos_emb="none",
    digit_pos_max=24,
    digit_pos_offset_max=8,
    digit_ids=tuple(range(1, 257, 2)),
)


@pytest.fixture(scope="module")
def params():
    raw = jax.jit(GPT(CFG).init)(jax.random.key(2), jnp.zeros((1, 8), jnp.int32))["params"]
    return jax.tree.map(lambda x: x * 6.0, raw)


def test_config_validates_digit_fields():
    with pytest.raises(ValueError, match="digit_ids"):
        GPTConfig.preset("tiny", digit_pos_max=8)
    with pytest.raises(ValueError, match="offset_max"):
        GPTConfig.preset("tiny", digit_pos_max=8, digit_pos_offset_max=8, digit_ids=(48,))
    assert GPTConfig.preset("tiny", digit_pos_max=8, digit_ids=[48, 49]).digit_ids == (48, 49)


def test_digit_positions_change_the_output_and_training_draws_offsets(params):
    model = GPT(CFG)
    digits = jnp.asarray([[5, 7, 9, 2, 3, 11]], jnp.int32)  # odd ids are digits: runs 3 and 2
    plain = model.apply({"params": params}, digits)
    zeroed = {**params, "wde": {"embedding": jnp.zeros_like(params["wde"]["embedding"])}}
    assert not np.allclose(plain, model.apply({"params": zeroed}, digits))

    def train_logits(tokens, key):
        return model.apply({"params": params}, tokens, deterministic=False, rngs={"digits": key})

    keys = [jax.random.key(k) for k in range(4)]
    outs = [train_logits(digits, k) for k in keys]
    assert any(not np.allclose(outs[0], o) for o in outs[1:])  # offsets differ between draws
    no_digits = jnp.asarray([[2, 4, 6, 8]], jnp.int32)
    base = model.apply({"params": params}, no_digits)
    for k in keys:  # the offset touches digits only
        np.testing.assert_allclose(train_logits(no_digits, k), base, rtol=1e-5, atol=1e-5)


@jax.jit
def _full_forward(params, tokens_1T):
    return GPT(CFG).apply({"params": params}, tokens_1T)


def greedy_recomputed(params, prompt, max_new_tokens):
    seq = list(prompt)
    for _ in range(max_new_tokens):
        buffer = np.zeros((1, CFG.block_size), np.int32)
        buffer[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(_full_forward(params, jnp.asarray(buffer))[0, len(seq) - 1])))
    return seq[len(prompt) :]


def test_cached_greedy_equals_recompute_with_digit_positions(params):
    # Prompts of different lengths (left padding) ending inside a digit run.
    prompts = [[2, 5, 7, 9], [4, 3, 6, 8, 1, 1, 13, 15, 17, 19, 21]]
    got = sample(CFG, params, prompts, 10, temperature=0)
    want = [greedy_recomputed(params, p, 10) for p in prompts]
    assert got == want
    assert any(sum(t % 2 for t in row) >= 3 for row in want)  # digits were generated
