"""Test-time training: the batch it trains on, that it learns its examples on a copy of the
parameters, and the arithmetic evaluator's bookkeeping with stand-in samplers."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import assert_one_line_error

from minigpt_jax import ttt
from minigpt_jax.tasks.arithmetic import Problem, solution
from minigpt_jax.tokenizer import ByteTokenizer


def test_sft_batch_counts_only_the_completion():
    batch = ttt.sft_batch([([9, 1, 2], [3, 9]), ([9, 4], [5])], length=4, pad_id=9)
    np.testing.assert_array_equal(batch["inputs"], [[9, 1, 2, 3], [9, 4, 5, 9]])
    np.testing.assert_array_equal(batch["targets"], [[1, 2, 3, 9], [4, 5, 9, 9]])
    np.testing.assert_array_equal(batch["weights"], [[0, 0, 1, 1], [0, 1, 0, 0]])


def test_test_time_training_learns_its_examples_on_a_copy():
    from minigpt_jax.generate import sample
    from minigpt_jax.model import GPT, GPTConfig

    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=257, block_size=32)
    params = GPT(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    before = jax.tree.map(np.array, params)
    tok = ByteTokenizer()
    examples = [([256, *tok.encode(q)], [*tok.encode(a), 256]) for q, a in
                (("ab\n", "7\n"), ("cd\n", "42\n"))]
    new = ttt.test_time_train(cfg, params, examples, steps=60, lr=1e-2, batch_size=2, pad_id=256)
    outs = sample(cfg, new, [p for p, _ in examples], 8, temperature=0.0, eot_id=256)
    assert [tok.decode(o) for o in outs] == ["7\n", "42\n"]
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))  # the original params are untouched
    unchanged = ttt.test_time_train(cfg, params, [], steps=5, lr=1e-2, batch_size=2, pad_id=256)
    assert unchanged is params


def test_ttt_cell_keeps_only_verified_samples_and_reports_transfer():
    from minigpt_jax.tasks.arithmetic.evaluate import ttt_cell

    tok = ByteTokenizer()
    problems = [Problem("+", 100 + i, 200 + i) for i in range(8)]
    by_prompt = {tuple(tok.encode(p.prompt)): p for p in problems}
    trained_on = []

    def wrong(p):
        return solution(p).replace(f"A:{p.written_answer}", "A:1")

    def make_sample_fn(params):
        def sample_fn(prompts, max_new, temperature, seed):
            out = []
            for row, prompt in enumerate(prompts):
                p = by_prompt[tuple(prompt[1:])]
                if params == "before":
                    # greedy always wrong; sampled: problems 0-3 right once in 4 (rows of
                    # sample k are k*8 + i), problems 4-7 never
                    good = temperature > 0 and p.a < 104 and (seed + row) // 8 % 4 == 0
                    text = solution(p) if good else wrong(p)
                else:  # after training: right except problem 7
                    text = wrong(p) if p.a == 107 else solution(p)
                out.append(tok.encode(text)[:max_new])
            return out

        return sample_fn

    def train_fn(examples):
        trained_on.extend(examples)
        return "after"

    r = ttt_cell(problems, make_sample_fn, "before", train_fn, tok.encode, tok.decode,
                 tok.eot_id, samples=4, temperature=0.7, seed=0, batch_size=64, max_new=64)
    assert r["greedy"] == 0.0 and r["verified@4"] == 4 / 8
    assert r["problems_with_a_verified_sample"] == 4 and r["ttt_examples"] == 4
    assert all(tok.decode(c[:-1]) == solution(by_prompt[tuple(p[1:])]) for p, c in trained_on)
    assert r["ttt_greedy"] == 7 / 8 and r["ttt_greedy_transfer"] == 3 / 4
    assert r["greedy_transfer_before"] == 0.0


def test_ttt_cells_must_name_a_cell(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.eval_arithmetic", "--run_dir", str(tmp_path),
         "--ttt_cells", " , ", "--samples", "4"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "--ttt_cells", "names no cell")
    assert list(tmp_path.iterdir()) == []


def test_ttt_flags_need_samples(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.eval_arithmetic", "--run_dir", str(tmp_path),
         "--ttt_cells", "hardest", "--samples", "0"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "--ttt_cells", "--samples")


@pytest.mark.parametrize("flag", ["--ttt_steps=0", "--ttt_lr=0", "--ttt_batch=0"])
def test_ttt_flags_must_be_positive(tmp_path, flag):
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.eval_arithmetic", "--run_dir", str(tmp_path),
         "--ttt_cells", "hardest", flag],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, flag.split("=")[0])
