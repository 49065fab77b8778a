"""Arithmetic task: generator correctness, disjoint splits, parser, votes, verifier, end to end."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from minigpt_jax.errors import DataError, UserError
from minigpt_jax.shards import open_shard, read_manifest, write_shard
from minigpt_jax.tasks import arithmetic
from minigpt_jax.tasks.arithmetic import (
    Problem,
    StepError,
    check_steps,
    majority_vote,
    parse_answer,
    solution,
    verified_vote,
    verify_solution,
)
from minigpt_jax.tasks.arithmetic import data as arithmetic_data
from minigpt_jax.tasks.arithmetic.problems import TRIAL_LAYOUTS, quotient_trials
from minigpt_jax.tokenizer import ByteTokenizer

# --- the generator's worked solutions are right, step by step --------------------------------


def _independent_check(p: Problem, text: str, layout: str = "classic") -> None:
    """Re-derive every line with Python integers, independently of `check_steps`."""
    lines = text.rstrip("\n").split("\n")
    assert lines[-1] == f"A:{arithmetic.written_answer(p, layout)}"
    assert parse_answer(lines[-1]) == p.answer
    if layout == "table" and p.op == "/":  # the divisor's multiples 1..9 first, in order
        assert [line.split("=")[0] for line in lines[:9]] == [f"{p.b}*{k}" for k in range(1, 10)]
    trial = layout in TRIAL_LAYOUTS
    if trial and p.op == "/" and p.b >= 10:  # trials down to the first that fits
        for line in lines[:-1]:
            estimate, *trials, step = line.split(",")
            cur = int(step.split("/")[0])
            products = [t for t in trials if "*" in t]
            values = [int(t.split("=")[1]) for t in products]
            assert values[-1] <= cur < min(values[:-1], default=cur + 1), line
            assert products[-1].split("=")[0] == f"{p.b}*{step.split('=')[1][0]}"
            differences = [t for t in trials if "*" not in t]
            w = len(str(p.b)) + 1  # the partial dividend's columns
            diffed = {  # the products whose differences are written
                "trial": [],
                "trial_pad": [],
                "trial_sub": values,
                "trial_rem": [v for v in values[-1:] if v > 0],  # the fitting one, unless 0
            }[layout]
            # each written difference right after its product (`diffed` is a suffix of values)
            first = len(values) - len(diffed)
            order = [k for i in range(len(values)) for k in "*" + "-" * w * (i >= first)]
            assert ["*" if "*" in t else "-" for t in trials] == order, line
            for k, value in enumerate(diffed):  # cur - value, lsf
                columns = differences[w * k : w * (k + 1)]
                digits = "".join(eq.split("=")[1] for eq in reversed(columns))
                assert int(columns[-1][0]) == (value > cur), line  # the borrow out: no fit
                assert int(digits) == (cur - value) % 10**w, line
    equations = [eq for line in lines[:-1] for eq in line.split(",")]  # aligned x: 3 per line
    for line in equations:
        if line.startswith("="):
            continue
        lhs, rhs = line.split("=")
        if "/" in lhs:  # "24/6=4r0": 4*6+0 == 24, remainder below the divisor
            cur, div = map(int, lhs.split("/"))
            q, r = map(int, rhs.split("r"))
            estimate = trial and div < p.b  # "11/1=11r0" may exceed one digit
            assert q * div + r == cur and 0 <= r < div and (estimate or 0 <= q <= 9), line
            if layout == "trial_pad" and not estimate:  # the remainder at the divisor's width
                assert len(rhs.split("r")[1]) == len(str(p.b)), line
        else:  # every other step is a true integer equation, e.g. "13-8-1=4", "4*8+5=37"
            lhs = re.sub(r"\b0+(\d)", r"\1", lhs)  # "08-6-0": Python rejects leading zeros
            assert eval(lhs) == int(rhs), line  # noqa: S307 - digits and + - * only
    # The final answer is the true result.
    true = {"+": p.a + p.b, "-": p.a - p.b, "*": p.a * p.b}.get(p.op)
    if true is not None:
        assert int(p.answer) == true
    else:
        q, r = map(int, p.answer.split("r"))
        assert q * p.b + r == p.a and 0 <= r < p.b


@pytest.mark.parametrize("seed", range(40))
def test_worked_solutions_are_exact_for_many_seeds(seed):
    rng = random.Random(seed)
    wide = arithmetic.Mixture(
        addsub_digit_weights=(1, 1, 1, 1, 1, 1),
        mul_digit_weights=(1, 1, 1, 1),
        div_dividend_digit_weights=(1, 1, 1, 1, 1),
        div_divisor_digit_weights=(1, 1),
    )
    for _ in range(60):
        p = arithmetic.sample_problem(rng, wide)
        for layout in arithmetic.LAYOUTS:
            text = solution(p, layout=layout)
            _independent_check(p, text, layout)
            assert check_steps(p, text) == p.answer  # the verifier accepts every true solution


def test_fixed_width_layout_puts_every_digit_at_a_constant_offset():
    """The point of the format: within one (op, digits) cell every document has the same shape, so
    the digit a step restates is always the same distance from the start of the problem."""
    rng = random.Random(0)
    for op, da, db in (("+", 3, 3), ("+", 1, 3), ("-", 3, 2), ("*", 2, 2), ("*", 1, 2)):
        docs = [arithmetic.document(arithmetic.make_problem(rng, op, da, db)) for _ in range(50)]
        shapes = {re.sub(r"\d", "9", d) for d in docs}
        assert len(shapes) == 1, (op, da, db, shapes)
    p = Problem("+", 347, 85)
    doc = arithmetic.document(p)  # "347+085\n7+5+0=12\n4+8+1=13\n3+0+1=04\nA:0432\n"
    for col in range(3):  # column `col` line restates a's and b's digit `col` from the right
        line = doc.split("\n")[1 + col]
        assert line[0] == doc[2 - col] and line[2] == doc[6 - col]


def test_hand_worked_examples():
    assert solution(Problem("+", 347, 285)) == "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:0632\n"
    assert solution(Problem("-", 532, 285)) == "12-5-0=7\n13-8-1=4\n05-2-1=2\nA:247\n"
    assert solution(Problem("/", 847, 6)) == "08/6=1r2\n24/6=4r0\n07/6=1r1\nA:141r1\n"
    assert solution(Problem("*", 47, 85)) == (
        "7*5+0=35\n4*5+3=23\n=235\n7*8+0=56\n4*8+5=37\n=376\n"
        "5+0+0=05\n3+6+0=09\n2+7+0=09\n0+3+0=03\nA:3995\n"
    )
    assert solution(Problem("+", 999, 1)).endswith("9+0+1=10\nA:1000\n")
    # Operands are zero-padded to the training width, and wider numbers keep their own width.
    assert Problem("+", 7, 85).prompt == "007+085\n" and Problem("*", 7, 5).prompt == "07*05\n"
    assert (
        Problem("-", 12345, 6).prompt == "12345-00006\n" and Problem("/", 9, 4).prompt == "009/4\n"
    )
    assert solution(Problem("*", 47, 5)).endswith(
        "=000\n5+0+0=05\n3+0+0=03\n2+0+0=02\n0+0+0=00\nA:0235\n"
    )
    assert solution(Problem("*", 47, 85), steps=False) == "A:3995\n"
    assert Problem("-", 532, 285).level == "3" and Problem("*", 47, 85).level == "2x2"
    with pytest.raises(ValueError, match="a >= b"):
        Problem("-", 1, 2)


# --- disjoint train and test ---------------------------------------------------------------------


def _documents(path: Path) -> list[str]:
    text = ByteTokenizer().decode(open_shard(path).tolist())
    return [d for d in text.split("<|endoftext|>") if d]


def test_dataset_train_and_test_are_disjoint(tmp_path):
    script = arithmetic_data
    # A small problem space (2-digit add, 1-digit mul): without exclusion, collisions are certain.
    mix = arithmetic.Mixture(
        op_weights=(1, 0, 1, 0), addsub_digit_weights=(0, 1), mul_digit_weights=(1,)
    )
    spec = (("+", 2, 2, 400), ("*", 1, 1, 30))
    manifest = script.write_dataset(
        tmp_path,
        train_tokens=40_000,
        val_tokens=12_000,
        block_size=128,
        mixture=mix,
        heldout_spec=spec,
        long_spec=(("+", 3, 3, 20),),
    )
    assert manifest["tokenizer"]["name"] == "byte" and manifest["dtype"] == "uint16"
    assert read_manifest(tmp_path) == manifest
    assert {s["split"] for s in manifest["shards"]} == {"train", "val"}
    tests = [
        json.loads(x)
        for f in ("test.jsonl", "test_long.jsonl")
        for x in (tmp_path / f).read_text().splitlines()
    ]
    test_prompts = {t["prompt"] for t in tests}
    assert len(test_prompts) == 450
    for split in ("train", "val"):
        docs = _documents(tmp_path / f"{split}_000000.bin")
        prompts = {d.split("\n")[0] + "\n" for d in docs}
        assert len(prompts) > 50
        assert not prompts & test_prompts
        for doc in docs:  # whole problems only: packing never cuts one
            head, rest = doc.split("\n", 1)
            a, op, b = head.partition("+") if "+" in head else head.partition("*")
            p = Problem(op, int(a), int(b))
            assert rest == solution(p) and head + "\n" == p.prompt
    # Every window the trainer reads starts with a problem (packing aligns to block_size).
    tokens = open_shard(tmp_path / "train_000000.bin")
    mask = open_shard(tmp_path / "train_000000.mask.bin")
    eot = ByteTokenizer.eot_id
    assert tokens.size % 128 == 0 and np.all(tokens[::128] == eot)
    assert manifest["shards"][0]["target_tokens"] == int(mask.sum())
    # The loss counts each solution and the <eot> that ends it; never a prompt, never padding.
    checked = 0
    for c in range(0, tokens.size, 128):
        chunk, chunk_mask = tokens[c : c + 128], mask[c : c + 128]
        starts = np.flatnonzero(chunk == eot)
        starts = [int(i) for i in starts if i + 1 < 128 and chunk[i + 1] != eot]
        for j, start in enumerate(starts):
            doc = ByteTokenizer().decode(chunk[start + 1 :].tolist()).split("<|endoftext|>")[0]
            body = start + 1 + doc.index("\n") + 1  # first solution token
            end = start + 1 + len(doc)  # the <eot> after the solution
            assert j == 0 or chunk_mask[start] == 1
            assert not chunk_mask[start + 1 : body].any()
            assert chunk_mask[body:end].all()
            if j == len(starts) - 1 and end < 128:
                assert chunk_mask[end] == 1 and not chunk_mask[end + 1 :].any()
            checked += 1
    assert checked > 50


def test_test_sets_are_distinct_and_deterministic():
    a = arithmetic.heldout_problems(7, arithmetic.HELDOUT_SPEC)
    assert a == arithmetic.heldout_problems(7, arithmetic.HELDOUT_SPEC)
    assert len(set(a)) == len(a) == sum(n for *_, n in arithmetic.HELDOUT_SPEC)
    assert all(len(str(p.a)) == 3 and len(str(p.b)) == 3 for p in a if p.level == "3")
    long = arithmetic.heldout_problems(8, arithmetic.LONG_SPEC)
    train_max = arithmetic.Mixture().max_digits()
    assert all(len(str(p.a)) > train_max[p.op] for p in long)  # longer than training ever shows

    used = set(a[:50])  # a cell is drawn around the problems it must not repeat
    fresh = arithmetic.heldout_problems(9, arithmetic.HELDOUT_SPEC, exclude=used)
    assert not used & set(fresh) and len(set(fresh)) == len(fresh) == len(a)


@pytest.mark.parametrize("cell", [("+", 1, 1), ("-", 1, 1), ("-", 2, 2), ("-", 2, 1),
                                  ("-", 1, 2), ("*", 2, 1), ("/", 2, 1), ("/", 1, 2)])
def test_cell_size_is_what_the_draws_reach(cell):
    """A cell's every problem can be drawn, and not one more: a test set that avoids problems
    knows beforehand whether enough are left, instead of drawing forever."""
    size = arithmetic.cell_size(*cell)
    rng = random.Random(0)
    drawn = {arithmetic.make_problem(rng, *cell) for _ in range(40 * size + 100)}
    drawn = {p for p in drawn if len(str(p.a)) == cell[1]}  # as heldout_problems keeps them
    assert len(drawn) == size
    if size:
        assert len(set(arithmetic.heldout_problems(1, [(*cell, size)]))) == size
    avoid = sorted(drawn)[: size // 2]
    left = size - len(avoid)
    assert len(arithmetic.heldout_problems(2, [(*cell, left)], exclude=avoid)) == left
    with pytest.raises(ValueError, match=rf"{arithmetic.cell_label(*cell)}: {left + 1} problems "
                                         rf"asked for, {left} left"):
        arithmetic.heldout_problems(2, [(*cell, left + 1)], exclude=avoid)


@pytest.mark.parametrize("steps, layout", [(True, "classic"), (False, "classic"), (True, "trial")])
def test_problems_in_shards_are_every_problem_written(tmp_path, steps, layout):
    """Read back from the tokens, the shards' problems are exactly the writer's stream (replayed
    here from its seeds), with worked steps or without, in any layout."""
    mix = arithmetic.Mixture(op_weights=(1, 1, 0, 1), addsub_digit_weights=(1, 1),
                             div_dividend_digit_weights=(1, 1, 1), div_divisor_digit_weights=(1, 1),
                             layout=layout)
    heldout, long = (("+", 2, 2, 30), ("/", 2, 1, 30)), (("+", 3, 3, 5),)
    manifest = arithmetic_data.write_dataset(
        tmp_path, steps=steps, train_tokens=40_000, val_tokens=2_000, block_size=192,
        mixture=mix, seed=3, heldout_spec=heldout, long_spec=long,
    )
    tests = arithmetic.heldout_problems(1234, heldout) + arithmetic.heldout_problems(1235, long)
    counts = manifest["task"]["problems"]
    written = set()
    for seed, n in ((3, counts["train"]), (4, counts["val"])):
        written.update(itertools.islice(arithmetic.training_problems(seed, mix, tests), n))
    in_shards = arithmetic_data.problems_in_shards(tmp_path)
    assert in_shards == written and len(in_shards) > 300


def test_a_fresh_set_avoids_the_shards_and_test_files(tmp_path):
    from minigpt_jax.tasks.arithmetic import evaluate

    mix = arithmetic.Mixture(op_weights=(1, 1, 0, 1), addsub_digit_weights=(1, 1),
                             div_dividend_digit_weights=(1, 1))
    heldout = (("+", 2, 2, 30), ("/", 2, 1, 30))
    arithmetic_data.write_dataset(tmp_path, train_tokens=40_000, val_tokens=2_000, block_size=64,
                                  mixture=mix, heldout_spec=heldout, long_spec=(("+", 3, 3, 5),))
    used = arithmetic_data.problems_in_shards(tmp_path)
    for name in arithmetic_data.TEST_FILES:
        used.update(evaluate.load_test_set(tmp_path, name))
    fresh = evaluate.fresh_problems([tmp_path], ["add 2", "div 2/1"], 30, seed=1)
    assert [evaluate.cell_name(p) for p in fresh] == ["add 2"] * 30 + ["div 2/1"] * 30
    assert not set(fresh) & used
    # each cell from its own seed: the same problems whichever cells are named with it
    assert fresh[30:] == evaluate.fresh_problems([tmp_path], ["div 2/1"], 30, seed=1)
    assert fresh[30:] != evaluate.fresh_problems([tmp_path], ["div 2/1"], 30, seed=2)
    # "div 2/1" has 90 * 9 problems: a fresh set takes every one left, and cannot take one more
    in_cell = {p for p in used if evaluate.cell_name(p) == "div 2/1"}
    left = 810 - len(in_cell)
    assert len(in_cell) > 30 and left > 30
    every = evaluate.fresh_problems([tmp_path], ["div 2/1"], left, seed=2)
    assert len(set(every) | in_cell) == 810
    with pytest.raises(UserError, match=f"--fresh {left + 1}: div 2/1: {left + 1} problems asked "
                                        f"for, {left} left outside the data; .* --cells"):
        evaluate.fresh_problems([tmp_path], ["div 2/1"], left + 1, seed=2)


def test_fresh_also_avoids_the_runs_own_data_when_data_dir_points_elsewhere(tmp_path, capsys):
    from minigpt_jax.tasks.arithmetic.evaluate import _trained_on

    evaluated, own = tmp_path / "evaluated", tmp_path / "own"
    evaluated.mkdir(), own.mkdir()
    assert _trained_on(evaluated, {"config": {"data_dir": str(evaluated)}}) == [evaluated]
    assert _trained_on(evaluated, {"config": {"data_dir": str(own)}}) == [evaluated, str(own)]
    assert _trained_on(evaluated, {"config": {"data_dir": str(tmp_path / "gone")}}) == [evaluated]
    assert "--fresh avoids only" in capsys.readouterr().err


@pytest.mark.parametrize("tokens, message", [
    ([300] * 64, "not byte-tokenized arithmetic"),  # not the byte tokenizer's ids
    ([256, *b"hello\n"], "holds no arithmetic problem"),
    ([256, *b"1-2\n", 256], "subtraction needs a >= b"),
])
def test_problems_in_shards_refuses_shards_that_are_not_arithmetic(tmp_path, tokens, message):
    write_shard(tmp_path / "train_000000.bin", np.array(tokens, np.uint16))
    with pytest.raises(DataError, match=f"train_000000.bin: .*{message}"):
        arithmetic_data.problems_in_shards(tmp_path)


# --- parser, votes, verifier -------------------------------------------------------------------


def test_parse_answer():
    assert parse_answer("7+5+0=12\nA:632\n") == "632"
    assert parse_answer("A:0632") == "632"
    assert parse_answer("A:1\nA:2\n") == "2"  # the last answer line counts
    assert parse_answer("08/6=1r2\nA:141r1\n") == "141r1"
    assert parse_answer("A:007r03") == "7r3"
    assert parse_answer("A:-12") == "-12"
    for bad in ("", "632", "A:", "A:6 32", "A:63x", "B:12", "xA:12"):
        assert parse_answer(bad) is None, bad


def test_majority_vote():
    assert majority_vote(["5", "6", "5", None]) == "5"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["7", "8"]) == "7"  # a tie goes to the first seen
    assert majority_vote([None, "8", "7", "7", "8"]) == "8"


def test_verifier_on_hand_made_samples():
    p = Problem("+", 347, 285)
    good = "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:632\n"
    assert verify_solution(p, good)
    bad_cases = {
        "false step": "7+5+0=13\n4+8+1=13\n3+2+1=06\nA:632\n",
        "carry dropped": "7+5+0=12\n4+8+0=12\n3+2+1=06\nA:622\n",
        "wrong digit read": "7+5+0=12\n4+9+1=14\n3+2+1=06\nA:642\n",
        "answer contradicts steps": "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:633\n",
        "missing column": "7+5+0=12\n4+8+1=13\nA:32\n",
        "no answer": "7+5+0=12\n4+8+1=13\n3+2+1=06\n",
        "answer only": "A:632\n",
    }
    for name, text in bad_cases.items():
        assert not verify_solution(p, text), name
    with pytest.raises(StepError, match="false"):
        check_steps(p, bad_cases["false step"])

    sub = Problem("-", 532, 285)
    assert verify_solution(sub, "12-5-0=7\n13-8-1=4\n05-2-1=2\nA:247\n")
    assert not verify_solution(sub, "12-5-0=7\n03-8-1=4\n05-2-1=2\nA:247\n")  # false equation
    assert not verify_solution(sub, "02-5-0=7\n13-8-0=5\n05-2-1=2\nA:257\n")
    div = Problem("/", 847, 6)
    assert verify_solution(div, "08/6=1r2\n24/6=4r0\n07/6=1r1\nA:141r1\n")
    assert not verify_solution(div, "08/6=1r2\n24/6=3r6\n67/6=11r1\nA:141r1\n")
    mul = Problem("*", 47, 85)
    right = solution(mul)
    assert verify_solution(mul, right)
    assert not verify_solution(mul, right.replace("=376", "=377"))
    assert not verify_solution(mul, right.replace("4*8+5=37", "4*8+5=38"))


def test_aligned_layout_writes_a_line_per_product_column_and_pads_the_quotient():
    p = Problem("*", 347, 85)
    right = solution(p, layout="aligned")
    assert right == (
        "7*5+0=35,7*8+0=56,5+0+0=05\n"  # column 1: 7x5, 7x8, units 5 (+ nothing shifted in)
        "4*5+3=23,4*8+5=37,3+6+0=09\n"  # column 2: units 3 of 4x5+3 and 6 of line 1's 7x8
        "3*5+2=17,3*8+3=27,7+7+0=14\n"
        "0*5+1=01,0*8+2=02,1+7+1=09\n"  # a's zero columns spend the carries
        "0*5+0=00,0*8+0=00,0+2+0=02\n"
        "A:29495\n"
    )
    assert check_steps(p, right) == "29495" and arithmetic.steps_are_right(p, right)
    wrong = {  # each a true equation, but not the procedure's next step
        "units from the wrong line": right.replace("3+6+0=09", "3+5+0=08"),
        "product carry dropped": right.replace("4*8+5=37", "4*8+0=32"),
        "sum carry dropped": right.replace("1+7+1=09", "1+7+0=08"),
        "a column short": right.replace("0*5+0=00,0*8+0=00,0+2+0=02\n", ""),
        "a product missing": right.replace("7*5+0=35,7*8+0=56,", "7*5+0=35,"),
    }
    for name, text in wrong.items():
        assert not arithmetic.steps_are_right(p, text), name
    assert arithmetic.right_lines(p, wrong["units from the wrong line"]) == 1
    assert solution(Problem("*", 99, 99), layout="aligned").count("\n") == 5  # 2+2 columns
    with pytest.raises(ValueError, match="layout"):
        arithmetic.Mixture(layout="diagonal")
    div = Problem("/", 47, 6)  # "047/6": the quotient's digits are the three step lines'
    padded = solution(div, layout="aligned")
    assert padded == solution(div).replace("A:7r5", "A:007r5") and padded.endswith("A:007r5\n")
    assert check_steps(div, padded) == "7r5" == parse_answer(padded)
    assert solution(Problem("+", 347, 285), layout="aligned") == solution(Problem("+", 347, 285))


def test_table_layout_writes_the_divisors_multiples_before_the_division():
    p = Problem("/", 4347, 56)  # "4347/56"
    right = solution(p, layout="table")
    assert right == (
        "56*1=056\n56*2=112\n56*3=168\n56*4=224\n56*5=280\n56*6=336\n56*7=392\n56*8=448\n"
        "56*9=504\n"
        "004/56=0r4\n043/56=0r43\n434/56=7r42\n427/56=7r35\n"  # as in "aligned"
        "A:0077r35\n"
    )
    assert right.endswith(solution(p, layout="aligned"))
    assert check_steps(p, right) == "77r35" and arithmetic.right_lines(p, right) == 14
    assert solution(Problem("/", 47, 6), layout="table").startswith("6*1=06\n6*2=12\n")
    wrong = {  # the line index right_lines reports for each
        "a false multiple": (right.replace("56*7=392", "56*7=382"), 6),
        "a multiple missing": (right.replace("56*9=504\n", ""), 8),
        "the table twice": (right.replace("004/56", "56*1=056\n004/56"), 9),
        "a false quotient": (right.replace("434/56=7r42", "434/56=8r42"), 11),
        "a remainder not below b": (right.replace("434/56=7r42", "434/56=6r98"), 11),
    }
    for name, (text, line) in wrong.items():
        assert not arithmetic.steps_are_right(p, text), name
        assert arithmetic.right_lines(p, text) == line, name
    # A true multiple out of order is a true equation but not the procedure's step.
    swapped = right.replace("56*2=112\n56*3=168", "56*3=168\n56*2=112")
    assert arithmetic.true_step_fraction(swapped) == 1.0 and not verify_solution(p, swapped)
    assert arithmetic.true_step_fraction(right.replace("56*7=392", "56*7=382")) == 12 / 13
    # + - x are "aligned"'s.
    for q in (Problem("+", 347, 285), Problem("-", 532, 285), Problem("*", 34567, 85)):
        assert solution(q, layout="table") == solution(q, layout="aligned")


def _assert_wrong_from_line(p: Problem, wrong: dict[str, str], line: int) -> None:
    """Each corrupted solution fails the checker, which reports `line` as its first wrong one."""
    for name, text in wrong.items():
        assert not arithmetic.steps_are_right(p, text), name
        assert arithmetic.right_lines(p, text) == line, name


def _assert_checks_and_one_digit_is_aligned(p: Problem, right: str, layout: str) -> None:
    """4347/56 in a trial layout checks line by line; a one-digit divisor's estimate is its
    step, so its lines are "aligned"'s."""
    assert check_steps(p, right) == "77r35" and arithmetic.right_lines(p, right) == 5
    assert solution(Problem("/", 4347, 5), layout=layout) == solution(
        Problem("/", 4347, 5), layout="aligned"
    )


def test_trial_layout_estimates_each_quotient_digit_and_corrects_it_by_products():
    p = Problem("/", 4347, 56)
    right = solution(p, layout="trial")
    assert right == (
        "00/5=0r0,56*0=000,004/56=0r4\n"  # the estimate from leading digits, 0 fits
        "04/5=0r4,56*0=000,043/56=0r43\n"
        "43/5=8r3,56*8=448,56*7=392,434/56=7r42\n"  # 8 is one too many: 448 > 434
        "42/5=8r2,56*8=448,56*7=392,427/56=7r35\n"
        "A:0077r35\n"
    )
    _assert_checks_and_one_digit_is_aligned(p, right, "trial")
    # A leading 1 overestimates by up to five; a two-digit estimate starts the trials at 9.
    assert solution(Problem("/", 95, 19), layout="trial").splitlines()[2] == (
        "09/1=9r0,19*9=171,19*8=152,19*7=133,19*6=114,19*5=095,095/19=5r0"
    )
    assert quotient_trials(119, 19)[:2] == ["11/1=11r0", "19*9=171"]
    wrong = {  # the line index right_lines reports for each
        "a trial skipped": right.replace("56*8=448,56*7=392,434", "56*7=392,434"),
        "a false product": right.replace("56*8=448,56*7=392,434", "56*8=448,56*7=382,434"),
        "a wrong estimate": right.replace("43/5=8r3", "43/5=7r8"),
        "a product that fits not stopping the trials": right.replace(
            "56*7=392,434", "56*7=392,56*6=336,434"
        ),
    }
    _assert_wrong_from_line(p, wrong, 2)
    # The checker takes any layout line by line: a step without its trials is "aligned"'s.
    assert verify_solution(p, right.replace("43/5=8r3,56*8=448,56*7=392,", ""))
    assert arithmetic.true_step_fraction(right) == 1.0
    assert arithmetic.true_step_fraction(right.replace("56*7=392", "56*7=382", 1)) == 0.75


def test_trial_sub_layout_writes_each_products_difference_column_by_column():
    """The layout exists to turn "does it fit" and "what remains" into −'s column equations, so
    the checker must hold a line to those equations, not only to true ones."""
    p = Problem("/", 4347, 56)
    right = solution(p, layout="trial_sub")
    assert right.splitlines()[2] == (
        # 434 - 448 borrows out of its last column (1 in "14-4-1=9"): 8 does not fit; 7 does,
        # and 434 - 392 = 042 is the step's remainder.
        "43/5=8r3,56*8=448,14-8-0=6,13-4-1=8,14-4-1=9,"
        "56*7=392,04-2-0=2,13-9-0=4,04-3-1=0,434/56=7r42"
    )
    _assert_checks_and_one_digit_is_aligned(p, right, "trial_sub")
    wrong = {  # each wrong on line 2
        "a false column": right.replace("04-2-0=2,13-9-0=4", "04-2-0=2,13-9-0=5"),
        "a remainder done in one go": right.replace(
            "56*7=392,04-2-0=2,13-9-0=4,04-3-1=0,", "56*7=392,"
        ),
        # every equation true, the procedure not: column 1 ignores column 0's borrow
        "a borrow dropped": right.replace("13-4-1=8,14-4-1=9", "13-4-0=9,04-4-0=0"),
        "a product that fits not stopping the trials": right.replace(
            "04-3-1=0,434", "04-3-1=0,56*6=336,04-6-0=8,03-3-0=0,04-3-0=1,434"
        ),
    }
    _assert_wrong_from_line(p, wrong, 2)
    assert arithmetic.true_step_fraction(right) == 1.0
    assert arithmetic.true_step_fraction(wrong["a borrow dropped"]) == 1.0
    # As for "trial", the checker reads each line in whichever layout it is written: a line in
    # "trial"'s form (no differences) is a right step, so a process reward does not require them.
    assert verify_solution(p, right.replace(right.splitlines()[2], solution(
        p, layout="trial").splitlines()[2]))
    # A three-digit divisor's differences span its partial dividend's four columns.
    assert quotient_trials(1000, 123, "all") == [
        "10/1=10r0", "123*9=1107", "10-7-0=3", "10-0-1=9", "10-1-1=8", "11-1-1=9",
        "123*8=0984", "10-4-0=6", "10-8-1=1", "10-9-1=0", "01-0-1=0",  # 1000 - 984 = 0016
    ]


def test_trial_pad_layout_writes_each_remainder_at_the_divisors_width():
    """The step's remainder, trial's main 4/2 failure, with one digit per column of the divisor,
    so the next line's partial dividend copies it digit for digit; the answer line keeps the
    issue's `<q>r<r>`."""
    p = Problem("/", 1790, 19)
    right = solution(p, layout="trial_pad")
    assert right == (
        "00/1=0r0,19*0=000,001/19=0r01\n"
        "01/1=1r0,19*1=019,19*0=000,017/19=0r17\n"
        "17/1=17r0,19*9=171,179/19=9r08\n"  # 179 - 171 = 08, the next line's `080`
        "08/1=8r0,19*8=152,19*7=133,19*6=114,19*5=095,19*4=076,080/19=4r04\n"
        "A:0094r4\n"
    )
    # Only the steps' remainders differ from "trial".
    unpadded = right.replace("r01", "r1").replace("r08", "r8").replace("r04", "r4")
    assert unpadded == solution(p, layout="trial")
    assert check_steps(p, right) == "94r4" and arithmetic.right_lines(p, right) == 5
    _assert_wrong_from_line(p, {"a wrong remainder": right.replace("9r08", "9r18")}, 2)
    _assert_wrong_from_line(p, {"a shifted partial dividend": right.replace("080/", "800/")}, 3)
    # The checker reads values, not widths: the same steps unpadded (or a bare step line) are
    # right, as a trial line in another trial layout's form is.
    assert arithmetic.right_lines(p, unpadded) == 5 and verify_solution(p, unpadded)
    _assert_checks_and_one_digit_is_aligned(
        Problem("/", 4347, 56), solution(Problem("/", 4347, 56), layout="trial_pad"), "trial_pad"
    )


def test_trial_rem_layout_writes_only_the_fitting_products_difference():
    """The remainder, trial's main 4/2 failure, as -'s column equations, without trial_sub's
    differences for every product (measured worse at equal tokens)."""
    p = Problem("/", 4347, 56)
    right = solution(p, layout="trial_rem")
    assert right == (
        "00/5=0r0,56*0=000,004/56=0r4\n"  # a quotient digit 0: the remainder is cur itself
        "04/5=0r4,56*0=000,043/56=0r43\n"
        # 448 does not fit; 434 - 392 = 042 is the step's remainder
        "43/5=8r3,56*8=448,56*7=392,04-2-0=2,13-9-0=4,04-3-1=0,434/56=7r42\n"
        "42/5=8r2,56*8=448,56*7=392,07-2-0=5,12-9-0=3,04-3-1=0,427/56=7r35\n"
        "A:0077r35\n"
    )
    _assert_checks_and_one_digit_is_aligned(p, right, "trial_rem")
    wrong = {  # each wrong on line 2
        "a false column": right.replace("04-2-0=2,13-9-0=4", "04-2-0=2,13-9-0=5"),
        "a borrow dropped": right.replace("13-9-0=4,04-3-1=0,434", "13-9-0=4,04-3-0=1,434"),
        "the difference of a product that does not fit": right.replace(
            "56*8=448,56*7=392,04-2-0=2,13-9-0=4,04-3-1=0,434",
            "56*8=448,14-8-0=6,13-4-1=8,14-4-1=9,56*7=392,434",
        ),
    }
    _assert_wrong_from_line(p, wrong, 2)
    # Leniency as for the other trial layouts: a line in "trial"'s or "trial_sub"'s form is a
    # right step, so a process reward does not require the differences.
    for other in ("trial", "trial_sub"):
        line = solution(p, layout=other).splitlines()[2]
        assert verify_solution(p, right.replace(right.splitlines()[2], line)), other
    assert quotient_trials(43, 56, "fit") == ["04/5=0r4", "56*0=000"]
    assert quotient_trials(1000, 123, "fit") == [  # a three-digit divisor: four columns
        "10/1=10r0", "123*9=1107", "123*8=0984", "10-4-0=6", "10-8-1=1", "10-9-1=0", "01-0-1=0"
    ]
    assert quotient_trials(434, 56, "fit") == quotient_trials(434, 56, "all")[:1] + [
        "56*8=448", "56*7=392", "04-2-0=2", "13-9-0=4", "04-3-1=0"
    ]


def test_steps_are_right_separates_wrong_steps_from_a_wrong_answer_line():
    p = arithmetic.Problem("+", 347, 285)
    right = arithmetic.solution(p)
    assert arithmetic.steps_are_right(p, right)
    assert arithmetic.steps_are_right(p, right.replace("A:0632", "A:0236"))  # answer misread
    assert arithmetic.steps_are_right(p, right.replace("A:0632\n", ""))  # no answer line
    assert not arithmetic.verify_solution(p, right.replace("A:0632", "A:0236"))
    assert not arithmetic.steps_are_right(p, right.replace("4+8+1=13", "4+8+1=12"))  # false
    assert not arithmetic.steps_are_right(p, right.replace("7+5+0=12\n", ""))  # a column short
    assert not arithmetic.steps_are_right(p, "A:632\n")  # no steps at all
    assert arithmetic.steps_are_right(p, right + "1+1+0=02\n")  # lines after A: are not steps


def test_right_lines_counts_the_lines_right_from_the_first():
    p = arithmetic.Problem("+", 347, 285)
    good = "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:632\n"
    assert arithmetic.right_lines(p, good) == 4
    assert arithmetic.right_lines(p, "7+5+0=12\n4+8+0=12\n3+2+1=06\nA:622\n") == 1  # carry
    assert arithmetic.right_lines(p, "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:633\n") == 3  # answer
    assert arithmetic.right_lines(p, "7+5+0=12\n4+8+1=13\nA:32\n") == 2  # a column short
    assert arithmetic.right_lines(p, "7+5+0=12\n4+8+1=13\n3+2+1=06\n3+2+1=06\nA:1") == 3
    assert arithmetic.right_lines(p, "7+5+0=12\n4+8+1=1") == 1  # cut inside a line
    assert arithmetic.right_lines(p, "A:632\n") == 0
    assert arithmetic.right_lines(p, "") == 0
    rng = random.Random(0)
    cells = [("+", 3, 3), ("-", 4, 4), ("*", 2, 2), ("*", 3, 2), ("/", 4, 1), ("/", 4, 2)]
    for cell, layout in itertools.product(cells, arithmetic.LAYOUTS):
        for _ in range(20):
            q = arithmetic.make_problem(rng, *cell)
            right = solution(q, layout=layout)
            lines = right.split("\n")[:-1]
            assert arithmetic.right_lines(q, right) == len(lines)
            k = rng.randrange(len(lines))
            assert arithmetic.right_lines(q, "\n".join(lines[:k]) + "\n" * (k > 0)) == k
            broken = _corrupt(lines[k], rng) if any(c.isdigit() for c in lines[k]) else "?"
            assert arithmetic.right_lines(q, "\n".join([*lines[:k], broken, *lines[k + 1 :]])) == k


def test_first_wrong_lines_counts_where_rejected_solutions_break():
    from minigpt_jax.tasks.arithmetic.evaluate import first_wrong_lines

    p = Problem("+", 347, 285)
    written = {
        "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:632\n": None,  # right: not counted
        "7+5+0=12\n4+8+0=12\n3+2+1=06\nA:622\n": "2",  # the carry into line 2
        "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:633\n": "answer",  # steps right, answer wrong
        "7+5+0=12\n4+8+1=13\nA:32\n": "3",  # stopped early: the answer where a step was due
        "7+5+0=12\n4+8+1=13\n3+2+1=06\n": "4",  # no answer line
        "7+5+0=12\n\n4+8+1=13\n3+2+1=06\nA:633\n": "2",  # a blank line is a wrong line
        "": "1",
    }
    want = {"1": 1, "2": 2, "3": 1, "4": 1, "answer": 1}
    assert first_wrong_lines([p] * len(written), list(written)) == want
    assert first_wrong_lines([], []) == {}
    # long division in the table layout: line k is the completion's k-th, multiples included
    q = Problem("/", 987654, 7)
    lines = solution(q, layout="table").split("\n")
    for k in (0, 5, 9, 11):
        broken = lines.copy()
        broken[k] = _corrupt(broken[k], random.Random(k))
        assert first_wrong_lines([q], ["\n".join(broken)]) == {str(k + 1): 1}, k
    # keys in line order, numerically, then the answer line
    m = Problem("*", 4321, 57)
    right = solution(m)
    lines = right.split("\n")
    lines[11] = _corrupt(lines[11], random.Random(0))
    read_back = right.replace(f"A:{m.written_answer}", "A:1")
    assert list(first_wrong_lines([m] * 3, [read_back, "\n".join(lines), ""])) == [
        "1", "12", "answer"
    ]


def test_true_step_fraction():
    assert arithmetic.true_step_fraction("7+5+0=12\n4+8+1=13\n3+2+1=06\nA:632\n") == 1.0
    assert arithmetic.true_step_fraction("7+5+0=13\n13-8-1=4\n4*8+5=38\nA:1\n") == 1 / 3
    assert arithmetic.true_step_fraction("24/6=4r0\n=235\n24/6=3r6\nbla\n") == 1 / 3
    assert arithmetic.true_step_fraction("A:632\n") is None
    aligned = solution(Problem("*", 34567, 85), layout="aligned")
    assert arithmetic.true_step_fraction(aligned) == 1.0
    # a line is true when all its equations are: one false product makes the line false
    assert arithmetic.true_step_fraction(aligned.replace("6*8+5=53", "6*8+5=54")) == 6 / 7
    wide = solution(Problem("*", 4567, 987), layout="aligned")  # 4-term column sums
    assert "+" in wide.split("\n")[2].split(",")[-1] and arithmetic.true_step_fraction(wide) == 1.0


def test_verified_vote_prefers_consistent_solutions():
    p = Problem("+", 347, 285)
    right = "7+5+0=12\n4+8+1=13\n3+2+1=06\nA:632\n"
    wrong = "7+5+0=12\n4+8+0=12\n3+2+1=06\nA:622\n"
    assert majority_vote([parse_answer(t) for t in (wrong, wrong, right)]) == "622"
    assert verified_vote(p, [wrong, wrong, right]) == "632"
    assert verified_vote(p, [wrong, wrong, "A:7\n"]) == "622"  # none verify: plain majority


# --- evaluator pieces and end to end -----------------------------------------------------------


def test_evaluate_sets_with_an_oracle_and_a_noisy_sampler():
    """The scoring loop with stand-in samplers whose accuracy is known exactly."""
    from minigpt_jax.tasks.arithmetic.evaluate import (
        evaluate_sets,
        first_wrong_table,
        markdown_table,
    )

    tok = ByteTokenizer()
    problems = [Problem("+", 100 + i, 200 + i) for i in range(8)]
    by_prompt = {tuple(tok.encode(p.prompt)): p for p in problems}

    def sampler(prompts, max_new, temperature, seed):
        out = []
        for row, prompt in enumerate(prompts):
            p = by_prompt[tuple(prompt[1:])]
            text = solution(p)
            if temperature == 0 and p.a == 100:  # greedy: a wrong answer on problem 0
                text = text.replace(f"A:{p.written_answer}", "A:1")
            elif temperature == 0 and p.a == 101:  # the right answer after 1 false step of 3
                first, rest = text.split("\n", 1)
                text = first[:-1] + str((int(first[-1]) + 1) % 10) + "\n" + rest
            # A third of the samples end in a wrong answer, never all of one problem's:
            # rows i, 8+i, 16+i, 24+i are sample k of problem i.
            elif temperature > 0 and (seed + row) % 3 == 0:
                text = text.replace(f"A:{p.written_answer}", "A:1")
            out.append(tok.encode(text)[:max_new])
        return out

    results = evaluate_sets(
        {"heldout": problems},
        sampler,
        tok.encode,
        tok.decode,
        tok.eot_id,
        block_size=256,
        samples=4,
        temperature=0.7,
        batch_size=64,
    )
    cell = results["heldout"]["add 3"]
    assert cell["n"] == 8 and cell["greedy"] == 7 / 8  # problem 0's answer is wrong
    assert cell["greedy_steps_verified"] == 6 / 8  # and problem 1's steps
    assert cell["greedy_true_step_lines"] == pytest.approx((7 + 2 / 3) / 8)
    assert cell["example"] == "100+200\n0+0+0=00\n0+0+0=00\n1+2+0=03\nA:1\n"
    assert cell["sample_accuracy"] == 22 / 32
    assert cell["majority"][1] == 0.75 and cell["verified"][4] == 1.0
    assert cell["greedy_steps_right"] == 7 / 8  # problem 0 has right steps and a wrong answer
    assert "| heldout | add 3 | 8 | 0.958 | 0.875 | 0.875 |" in markdown_table(results, 4)
    # problem 0: every step right, the answer line wrong; problem 1: its first step line
    assert cell["greedy_first_wrong_line"] == {"1": 1, "answer": 1}
    assert "| heldout | add 3 | 2 | 1: 1, answer: 1 |" in first_wrong_table(results)


def test_an_answers_only_model_gets_no_steps_right_figure():
    from minigpt_jax.tasks.arithmetic.evaluate import evaluate_sets, markdown_table

    tok = ByteTokenizer()
    problems = [Problem("+", 100 + i, 200 + i) for i in range(4)]
    by_prompt = {tuple(tok.encode(p.prompt)): p for p in problems}

    def sampler(prompts, max_new, temperature, seed):
        return [tok.encode(solution(by_prompt[tuple(q[1:])], steps=False)) for q in prompts]

    results = evaluate_sets({"heldout": problems}, sampler, tok.encode, tok.decode, tok.eot_id,
                            block_size=64, samples=0, temperature=0.7, batch_size=4)
    cell = results["heldout"]["add 3"]
    assert cell["greedy"] == 1.0 and cell["greedy_steps_right"] is None
    assert cell["greedy_first_wrong_line"] is None  # no steps: not "every one broke at line 1"
    assert "| heldout | add 3 | 4 | - | - | 1.000 |" in markdown_table(results, 0)


def test_select_cells_keeps_the_named_cells_of_every_set_and_names_the_missing_one():
    from minigpt_jax.errors import UserError
    from minigpt_jax.tasks.arithmetic.evaluate import select_cells

    sets = {
        "heldout": [Problem("+", 12345, 67890), Problem("/", 4321, 7), Problem("*", 123, 45)],
        "long": [Problem("*", 1234567890, 7), Problem("+", 10**19 + 5, 10**19 + 6)],
    }
    kept = select_cells(sets, ["div 4/1", "mul 10x1"])
    assert kept == {"heldout": [sets["heldout"][1]], "long": [sets["long"][0]]}
    assert select_cells(sets, ["add 20"]) == {"long": [sets["long"][1]]}  # an emptied set goes
    with pytest.raises(UserError, match=r"--cells: no cell \['add 7'\].*'add 20', 'add 5'"):
        select_cells(sets, ["add 5", "add 7"])


def test_the_decode_budget_is_the_data_layouts_not_a_longer_one():
    from minigpt_jax.tasks.arithmetic.evaluate import budget_tokens, layouts_of

    def manifest(mixture):
        return {"task": {"name": "arithmetic", "mixture": mixture}}

    assert layouts_of(manifest({"layout": "aligned"})) == ("aligned",)
    assert layouts_of(manifest({"op_weights": [1, 0, 0, 0]})) == ("classic",)  # before layouts
    assert layouts_of({}) == arithmetic.LAYOUTS == layouts_of(manifest({"layout": "spiral"}))
    div = [Problem("/", 123456, 78)]
    aligned = budget_tokens(div, 10, 4096, ("aligned",))
    table = budget_tokens(div, 10, 4096, ("table",))
    trial = budget_tokens(div, 10, 4096, ("trial",))
    trial_sub = budget_tokens(div, 10, 4096, ("trial_sub",))
    trial_rem = budget_tokens(div, 10, 4096, ("trial_rem",))
    trial_pad = budget_tokens(div, 10, 4096, ("trial_pad",))
    # the table's 9 lines, the trials, the fitting trials' differences, all of them, then slack
    assert aligned < table and aligned < trial < trial_rem < trial_sub
    assert trial <= trial_pad < trial_rem
    assert max(table, trial_sub) == budget_tokens(div, 10, 4096)
    budgets = {"table": table, "trial": trial, "trial_sub": trial_sub, "trial_rem": trial_rem,
               "trial_pad": trial_pad}
    for layout, budget in budgets.items():
        assert len(solution(div[0], layout=layout)) <= budget


@pytest.mark.slow
def test_tiny_model_trains_and_evaluator_runs(tmp_path):
    from minigpt_jax.config import ConfigError, default_config, model_fields
    from minigpt_jax.tasks.arithmetic.evaluate import main as eval_main
    from minigpt_jax.train import train_and_evaluate

    data = tmp_path / "data"
    mix = arithmetic.Mixture(
        op_weights=(1, 1, 0, 1), addsub_digit_weights=(1, 1), div_dividend_digit_weights=(1, 1)
    )
    arithmetic_data.write_dataset(
        data,
        train_tokens=30_000,
        val_tokens=3_000,
        block_size=64,
        mixture=mix,
        heldout_spec=(("+", 2, 2, 6), ("-", 2, 2, 6), ("/", 2, 1, 6)),
        long_spec=(("+", 3, 3, 4),),
    )
    c = default_config()
    c.model = model_fields("tiny", vocab_size=257, block_size=64, doc_sep_id=256)
    c.data_dir, c.run_dir = str(data), str(tmp_path / "run")
    c.total_steps, c.batch_size, c.block_size = 6, 8, 32
    c.warmup_steps, c.log_every, c.eval_every, c.eval_tokens = 2, 3, 6, 512
    c.lr, c.peak_tflops, c.checkpoint_every = 3e-3, 1.0, 0
    with pytest.raises(ConfigError, match="64-token chunks"):  # windows would cut documents
        train_and_evaluate(c)
    c.block_size = 64
    last = train_and_evaluate(c)
    assert last["step"] == 6 and last["train_loss"] < 5.6

    report = eval_main(
        ["--run_dir", c.run_dir, "--samples", "2", "--max_per_cell", "4", "--batch_size", "4",
         "--fresh", "3"]
    )
    saved = json.loads((tmp_path / "run" / "eval_arithmetic.json").read_text())
    assert saved["step"] == 6 and saved["worked_steps"] is True
    assert set(saved["results"]) == {"heldout", "long", "fresh"}
    assert set(saved["results"]["heldout"]) == {"add 2", "sub 2", "div 2/1"}
    fresh = saved["results"]["fresh"]  # every cell of both sets, greedy only (--sample_sets)
    assert set(fresh) == {"add 2", "sub 2", "div 2/1", "add 3"}
    assert all(r["n"] == 3 and "verified" not in r for r in fresh.values())
    # Greedy accuracy again, by hand: each cell's first 4 problems decoded with `sample` in one
    # batch of 4 (as --batch_size 4 makes the evaluator do) and scored with Python integers.
    from minigpt_jax.checkpoint import load_params
    from minigpt_jax.generate import sample
    from minigpt_jax.tasks.arithmetic.evaluate import load_test_set

    params, record = load_params(c.run_dir)
    tok = ByteTokenizer()
    cells: dict[str, list[Problem]] = {}
    for p in load_test_set(data, "heldout"):
        cells.setdefault(f"{arithmetic.OP_NAMES[p.op]} {p.level}", []).append(p)
    for name, cell in report["results"]["heldout"].items():
        problems = cells[name][:4]
        prompts = [[tok.eot_id, *tok.encode(p.prompt)] for p in problems]
        outs = sample(
            record["model"], params, prompts, cell["max_new_tokens"], temperature=0.0,
            eot_id=tok.eot_id,
        )
        texts = [tok.decode(o) for o in outs]
        truth = [
            {"+": str(p.a + p.b), "-": str(p.a - p.b)}.get(p.op, f"{p.a // p.b}r{p.a % p.b}")
            for p in problems
        ]
        right = sum(parse_answer(t) == a for t, a in zip(texts, truth, strict=True))
        assert cell["n"] == 4 and cell["greedy"] == right / 4, name
        assert cell["example"] == problems[0].prompt + texts[0], name
        assert set(cell["majority"]) == {1, 2} and set(cell["verified"]) == {1, 2}


# --- presets, length sets, length curves (issue 17) --------------------------------------------


def _corrupt(text: str, rng: random.Random) -> str:
    """One digit of the solution changed to another digit."""
    spots = [i for i, c in enumerate(text) if c.isdigit()]
    i = rng.choice(spots)
    return text[:i] + rng.choice([d for d in "0123456789" if d != text[i]]) + text[i + 1 :]


@pytest.mark.parametrize("preset", sorted(arithmetic.PRESETS))
def test_every_length_cell_of_every_preset_checks_and_corruption_fails(preset):
    mix, heldout, long = arithmetic.PRESETS[preset]
    rng = random.Random(0)
    problems = arithmetic.heldout_problems(5, [(*cell[:3], 3) for cell in heldout + long])
    problems += [arithmetic.sample_problem(rng, mix) for _ in range(200)]
    assert set(mix.operand_ranges()) <= {p.op for p in problems}  # every trained op is tested
    if preset in ("default", "long"):
        assert set(mix.operand_ranges()) == set(arithmetic.OPS)  # division is trained and tested
    for p in problems:
        text = solution(p, layout=mix.layout)
        _independent_check(p, text, mix.layout)
        assert check_steps(p, text) == p.answer
        for _ in range(3):
            assert not verify_solution(p, _corrupt(text, rng)), (p, text)


def test_long_preset_tests_trained_twice_and_three_times_the_longest_length():
    mix, heldout, long = arithmetic.PRESETS["long"]
    ranges = mix.operand_ranges()
    assert ranges["+"] == ranges["-"] == ((1, 10), (1, 10))
    for op in arithmetic.OPS:
        a_max = ranges[op][0][1]
        assert a_max in {da for o, da, _, _ in heldout if o == op}
        assert {da for o, da, _, _ in long if o == op} == {2 * a_max, 3 * a_max}
    assert ("*", 3, 2, 100) in heldout and ("/", 4, 1, 100) in heldout  # the targets


def test_long_preset_shards_respect_the_manifest_ranges(tmp_path):
    manifest = arithmetic_data.write_dataset(
        tmp_path, preset="long", train_tokens=60_000, val_tokens=8_192
    )
    ranges = manifest["task"]["operand_ranges"]
    assert ranges["+"] == ranges["-"] == {"a": [1, 10], "b": [1, 10]}
    seen = {op: [0, 0] for op in arithmetic.OPS}
    for shard in manifest["shards"]:
        for doc in _documents(tmp_path / shard["file"]):
            m = re.match(r"^(\d+)([-+*/])(\d+)\n", doc)
            op, a, b = m.group(2), int(m.group(1)), int(m.group(3))
            da, db = len(str(a)), len(str(b))
            assert ranges[op]["a"][0] <= da <= ranges[op]["a"][1], doc
            assert ranges[op]["b"][0] <= db <= ranges[op]["b"][1], doc
            seen[op] = [max(seen[op][0], da), max(seen[op][1], db)]
            # written in the preset's layout, which the manifest records
            problem = Problem(op, a, b)
            assert doc == problem.prompt + solution(problem, layout="aligned"), doc
    assert seen["+"][0] == 10 and seen["*"] == [5, 2]  # the ranges are used, up to their ends
    assert manifest["task"]["mixture"]["layout"] == "aligned"


def test_a_mixture_refuses_op_weights_that_cannot_be_drawn():
    for weights in ((0, 0, 0, 0), (1, -1, 1, 1), (1, float("nan"), 1, 1), (1, 1, 1),
                    (1e308, 1e308, 1e308, 1e308)):
        with pytest.raises(ValueError, match="op_weights"):
            arithmetic.Mixture(op_weights=weights)


def test_op_weights_change_only_how_often_each_operation_is_drawn(tmp_path):
    """`--op_weights` reweights the preset's operations: the shards follow the new weights (here
    / alone), the manifest records them, and the test sets stay the preset's byte for byte, so
    runs on either data are scored on the same problems."""
    argv = ["--preset", "long", "--train_tokens=20000", "--val_tokens=4096", "--block_size=512"]
    arithmetic_data.main(["--out_dir", str(tmp_path / "base"), *argv])
    arithmetic_data.main(["--out_dir", str(tmp_path / "div"), *argv,
                          "--op_weights", "0", "0", "0", "2"])
    manifest = read_manifest(tmp_path / "div")
    assert manifest["task"]["mixture"]["op_weights"] == [0, 0, 0, 2]
    assert set(manifest["task"]["operand_ranges"]) == {"/"}
    assert manifest["task"]["mixture"]["div_dividend_digit_weights"] == list(
        arithmetic.PRESETS["long"][0].div_dividend_digit_weights
    )
    ops = {re.match(r"^\d+([-+*/])", doc).group(1)
           for shard in manifest["shards"] for doc in _documents(tmp_path / "div" / shard["file"])}
    assert ops == {"/"}
    for name in ("test.jsonl", "test_long.jsonl"):
        assert (tmp_path / "div" / name).read_bytes() == (tmp_path / "base" / name).read_bytes()


def test_rl_long_addsub_samples_a_whole_20_digit_solution_with_its_starts_model():
    """The RL config must let a 20-digit solution finish (a cut one scores 0 whatever its steps)
    and build the model of the run it starts from (blocks of 32, coupled ids, no positions)."""
    from minigpt_jax.config import load_config_file, model_config
    from minigpt_jax.tasks.arithmetic.task import parse_max_digits

    cfg = load_config_file(Path(__file__).parents[1] / "configs" / "arithmetic_rl_long_addsub.py")
    longest = max(parse_max_digits(cfg.task_options.max_digits).values())
    big = 10**longest - 1
    thirty = Problem("+", big * 10**10, 1)  # the check's 30-digit cells are cut short (docstring)
    for p in (Problem("+", big, big), Problem("-", big, big // 7)):
        assert len(solution(p)) + 1 <= cfg.max_new_tokens < len(solution(thirty))
    model = model_config(cfg)
    layout = (model.digit_pos_scheme, model.pos_emb, model.digit_pos_doc_block)
    assert layout == ("coupled", "none", 32)


def test_rl_long_div_fits_its_longest_cell_with_the_shifted_model():
    """The ÷ RL config builds the model its docstring's train command trains (the checkpoint it
    starts from) and lets the longest ÷ of its last curriculum cell finish."""
    import ast
    import shlex

    from absl import flags
    from ml_collections import config_flags

    from minigpt_jax.config import load_config_file, model_config
    from minigpt_jax.tasks.arithmetic.task import parse_max_digits

    configs = Path(__file__).parents[1] / "configs"
    cfg = load_config_file(configs / "arithmetic_rl_long_div.py")
    doc = ast.get_docstring(ast.parse((configs / "arithmetic_rl_long_div.py").read_text()))
    command = shlex.split(re.search(r"minigpt_jax\.train .*?run_dir=\S+", doc, re.S)[0])
    at = command.index("--config") + 1
    command[at] = str(configs.parent / command[at])
    argv = ["train", *command[command.index("--config"):]]
    parsed = flags.FlagValues()  # the train command's own flag parser, not the process's flags
    config_flags.DEFINE_config_file("config", None, flag_values=parsed, sys_argv=argv)
    parsed(argv)
    train = parsed.config
    assert model_config(cfg) == model_config(train)
    assert cfg.init_from == f"checkpoint:{train.run_dir}" and cfg.data_dir == train.data_dir
    digits = parse_max_digits(cfg.task_options.max_digits)["/"]
    longest = max(len(solution(Problem("/", 10**digits - 1, b), layout="aligned"))
                  for b in range(10, 100))  # two-digit divisors: the longest steps
    assert longest + 1 <= cfg.max_new_tokens  # 18 digits by two are cut short (docstring)
    assert cfg.max_new_tokens < len(solution(Problem("/", 10**18 - 1, 99), layout="aligned"))


def test_rl_div_branch_builds_its_starts_model_and_fits_a_division_line():
    """The greedy-branch ÷ config builds the model its docstring's second stage trains (with the
    docstring's three flags), starts from that run, and its branch room fits every line of the
    longest ÷ it practises."""
    import ast

    from minigpt_jax.config import load_config_file, model_config

    configs = Path(__file__).parents[1] / "configs"
    cfg = load_config_file(configs / "arithmetic_rl_div_branch.py")
    doc = ast.get_docstring(ast.parse((configs / "arithmetic_rl_div_branch.py").read_text()))
    train = load_config_file(configs / "arithmetic_long_more.py")
    for flag in re.search(r"F='(.*?)'", doc, re.S)[1].split():
        key, value = flag.removeprefix("--config.model.").split("=")
        train.model[key] = ast.literal_eval(value.replace("true", "True"))
    assert model_config(cfg) == model_config(train)
    assert "--config.run_dir=runs/arithmetic_long_more_shift" in doc
    assert cfg.init_from == "checkpoint:runs/arithmetic_long_more_shift"
    assert cfg.rollout_mode == "greedy_branch"
    longest = max(len(line) + 1 for d in range(1, 10)
                  for line in solution(Problem("/", 999_999, d), layout="aligned").split("\n"))
    assert longest <= cfg.branch_tokens  # byte-level: a character is a token


def test_rl_long_all_fits_its_longest_cells_with_the_headline_model():
    """The four-operation RL config builds the headline run's model (the checkpoint it starts
    from) and lets the longest solution of every operation's last curriculum cell finish."""
    from minigpt_jax.config import load_config_file, model_config
    from minigpt_jax.tasks.arithmetic.task import parse_max_digits

    configs = Path(__file__).parents[1] / "configs"
    cfg = load_config_file(configs / "arithmetic_rl_long_all.py")
    assert model_config(cfg) == model_config(load_config_file(configs / "arithmetic_long.py"))
    longest = parse_max_digits(cfg.task_options.max_digits)
    assert set(longest) == set(arithmetic.OPS)
    ranges = arithmetic.PRESETS["long"][0].operand_ranges()
    for op, digits in longest.items():
        b_digits = ranges[op][1][1] if op in "*/" else digits  # x and / keep b's trained length
        problem = Problem(op, 10**digits - 1, 10**b_digits - 1)
        assert len(solution(problem, layout="aligned")) + 1 <= cfg.max_new_tokens, problem


def test_headline_chain_configs_start_where_the_previous_run_writes():
    """configs/arithmetic_long.py -> arithmetic_long_more.py -> arithmetic_rl_long_more.py: each
    starts from the checkpoint the one before writes, with the same model, so the chain's
    commands run in order as the docstrings give them; the RL config is arithmetic_rl_long_all's
    but for where it starts, where it writes and how long it runs."""
    from minigpt_jax.config import load_config_file, model_config

    configs = Path(__file__).parents[1] / "configs"
    head, more, rl, rl_all = (
        load_config_file(configs / f"{name}.py")
        for name in ("arithmetic_long", "arithmetic_long_more", "arithmetic_rl_long_more",
                     "arithmetic_rl_long_all")
    )
    assert more.init_from == f"checkpoint:{head.run_dir}"
    assert rl.init_from == f"checkpoint:{more.run_dir}"
    assert len({model_config(c) for c in (head, more, rl)}) == 1
    assert len({head.run_dir, more.run_dir, rl.run_dir, rl_all.run_dir}) == 4
    changed = {k for k in rl_all.keys() if rl[k] != rl_all[k]}
    assert changed == {"init_from", "run_dir", "total_steps"}


def test_div_trial_config_is_the_headline_model_with_room_for_every_trial_line():
    """configs/arithmetic_long_div_trial.py changes only what the trial layout needs: its longest
    step line, over every two-digit divisor and partial dividend, has no more segments than
    the model tells apart (a longer one would share the last segment id), and its ÷ test
    problems fit the training rows."""
    import jax.numpy as jnp

    from minigpt_jax.config import load_config_file, model_config
    from minigpt_jax.digit_positions import segment_indices

    configs = Path(__file__).parents[1] / "configs"
    cfg = load_config_file(configs / "arithmetic_long_div_trial.py")
    model = model_config(cfg)
    headline = model_config(load_config_file(configs / "arithmetic_long.py"))
    changed = {f for f in model.__dataclass_fields__ if getattr(model, f) != getattr(headline, f)}
    assert changed == {"line_segment_max", "digit_pos_from_left"}
    assert cfg.data_dir == "data/arithmetic_long_div_trial"  # --preset long_div_trial

    def most_segments(texts: list[str]) -> int:  # the model's own segment ids, -1 padding
        width = max(map(len, texts))
        tokens = np.full((len(texts), width), -1, np.int32)
        for row, text in zip(tokens, texts, strict=True):
            row[: len(text)] = np.frombuffer(text.encode(), np.uint8)
        seg_BT, _, _ = segment_indices(
            jnp.asarray(tokens), model.digit_ids, model.newline_ids, model.doc_sep_id
        )
        return int(seg_BT.max())

    lines = [
        ",".join([*quotient_trials(cur, b), f"{cur:03d}/{b}={cur // b}r{cur % b}"])
        for b in range(10, 100) for cur in range(10 * b)
    ]
    assert most_segments(lines) == 51 <= model.line_segment_max
    cells = [cell for cell in arithmetic.PRESETS["long_div_trial"][1] if cell[0] == "/"]
    problems = arithmetic.heldout_problems(20, [(*cell[:3], 20) for cell in cells])
    texts = [solution(p, layout="trial") for p in problems]
    assert most_segments(texts) <= model.line_segment_max
    for p, text in zip(problems, texts, strict=True):
        assert len(p.prompt) + len(text) + 2 <= cfg.block_size, p


def test_arithmetic_long_context_fits_a_30_digit_worked_solution():
    from minigpt_jax.config import load_config_file, model_config

    configs = Path(__file__).parents[1] / "configs"
    cfg = model_config(load_config_file(configs / "arithmetic_long.py"))
    assert cfg.digit_ids == tuple(range(48, 58)) and cfg.pos_emb == "none"
    mixture, heldout, long = arithmetic.PRESETS["long"]
    big = 10**30 - 1
    extremes = [Problem("+", big, big), Problem("-", big, big // 7), Problem("*", big, 99),
                Problem("/", big, 97)]
    test_cells = arithmetic.heldout_problems(3, [(*cell[:3], 2) for cell in long])
    # The headline's layout at 30 digits and on the test cells (to 18/2 for /), with the others
    # that write / no longer than it. The trial layouts do not fit: an 18-digit / by a two-digit
    # divisor can take 1,222 tokens in "trial" (this one, the longest), so a trial-layout
    # headline needs more context.
    fitting = [layout for layout in arithmetic.LAYOUTS if layout not in TRIAL_LAYOUTS]
    written = itertools.chain(
        itertools.product(extremes, [mixture.layout]),
        itertools.product(test_cells, fitting),
    )
    worst = Problem("/", 865555555555555544, 19)
    assert len(worst.prompt) + len(solution(worst, layout="trial")) + 2 > cfg.block_size
    for p, layout in written:  # <eot> ... <eot>
        assert len(p.prompt) + len(solution(p, layout=layout)) + 2 <= cfg.block_size, p


def test_length_curves_and_plot(tmp_path):
    from minigpt_jax.tasks.arithmetic import evaluate

    results = {
        "heldout": {"add 10": {"greedy": 1.0, "verified": {8: 1.0}}, "mul 5x2": {"greedy": 0.9}},
        "long": {"add 30": {"greedy": 0.25, "verified": {8: 0.5}}, "add 20": {"greedy": 0.75},
                 "mul 10x2": {"greedy": 0.5}, "div 12/1": {"greedy": 0.0}},
    }
    # --fresh's set re-measures cells the curves already have: no second point at one length
    curves = evaluate.length_curves({**results, "fresh": {"add 10": {"greedy": 0.5}}}, samples=8)
    assert curves == evaluate.length_curves(results, samples=8)
    for cell in [("+", 20, 20), ("-", 3, 3), ("*", 10, 2), ("/", 12, 1)]:
        assert arithmetic.cell_digits(arithmetic.cell_label(*cell)) == cell
    assert curves["add"]["greedy"] == [(10, 1.0), (20, 0.75), (30, 0.25)]
    assert curves["add"]["verified@8"] == [(10, 1.0), (30, 0.5)]
    assert curves["mul"]["greedy (b: 2 digits)"] == [(5, 0.9), (10, 0.5)]
    assert "| add | greedy | 10: 1.000, 20: 0.750, 30: 0.250 |" in evaluate.curves_table(curves)
    pytest.importorskip("matplotlib")
    evaluate.plot_length_curves(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_training_refuses_digit_and_newline_ids_that_are_not_the_shards(tmp_path):
    """A config's digit/newline ids must be the shards' tokenizer's: the message names the key
    and the helper that makes them."""
    from minigpt_jax.config import ConfigError, default_config, model_fields
    from minigpt_jax.train import check_data

    arithmetic_data.write_dataset(tmp_path, train_tokens=4_096, val_tokens=1_024, block_size=128)
    c = default_config()
    c.model = model_fields(
        "tiny", vocab_size=257, block_size=128, doc_sep_id=256, digit_pos_max=16,
        digit_ids=tuple(range(48, 58)), digit_pos_scheme="coupled", newline_ids=(10,),
    )
    c.data_dir, c.block_size, c.batch_size = str(tmp_path), 128, 4
    assert check_data(c)[0].newline_ids == (10,)
    for key, wrong in (("newline_ids", (13,)), ("digit_ids", tuple(range(49, 59)))):
        c.model[key] = wrong
        with pytest.raises(ConfigError, match=f"model.{key}.*{key[:-4]}_token_ids"):
            check_data(c)
        c.model[key] = (10,) if key == "newline_ids" else tuple(range(48, 58))
    c.model.left_op_ids, c.model.answer_mark_ids = (47,), (58,)  # "/" and ":"
    assert check_data(c)[0].left_op_ids == (47,)
    for key, wrong, helper in (("left_op_ids", (42,), "division_token_ids"),
                               ("answer_mark_ids", (61,), "answer_mark_token_ids")):
        right, c.model[key] = c.model[key], wrong
        with pytest.raises(ConfigError, match=f"model.{key}.*{helper}"):
            check_data(c)
        c.model[key] = right
