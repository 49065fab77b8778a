"""HellaSwag scoring: a model with a known preference picks what it should, and the batched, padded,
jitted scores equal a plain numpy recomputation from each row's own logits."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from minigpt_jax import evaluate, hellaswag
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.tokenizer import ByteTokenizer

FIXTURE = Path(__file__).parent / "data" / "hellaswag_mini.jsonl"
CFG = GPTConfig.preset("tiny", vocab_size=257)  # a 64-byte context
LONG = GPTConfig.preset("tiny", vocab_size=257, block_size=256)  # fits every fixture row

# A byte model that ignores its input: logit 5 for "a", 4 for " ", 0 for every other byte. Its
# loss per token is lower for "a" than for " ", and far higher for anything else.
UNIGRAM_LOGITS = {ord("a"): 5.0, ord(" "): 4.0}
# (endings, label): the pick by summed loss favours short endings, the mean does not.
PREFERENCE = [
    (["a", "aaaaaaaaaa", "b", "bbbb"], 0),  # sum: " a"; mean: " aaaaaaaaaa" (more a per space)
    (["xyz", "aaaa", "zz", "qqqqq"], 1),  # both: " aaaa"
    (["bb", "cc", "ab", "dd"], 2),  # both: " ab"
    (["a", "b", "c", "ccc"], 3),  # both: " a", which is not the label
]


def unigram_params() -> dict:
    params = GPT(CFG).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    params = jax.tree.map(np.array, params)
    params["ln_f"]["scale"][:] = 0.0  # the final features are ln_f's bias alone: e_0
    params["ln_f"]["bias"][:] = 0.0
    params["ln_f"]["bias"][0] = 1.0
    wte = params["wte"]["embedding"]
    wte[:, 0] = 0.0  # logits = wte[:, 0] through the tied head
    for token, logit in UNIGRAM_LOGITS.items():
        wte[token, 0] = logit
    return params


def write_examples(path: Path, items) -> Path:
    lines = [
        json.dumps({"ctx": "The cat sat on the mat.", "endings": endings, "label": label})
        for endings, label in items
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fixture_is_in_the_original_format():
    examples = hellaswag.load_examples(str(FIXTURE))
    assert len(examples) == 6 and all(len(e.endings) == 4 for e in examples)
    assert [e.label for e in examples] == [2, 0, 1, 3, 0, 2]


def test_a_model_that_prefers_a_scores_as_expected(tmp_path):
    examples = hellaswag.load_examples(str(write_examples(tmp_path / "p.jsonl", PREFERENCE)))
    scores = hellaswag.score_examples(
        CFG, unigram_params(), ByteTokenizer(), examples, batch_size=3, progress=False
    )
    assert scores["sum_loss"].argmin(axis=1).tolist() == [0, 1, 2, 0]
    assert scores["mean_loss"].argmin(axis=1).tolist() == [1, 1, 2, 0]
    assert (scores["n"], scores["acc"], scores["acc_norm"]) == (4, 0.75, 0.5)
    # " a" costs the loss of a space plus that of an "a" (context tokens never count)
    cost = {t: np.log(np.exp(5) + np.exp(4) + 255) - x for t, x in UNIGRAM_LOGITS.items()}
    assert scores["sum_loss"][0, 0] == pytest.approx(cost[ord(" ")] + cost[ord("a")], rel=1e-5)


def _numpy_scores(params, examples, tok):
    """The loss of every ending token from the logits before it, row by row in numpy. One forward
    pass over all rows, right-padded: causal attention keeps padding out of earlier logits."""
    rows = [tok.encode(e.ctx) + tok.encode(" " + x) for e in examples for x in e.endings]
    padded = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for r, row in enumerate(rows):
        padded[r, : len(row)] = row
    all_logits = np.asarray(GPT(LONG).apply({"params": params}, padded))[..., :257]
    sums = np.zeros((len(examples), 4))
    means = np.zeros((len(examples), 4))
    for i, ex in enumerate(examples):
        for j, ending in enumerate(ex.endings):
            row = rows[i * 4 + j]
            logits = all_logits[i * 4 + j, : len(row)].astype(np.float64)
            top = logits.max(-1, keepdims=True)
            logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
            first = len(row) - len(tok.encode(" " + ending))  # the first ending token
            losses = [-logp[t - 1, row[t]] for t in range(first, len(row))]
            sums[i, j], means[i, j] = sum(losses), np.mean(losses)
    return sums, means


def test_scores_match_numpy_from_logits():
    tok = ByteTokenizer()
    params = GPT(LONG).init(jax.random.key(3), np.zeros((1, 4), np.int32))["params"]
    examples = hellaswag.load_examples(str(FIXTURE))
    # batch of 4: the second batch is padded with copies of the last example
    scores = hellaswag.score_examples(LONG, params, tok, examples, batch_size=4, progress=False)
    sums, means = _numpy_scores(params, examples, tok)
    np.testing.assert_allclose(scores["sum_loss"], sums, rtol=1e-4)
    np.testing.assert_allclose(scores["mean_loss"], means, rtol=1e-4)
    labels = np.array([e.label for e in examples])
    assert scores["acc"] == np.mean(sums.argmin(1) == labels)
    assert scores["acc_norm"] == np.mean(means.argmin(1) == labels)
    assert scores["cropped_rows"] == 0 and scores["seq_len"] == 128


def test_rows_longer_than_the_context_are_cropped_not_refused():
    params = GPT(CFG).init(jax.random.key(3), np.zeros((1, 4), np.int32))["params"]
    examples = hellaswag.load_examples(str(FIXTURE))
    scores = hellaswag.score_examples(CFG, params, ByteTokenizer(), examples, progress=False)
    assert scores["seq_len"] == 64 and scores["cropped_rows"] == 24
    assert np.isfinite(scores["mean_loss"]).all()


def test_long_rows_lose_context_from_the_left():
    tokens, mask = hellaswag.pack_rows([([1, 2, 3, 4, 5], [[6, 7], [8], [9, 9, 9], [1]])], 4)
    assert tokens.tolist() == [[4, 5, 6, 7], [3, 4, 5, 8], [5, 9, 9, 9], [3, 4, 5, 1]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    tokens, mask = hellaswag.pack_rows([([1], [[2], [3, 4], [5], [6]])], 4)
    assert tokens[1].tolist() == [1, 3, 4, 0] and mask[1].tolist() == [0, 1, 1, 0]


def test_datasets_path_reads_a_local_dataset_directory(tmp_path, monkeypatch):
    """The hub path (`datasets.load_dataset(name, split="validation")`) on a local stand-in:
    a dataset directory whose validation file has the hub's string labels."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    local = tmp_path / "hellaswag"
    local.mkdir()
    (local / "validation.jsonl").write_text(
        "".join(json.dumps({**r, "label": str(r["label"])}) + "\n" for r in rows)
    )
    assert hellaswag.load_examples(str(local)) == hellaswag.load_examples(str(FIXTURE))


def test_bad_data_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "x", "endings": ["a", "b"], "label": 0}\n')
    with pytest.raises(hellaswag.HellaSwagError, match=r"bad.jsonl:1: 2 endings"):
        hellaswag.load_examples(str(bad))
    with pytest.raises(hellaswag.HellaSwagError, match="no such file"):
        hellaswag.load_examples(str(tmp_path / "missing.jsonl"))


def test_cli_scores_hf_weights_and_runs_alike(tmp_path, capsys):
    from minigpt_jax.hf import import_as_run, save_hf_gpt2

    data = str(write_examples(tmp_path / "p.jsonl", PREFERENCE))
    hf_dir = save_hf_gpt2(CFG, unigram_params(), tmp_path / "hf")
    run_dir = import_as_run(str(hf_dir), tmp_path / "run")
    for flag, where in (("--hf_dir", hf_dir), ("--run_dir", run_dir)):
        evaluate.main(["--task", "hellaswag", flag, str(where), "--task_data", data])
        result = json.loads((where / "eval_hellaswag.json").read_text())
        assert (result["n"], result["acc"], result["acc_norm"]) == (4, 0.75, 0.5), flag
    assert "acc 0.7500  acc_norm 0.5000  n 4" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--task", "hellaswag", "--hf_dir", str(hf_dir), "--run_dir", str(run_dir)])
    assert e.value.code == 2
