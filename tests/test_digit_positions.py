"""Digit positions (Abacus and coupled): indices on hand-written text, the tokenizer's digit and
newline ids, the model option in training (random offset) and in KV-cached decoding (cache ==
recompute)."""

from __future__ import annotations

import dataclasses
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minigpt_jax.digit_positions import (
    answer_mark_token_ids,
    coupled_indices,
    digit_indices,
    digit_token_ids,
    division_token_ids,
    document_block_offsets,
    newline_token_ids,
    run_marks,
    segment_indices,
)
from minigpt_jax.generate import sample
from minigpt_jax.model import GPT, GPTConfig, KVCache, count_params
from minigpt_jax.tokenizer import ByteTokenizer

BYTE_DIGITS = digit_token_ids(ByteTokenizer())
BYTE_NEWLINES = newline_token_ids(ByteTokenizer())
EOT = ByteTokenizer().eot_id


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
    assert BYTE_NEWLINES == (10,)
    assert newline_token_ids(gpt2) == tuple(gpt2.encode("\n"))  # "\n\n" is another token


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


def test_run_marks_tell_a_runs_first_digit_from_the_rest_at_every_length():
    def marks(text, run=0):
        tokens = jnp.asarray([list(text.encode())], jnp.int32)
        return run_marks(tokens, BYTE_DIGITS, jnp.asarray([run], jnp.int32))[0].tolist()

    assert marks("7+5+0=12") == [1, 0, 1, 0, 1, 0, 1, 2]  # the carry 1, the units 2
    assert marks("A:0632") == [0, 0, 1, 2, 2, 2]
    assert marks("98765432109876543210+1") == [1] + [2] * 19 + [0, 1]  # not the length
    assert marks("45\n", run=3) == [2, 2, 0]  # a decode continues the run it is in
    assert marks("45", run=0) == [1, 2]


def coupled(text: str, offset: int | None = None) -> list[int]:
    """Coupled ids of `text`, where "@" stands for the <eot> that starts a document."""
    tokens = [EOT if c == "@" else ord(c) for c in text]
    offset_B = None if offset is None else jnp.asarray([offset], jnp.int32)
    index, *_ = coupled_indices(
        jnp.asarray([tokens], jnp.int32), BYTE_DIGITS, BYTE_NEWLINES, EOT, offset_B=offset_B
    )
    return index[0].tolist()


@pytest.mark.parametrize(
    "text, want",
    [
        # the prompt line: each number from its right end (units = 1); its newline opens line 1
        ("347+285\n", [3, 2, 1, 0, 3, 2, 1, 1]),
        # numbers of different lengths at the start, middle and end; non-digits between
        ("9-12 r 4567", [1, 0, 2, 1, 0, 0, 0, 4, 3, 2, 1]),
        # line L: non-digits L, each digit run counting down from L + 1
        ("1+2\n7+5+0=12\nA:0632\n",
         [1, 0, 1, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 2, 2, 3, 2, 1, 1, 3]),
        # adjacent numbers on one line; a run longer than its line number stops at 1
        ("5\n12 345\n", [1, 1, 2, 1, 1, 2, 1, 1, 2]),
        # a new document (<eot>) starts at line 0 again, prompt indices from the right
        ("@12\n34\n@567\n8", [0, 2, 1, 1, 2, 1, 2, 0, 3, 2, 1, 1, 2]),
        ("abc", [0, 0, 0]),
    ],
)
def test_coupled_ids_on_hand_written_lines(text, want):
    assert coupled(text) == want


def test_coupled_step_lines_share_ids_with_the_prompt_columns_they_read():
    """In a worked 3-digit sum, step line s has id s where the prompt's column-s digits do, and
    the answer digit of column m has id m + 1 where step line m's units digit has id m."""
    text = "@347+285\n7+5+0=12\n4+8+1=13\n3+2+1=06\nA:0632\n"
    ids = coupled(text)
    lines = text[1:].split("\n")
    at = 1  # after the <eot>
    line_ids = []
    for line in lines:
        line_ids.append(ids[at : at + len(line)])
        at += len(line) + 1
    assert line_ids[0] == [3, 2, 1, 0, 3, 2, 1]
    for s in (1, 2, 3):  # "x+y+c=..." of column s: the separators carry s, the operands s + 1
        assert line_ids[s][1] == line_ids[s][3] == s and line_ids[s][-1] == s
    assert line_ids[4] == [4, 4, 5, 4, 3, 2]  # A:0632, counting down to the columns
    assert coupled(text, offset=7) == [i + 7 if i else 0 for i in ids]


def test_coupled_ids_token_by_token_equal_the_whole_sequence():
    text = "@98+7\n8+7+0=15\n9+0+1=10\nA:105\n@12-3\n"
    tokens = [EOT if c == "@" else ord(c) for c in text]
    whole = coupled(text)
    prompt = 6  # <eot> and the whole prompt line, as a decode's prefill gets it
    line, run = None, None
    pieces = []
    for chunk in [tokens[:prompt], *([t] for t in tokens[prompt:])]:
        idx, line, run, _ = coupled_indices(
            jnp.asarray([chunk], jnp.int32), BYTE_DIGITS, BYTE_NEWLINES, EOT, line, run
        )
        pieces += idx[0].tolist()
    # the second document's prompt is decoded token by token: its numbers are indexed from the
    # right only when the prompt line is given whole (module docstring), so compare up to it
    assert pieces[: text.index("@12")] == whole[: text.index("@12")]


DIVISION = division_token_ids(ByteTokenizer())
ANSWER_MARK = answer_mark_token_ids(ByteTokenizer())


def left_read(text: str, prefill: int | None = None, shift: bool = False) -> list[int]:
    """Coupled ids with long division's documents read from the left ("@" is <eot>): the whole
    text at once, or its first `prefill` tokens and then one token at a time, as decoding does."""
    tokens = [EOT if c == "@" else ord(c) for c in text]
    chunks = [tokens] if prefill is None else [tokens[:prefill], *([t] for t in tokens[prefill:])]
    line = run = read = None
    ids = []
    for chunk in chunks:
        index, line, run, read = coupled_indices(
            jnp.asarray([chunk], jnp.int32), BYTE_DIGITS, BYTE_NEWLINES, EOT, line, run,
            left_op_ids=DIVISION, answer_ids=ANSWER_MARK, read_B=read, left_read_shift=shift,
        )
        ids += index[0].tolist()
    return ids


def test_division_and_answer_mark_ids():
    assert DIVISION == (ord("/"),) and ANSWER_MARK == (ord(":"),)


def test_left_read_division_lines_share_ids_with_the_digits_they_read():
    """Step line i brings down the dividend's digit i from the left with the same id at every
    length; the answer's quotient digit i is one id below step line i's quotient digit; other
    documents keep their ids."""
    text = "@047/6\n00/6=0r0\n04/6=0r4\n47/6=7r5\nA:007r5\n@12+34\n4+2+0=06\nA:46\n"
    ids = left_read(text)
    lines, at = [], 1
    for line in text[1:].split("\n")[:5]:
        lines.append(ids[at : at + len(line)])
        at += len(line) + 1
    assert lines[0] == [1, 2, 3, 0, 1]  # the dividend (and divisor) from the left
    for i in (1, 2, 3):  # "rd/6=qrR": the brought-down digit d has id i, the quotient q id i + 1
        assert lines[i][1] == lines[0][i - 1] == i and lines[i][5] == i + 1
    assert lines[4] == [4, 4, 1, 2, 3, 4, 5]  # A:007r5: the quotient from its left end
    addition = "@12+34\n4+2+0=06\nA:46\n"
    assert ids[-len(addition):] == coupled(addition)
    assert coupled(text)[:6] == [0, 3, 2, 1, 0, 1]  # without left_op_ids: from the right
    for n in (3, 12):  # the lookups do not depend on the dividend's length
        a = "7" * n
        lines = [f"{a}/7"] + ["07/7=1r0"] * n + ["A:" + "1" * n + "r0"]
        ids = left_read("@" + "\n".join(lines) + "\n")
        prompt, step = ids[1 : 1 + n], ids[2 + len(lines[0]) :]
        assert prompt == list(range(1, n + 1))
        assert [step[9 * (i - 1) + 1] for i in range(1, n + 1)] == prompt
        answer = ids[-(n + 5) : -1]
        assert answer[2 : 2 + n] == list(range(1, n + 1))


@pytest.mark.parametrize("n", [3, 12])
def test_shifted_left_read_ids_make_each_lookup_same_id_from_the_token_that_predicts_it(n):
    """With left_read_shift, in the aligned layout: the token before step line i's brought-down
    digit (its partial dividend's digit w) shares an id with dividend digit i, for a divisor of
    one digit and of two, and the answer's quotient digit k - 1 with step line k's quotient
    digit; the step lines and other documents keep their ids; decoding after a prefill of the
    prompt line gives the same ids."""
    from minigpt_jax.tasks.arithmetic import make_problem, solution

    rng = random.Random(n)
    addition = "@12+34\n4+2+0=06\nA:46\n"
    for w in (1, 2):
        q = make_problem(rng, "/", n, w)
        lines = (q.prompt + solution(q, layout="aligned")).rstrip("\n").split("\n")
        division = "@" + "\n".join(lines) + "\n"
        text = addition + division + addition  # packed both ways round
        ids, plain = left_read(text, shift=True), left_read(text)
        at, by_line = len(addition) + 1, []
        for line in lines:
            by_line.append(ids[at : at + len(line)])
            at += len(line) + 1
        assert by_line[0] == [i + 2 - w for i in range(1, n + 1)] + [0] + list(range(1, w + 1))
        for i in range(1, n + 1):  # "<w remainder digits><brought down>/<divisor>=<q>r<r>"
            assert lines[i][w] == lines[0][i - 1]  # the digit brought down is dividend digit i
            assert by_line[i][w - 1] == by_line[0][i - 1]  # its predictor shares its id
        quotient = by_line[-1][2 : 2 + n]  # "A:<quotient>r<remainder>"
        assert quotient == [k + 2 for k in range(1, n + 1)]
        for k in range(2, n + 1):  # "...=<q>r...": q sits after "/<divisor>="
            assert quotient[k - 2] == by_line[k][2 * w + 3] == k + 1
        first, last = len(addition), len(addition) + len(division)
        assert ids[:first] == plain[:first] and ids[last:] == plain[last:]
        steps = slice(first + 1 + len(lines[0]) + 1, last - len(lines[-1]) - 1)
        assert ids[steps] == plain[steps]  # only the prompt and the answer move
        prompt = first + 1 + len(lines[0]) + 1  # decoding after a prefill through the prompt
        assert left_read(text, prefill=prompt, shift=True)[:last] == ids[:last]


def test_shifted_left_read_ids_by_hand():
    """A divisor of three digits shares id 1 among the first dividend digits (never below 1); a
    one-digit dividend; a split prefill after the operator keeps the divisor from the left."""
    # the newline that ends line 0 opens line 1: id 1
    assert left_read("@63075/902\n", shift=True) == [0, 1, 1, 2, 3, 4, 0, 1, 2, 3, 1]
    assert left_read("@7/3\n", shift=True) == [0, 2, 0, 1, 1]
    assert left_read("@7/12\n", shift=True) == [0, 1, 0, 1, 2, 1]
    assert left_read("@5969/12\n", prefill=6, shift=True)[6:] == [1, 2, 1]
    marked = "@12:34/5\n"  # a mark on line 0 is no answer: each number before "/" shifts
    assert left_read(marked, shift=True) == [0, 2, 3, 0, 2, 3, 0, 1, 1]
    addition = "@12+34\n4/2+0=06\nA:46\n"  # a "/" on a later line only: unchanged
    assert left_read(addition, shift=True) == coupled(addition)


def test_only_an_operator_on_line_0_makes_a_document_left_read():
    addition = "@12+34\n4/2+0=06\nA:46\n"  # a "/" on a later line: still read from the right
    assert left_read(addition) == coupled(addition)
    marked = "@12:34/5\n"  # a mark on line 0 is no answer: the prompt is read from the left
    assert left_read(marked) == [0, 1, 2, 0, 1, 2, 0, 1, 1]


def test_left_read_ids_token_by_token_equal_the_whole_sequence():
    text = "@8047/6\n08/6=1r2\n20/6=3r2\n24/6=4r0\n07/6=1r1\nA:1341r1\n@5/5\n"
    prompt = text.index("\n") + 1  # the prompt line given whole, as a decode's prefill
    first = text.index("@5")  # the second document's prompt is decoded token by token
    assert left_read(text, prefill=prompt)[:first] == left_read(text)[:first]
    split = text.index("A:") + 3  # a prefill that ends inside the answer's quotient
    assert left_read(text, prefill=split) == left_read(text)
    after = "@8047/6\n08/6=1r2\nA:13r2\n@12+34\n4+2+0=06\nA:46\n"  # then an addition
    second = after.index("@12") + len("@12+34\n")  # its lines after the prompt
    assert left_read(after, prefill=after.index("A:") + 2)[second:] == coupled(after)[second:]


def segments(text: str) -> tuple[list[int], list[int]]:
    """(segment, line) of each token of `text`, "@" standing for <eot>."""
    tokens = [EOT if c == "@" else ord(c) for c in text]
    tokens_BT = jnp.asarray([tokens], jnp.int32)
    seg, line, _ = segment_indices(tokens_BT, BYTE_DIGITS, BYTE_NEWLINES, EOT)
    return seg[0].tolist(), line[0].tolist()


@pytest.mark.parametrize(
    "text, want",
    [
        # the prompt line is 1, 2, 3 for any operand lengths; a newline (and <eot>) is segment 0
        ("@347+285\n", [0, 1, 1, 1, 2, 3, 3, 3, 0]),
        ("@3471234+28512345\n", [0] + [1] * 7 + [2] + [3] * 8 + [0]),
        # a step line: runs of digits and of non-digits alternate
        ("7+5+0=12\n", [1, 2, 3, 4, 5, 6, 7, 7, 0]),
        # the answer line starts with non-digits; several non-digits in a row are one segment
        ("A:0632\n", [1, 1, 2, 2, 2, 2, 0]),
        # a document separator ends the line; a line may start with a digit or not
        ("12 r4@5-6", [1, 1, 2, 2, 3, 0, 1, 2, 3]),
    ],
)
def test_segments_on_hand_written_lines(text, want):
    assert segments(text)[0] == want


def test_segments_tell_the_prompt_line_from_the_rest():
    text = "@12+3\n2+3+0=05\nA:015\n"
    seg, line = segments(text)
    assert line[: text.index("\n")] == [0] * text.index("\n")
    assert line[text.index("\n") :] == [1] * 9 + [2] * 6 + [3]
    # the first operand's digits are segment 1 on the prompt line and on a step line alike: only
    # the line number (0 or not) tells them apart, which the model's table keeps apart
    assert seg[1] == seg[6] == 1 and line[1] == 0 and line[6] == 1


def test_segments_token_by_token_equal_the_whole_sequence():
    text = "@98+7\n8+7+0=15\n9+0+1=10\nA:105\n@12-3\n4"
    tokens = [EOT if c == "@" else ord(c) for c in text]
    whole, whole_line = segments(text)
    line, seg, after_digit = None, None, None
    pieces, line_pieces = [], []
    for chunk in [tokens[:6], tokens[6:9], *([t] for t in tokens[9:])]:
        chunk_BT = jnp.asarray([chunk], jnp.int32)
        got, got_line, seg = segment_indices(
            chunk_BT, BYTE_DIGITS, BYTE_NEWLINES, EOT, line, seg, after_digit
        )
        _, line, *_ = coupled_indices(chunk_BT, BYTE_DIGITS, BYTE_NEWLINES, EOT, line)
        after_digit = jnp.isin(chunk_BT[:, -1], jnp.asarray(BYTE_DIGITS))
        pieces += got[0].tolist()
        line_pieces += got_line[0].tolist()
    assert pieces == whole and line_pieces == whole_line


@pytest.mark.parametrize("starts", ["half", "fit"])
def test_document_block_offsets_give_each_document_its_own_block(starts):
    width, n_blocks = 16, 4
    tokens = [[EOT, 5, 6, EOT, 7, EOT, 8, 9, 9, EOT, 1], [3, 3, EOT, 4, 4, 4, 4, 4, 4, 4, 4]]
    ids = [[0, 1, 2, 0, 1, 0, 3, 12, 1, 0, 2], [1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 16]]  # spans 2..16
    tokens_BT, index_BT = jnp.asarray(tokens, jnp.int32), jnp.asarray(ids, jnp.int32)
    seen, top_ids = set(), set()
    for k in range(40):
        off = document_block_offsets(
            jax.random.key(k), tokens_BT, index_BT, EOT, width, n_blocks, starts
        )
        for row, toks, row_ids in zip(np.asarray(off), tokens, ids, strict=True):
            docs = np.cumsum(np.asarray(toks) == EOT)
            blocks = []
            for d in np.unique(docs):
                values = set(row[docs == d].tolist())
                assert len(values) == 1  # one offset per document
                (v,) = values
                span = max(np.asarray(row_ids)[docs == d])
                block = v // width
                assert 0 <= block < n_blocks
                if starts == "fit":  # the document's ids stay in its block
                    assert v % width + span <= width
                else:  # blind: somewhere in the block's first half
                    assert v % width < width // 2
                blocks.append(block)
                seen.add(v)
                top_ids.add(v % width + span)
            # up to n_blocks documents never share a block, so they never share an id
            assert len(set(blocks[:n_blocks])) == len(blocks[:n_blocks])
    assert len(seen) > 20  # the blocks and starts are drawn, not fixed
    if starts == "fit":  # a block's last id is drawn too
        assert width in top_ids


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
    with pytest.raises(ValueError, match="digit_pos_scheme='even'"):
        GPTConfig.preset("tiny", digit_pos_scheme="even")
    with pytest.raises(ValueError, match="needs digit_pos_max > 0 .* and newline_ids"):
        GPTConfig.preset("tiny", digit_pos_max=8, digit_ids=(48,), digit_pos_scheme="coupled")
    with pytest.raises(ValueError, match=r"needs digit_pos_max > 0 \(got 0\)"):  # not a no-op
        GPTConfig.preset("tiny", digit_pos_scheme="coupled", newline_ids=(10,))
    cfg = GPTConfig.preset("tiny", digit_pos_max=8, digit_ids=(48,), digit_pos_scheme="coupled",
                           newline_ids=[10])
    assert cfg.newline_ids == (10,)
    with pytest.raises(ValueError, match=r"line_segment_max=4: .* \(got 'abacus'\)"):
        GPTConfig.preset("tiny", digit_pos_max=8, digit_ids=(48,), line_segment_max=4)
    for bad in (-1, 1):  # 1 would hold only the line breaks' row
        with pytest.raises(ValueError, match=f"line_segment_max={bad}"):
            dataclasses.replace(cfg, line_segment_max=bad)
    assert dataclasses.replace(cfg, line_segment_max=4).line_segment_max == 4
    with pytest.raises(ValueError, match="digit_pos_doc_block=5: .* digit_pos_max >= 2 x width"):
        dataclasses.replace(cfg, digit_pos_doc_block=5, doc_sep_id=0)  # digit_pos_max is 8
    with pytest.raises(ValueError, match="digit_pos_doc_block=2: .* doc_sep_id"):
        dataclasses.replace(cfg, digit_pos_doc_block=2)
    with pytest.raises(ValueError, match="digit_pos_doc_block=2: .* not with pos_emb='rope'"):
        dataclasses.replace(cfg, digit_pos_doc_block=2, doc_sep_id=0, pos_emb="rope")
    left = dataclasses.replace(cfg, digit_pos_from_left=True)
    assert count_params(left) == count_params(cfg) + 8 * cfg.n_embd  # the wdl table
    assert count_params(left, non_embedding=True) == count_params(cfg, non_embedding=True)
    assert "digit_pos_from_left=True" in left.gpt2_differences()
    with pytest.raises(ValueError, match="digit_pos_doc_start='last'"):
        dataclasses.replace(cfg, digit_pos_doc_start="last")
    with pytest.raises(ValueError, match=r"digit_pos_from_left=True .* \(got 'abacus'"):
        GPTConfig.preset("tiny", digit_pos_max=8, digit_ids=(48,), digit_pos_from_left=True)
    starts = dataclasses.replace(cfg, digit_run_start=True)
    assert count_params(starts) == count_params(cfg) + 2 * cfg.n_embd  # the wdr table
    assert count_params(starts, non_embedding=True) == count_params(cfg, non_embedding=True)
    assert "digit_run_start=True" in starts.gpt2_differences()
    with pytest.raises(ValueError, match="digit_run_start=True .* digit_pos_max > 0"):
        GPTConfig.preset("tiny", digit_run_start=True)
    read = dataclasses.replace(cfg, left_op_ids=[47], answer_mark_ids=[58], doc_sep_id=0)
    assert read.left_op_ids == (47,) and count_params(read) == count_params(cfg)  # no new table
    assert "left_op_ids=(47,)" in read.gpt2_differences()
    for bad in ({"answer_mark_ids": ()}, {"left_op_ids": ()}, {"doc_sep_id": -1}):
        with pytest.raises(ValueError, match="set both .* or neither"):
            dataclasses.replace(read, **bad)
    with pytest.raises(ValueError, match=r"\(got 'abacus'\) and doc_sep_id"):
        GPTConfig.preset("tiny", digit_pos_max=8, digit_ids=(48,), left_op_ids=(47,),
                         answer_mark_ids=(58,), doc_sep_id=0)
    shifted = dataclasses.replace(read, left_read_shift=True)
    assert count_params(shifted) == count_params(cfg) and "left_read_shift=True" in (
        shifted.gpt2_differences())
    with pytest.raises(ValueError, match="left_read_shift=True .* set left_op_ids"):
        dataclasses.replace(cfg, left_read_shift=True)
    with pytest.raises(ValueError, match=r"left_op_ids=\['x'\]: use a tuple of token ids"):
        dataclasses.replace(read, left_op_ids=["x"])
    for bad in ({"answer_mark_ids": (10**6,)}, {"answer_mark_ids": (48,)},  # a digit
                {"left_op_ids": (10,)}, {"left_op_ids": (0,)}):  # a newline, the separator
        with pytest.raises(ValueError, match="not a digit, a newline or doc_sep_id"):
            dataclasses.replace(read, **bad)


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


# Coupled ids in the same tiny model: every 8th id from 2 is a line break, so random weights
# write many lines; the prompts end their first line, as every arithmetic prompt does.
COUPLED = dataclasses.replace(
    CFG, digit_pos_scheme="coupled", newline_ids=tuple(range(2, 257, 8)), digit_pos_max=40
)


# With line segments too: the decode carries the segment and the run that starts the next one.
SEGMENTS = dataclasses.replace(COUPLED, line_segment_max=4)


# And with each digit's index from its number's left end, in its own table.
FROM_LEFT = dataclasses.replace(SEGMENTS, digit_pos_from_left=True)


# And with the marker of a digit that starts its run (the decode continues the run it is in).
RUN_START = dataclasses.replace(SEGMENTS, digit_run_start=True)


# And with the documents whose line 0 holds an id of 4, 12, ... read from the left, their answer
# being the digit run after an id of 6, 14, ...; 256 separates documents (teacher-forced below:
# greedy decoding of random weights soon writes the separator).
LEFT_READ = dataclasses.replace(
    SEGMENTS, left_op_ids=tuple(range(4, 256, 8)), answer_mark_ids=tuple(range(6, 256, 8)),
    doc_sep_id=256,
)


@pytest.fixture(
    scope="module",
    params=[COUPLED, SEGMENTS, FROM_LEFT, RUN_START],
    ids=["coupled", "segments", "left", "run_start"],
)
def coupled_model(request):
    model = GPT(request.param)
    raw = jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 8), jnp.int32))["params"]
    return request.param, jax.tree.map(lambda x: x * 6.0, raw)


def test_cached_greedy_equals_recompute_with_coupled_ids(coupled_model):
    cfg, params = coupled_model
    prompts = [[5, 7, 9, 2], [4, 3, 5, 7, 1, 1, 13, 15, 10, 17, 19, 18]]
    got = sample(cfg, params, prompts, 12, temperature=0)
    seqs = [list(p) for p in prompts]
    forward = jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t))
    for seq in seqs:
        for _ in range(12):
            buffer = np.zeros((1, cfg.block_size), np.int32)
            buffer[0, : len(seq)] = seq
            logits = forward(params, jnp.asarray(buffer))
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    assert got == [s[len(p):] for s, p in zip(seqs, prompts, strict=True)]
    generated = [t for row in got for t in row]
    assert sum(t % 2 for t in generated) >= 3 and any(t in cfg.newline_ids for t in generated)
    # a generated digit continues a run, so the run carried in the cache is read
    assert any(a % 2 and b % 2 for row in got for a, b in zip(row[:-1], row[1:], strict=True))
    for table in ("wse", "wdl", "wdr"):  # a table in use: zeroing it changes the output
        if table in params:
            zeroed = {**params, table: {"embedding": jnp.zeros_like(params[table]["embedding"])}}
            assert sample(cfg, zeroed, prompts, 12, temperature=0) != got
    assert ("wdl" in params) == cfg.digit_pos_from_left
    assert ("wdr" in params) == cfg.digit_run_start


@pytest.mark.parametrize("shift", [False, True])
def test_cached_logits_equal_recompute_in_left_read_answers(shift):
    """Teacher-forced through the cache from a prefill that ends on the answer mark: the decode
    carries the reading state, so every column's logits are the whole sequence's; a document
    without the operator on line 0 (one on a later line) keeps its ids."""
    cfg = dataclasses.replace(LEFT_READ, left_read_shift=shift)
    model = GPT(cfg)
    plain = GPT(dataclasses.replace(cfg, left_op_ids=(), answer_mark_ids=(), left_read_shift=False))
    params = jax.jit(model.init)(jax.random.key(5), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(lambda x: x * 6.0, params)
    # line 0 "3 5 / 7" (the operator 4); line 2's answer run 15 17 19 after the mark 6
    division = [256, 3, 5, 4, 7, 10, 9, 11, 2, 13, 6, 15, 17, 19, 18, 21]
    # no operator on line 0; the mark 6 and the operator 4 on later lines
    other = [256, 3, 8, 5, 2, 7, 6, 9, 11, 10, 4, 7, 6, 3]
    forward = jax.jit(lambda m, p, t: m.apply({"params": p}, t), static_argnums=0)
    step = jax.jit(lambda p, t, c: model.apply({"params": p}, t, cache=c))
    # One cache length for both sequences, so each shape compiles once: columns not yet
    # written are masked, so a longer cache changes no logit.
    cache_len = max(len(division), len(other))
    for seq in (division, other):
        whole = forward(model, params, jnp.asarray([seq]))[0]
        prefill = seq.index(6) + 1
        cache = KVCache.zeros(cfg, 1, cache_len, jnp.zeros((1,), jnp.int32))
        logits, cache = step(params, jnp.asarray([seq[:prefill]]), cache)
        cached = [logits[0]]
        for token in seq[prefill:]:
            logits, cache = step(params, jnp.asarray([[token]]), cache)
            cached.append(logits[0])
        np.testing.assert_allclose(jnp.concatenate(cached), whole, rtol=1e-4, atol=1e-4)
        unread = forward(plain, params, jnp.asarray([seq]))[0]
        assert np.allclose(unread, whole, rtol=1e-5, atol=1e-5) == (seq is other)
        if shift:  # the shifted ids are not the plain left-read ones
            unshifted = forward(GPT(LEFT_READ), params, jnp.asarray([seq]))[0]
            assert np.allclose(unshifted, whole, rtol=1e-5, atol=1e-5) == (seq is other)


def test_document_blocks_let_training_documents_see_each_other():
    """In training (not deterministic) the second document's logits depend on the first one's
    digits and on the drawn blocks; evaluation keeps documents apart and uses no offset."""
    cfg = dataclasses.replace(SEGMENTS, doc_sep_id=0, digit_pos_offset_max=0, digit_pos_doc_block=8)
    model = GPT(cfg)
    params = jax.jit(model.init)(jax.random.key(4), jnp.zeros((1, 8), jnp.int32))["params"]
    second = [0, 7, 9, 2, 5]
    a = jnp.asarray([[0, 3, 5, 2, 11, *second]], jnp.int32)
    b = jnp.asarray([[0, 13, 15, 2, 17, *second]], jnp.int32)  # another first document

    def logits(tokens, train, key=0):
        return model.apply({"params": params}, tokens, deterministic=not train,
                           rngs={"digits": jax.random.key(key)})[0, 5:]

    np.testing.assert_allclose(logits(a, False), logits(b, False), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits(a, False, 0), logits(a, False, 1))  # no offsets drawn
    assert not np.allclose(logits(a, True), logits(b, True))  # the same blocks, another document
    assert not np.allclose(logits(a, True, 0), logits(a, True, 1))  # other blocks
