"""Hostile input to the commands that use a trained run: evaluate, generate, eval_arithmetic, hf.

Every case runs the command as a user would (its `main(argv)`, in-process; a subprocess where a
pipe matters) and asserts exit status 2, one line on stderr naming the file or flag, no traceback,
and the run directory byte-identical afterwards. One small trained run is shared by all cases;
a case that damages a run damages its own copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, tiny_config, write_random_shards

from minigpt_jax import checkpoint, evaluate, generate, hf, init_from, train
from minigpt_jax.bpe import Tokenizer
from minigpt_jax.errors import ConfigError
from minigpt_jax.generate import pick_tokens
from minigpt_jax.model import GPTConfig
from minigpt_jax.tasks.arithmetic import evaluate as eval_arithmetic
from minigpt_jax.tasks.arithmetic import problems

# --- helpers --------------------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under `root` -> sha256 of its bytes ("dir" for a directory)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a command's main(argv), as the shell would see them."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_error(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"


def assert_fails_cleanly(main, argv: list[str], capsys, watched: Path, *names: str) -> str:
    """The command exits 2 with one line naming `names`, and `watched` is byte-identical."""
    before = tree_digest(watched)
    code, out, err = run_main(main, argv, capsys)
    assert_one_clear_error(code, err, *names)
    assert tree_digest(watched) == before
    return out


@contextlib.contextmanager
def read_only(directory: Path):
    """`directory` unwritable, also for root (which ignores permission bits): chattr +i."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a read-only directory")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)


def write_diverged_checkpoint(run_dir: Path, step: int) -> None:
    """A checkpoint with NaN parameters at `step`, as runs saved before the save-time check did
    (written through Orbax directly, so no check in `RunCheckpoints.save` can stop it)."""
    params, record = checkpoint.load_params(run_dir)
    nan_params = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params)
    ckpts = checkpoint.RunCheckpoints(run_dir, async_save=False)
    try:
        ckpts.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave({"step": np.int32(step), "params": nan_params}),
                config=ocp.args.JsonSave(record["config"]),
                tokenizer=ocp.args.JsonSave(record["tokenizer"] or {}),
            ),
            force=True,
        )
        ckpts.wait()
    finally:
        ckpts.close()


# --- the shared run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A byte-level tiny run with checkpoints at steps 2 and 4 (its data beside it)."""
    root = tmp_path_factory.mktemp("faults_infer")
    data = write_random_shards(root / "data")
    c = tiny_config(
        data, root / "run", tokenizer="byte", total_steps=4, warmup_steps=1, log_every=2,
        eval_every=2, checkpoint_every=2,
    )
    train.train_and_evaluate(c)
    return root / "run"


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the trained run, for cases that damage it."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture(scope="module")
def diverged(trained, tmp_path_factory) -> Path:
    """The trained run with a NaN checkpoint at step 6 after its good ones (2, 4)."""
    run = Path(shutil.copytree(trained, tmp_path_factory.mktemp("diverged") / "run"))
    write_diverged_checkpoint(run, 6)
    return run


@pytest.fixture
def gpt2_tokenizer(gpt2_tiktoken_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_GPT2_TIKTOKEN", str(gpt2_tiktoken_path))


def damaged_tokenizer(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"format": "minigpt_jax')  # cut off mid-write
    return path


# --- evaluate -------------------------------------------------------------------------------------


def _truncate_state(run: Path) -> None:
    for f in (run / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":  # the OCDBT data files
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])


def _break_config_json(run: Path) -> None:
    (run / "checkpoints" / "4" / "config" / "metadata").write_text('{"model": {"n_embd": 6')


def _config_without_a_model(run: Path) -> None:
    path = run / "checkpoints" / "4" / "config" / "metadata"
    saved = json.loads(path.read_text())
    saved["model"]["n_head"] = 3  # n_embd 64 does not split into 3 heads
    path.write_text(json.dumps(saved))


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda run: shutil.rmtree(run / "checkpoints"), "checkpoints"),
        (lambda run: (run / "checkpoints" / "8").mkdir(), "checkpoints/8"),
    ],
    ids=["checkpoints_deleted", "empty_step_dir"],
)
def test_evaluate_damaged_checkpoint(run_copy, capsys, damage, named):
    damage(run_copy)
    assert_fails_cleanly(evaluate.main, ["--run_dir", str(run_copy)], capsys, run_copy, named)


@pytest.mark.parametrize(
    "damage",
    [
        lambda run: shutil.rmtree(run / "checkpoints" / "4" / "state"),
        _truncate_state,
        _break_config_json,
        _config_without_a_model,
    ],
    ids=["state_deleted", "truncated", "config_not_json", "config_no_model"],
)
def test_evaluate_falls_back_from_a_damaged_latest_checkpoint(run_copy, capsys, damage):
    """The checksums recorded at save catch the damage: the latest step is skipped with one
    warning naming it, the previous one is scored, and asking for the damaged step is refused."""
    damage(run_copy)
    before = tree_digest(run_copy)
    code, out, err = run_main(evaluate.main, ["--run_dir", str(run_copy)], capsys)
    assert code == 0 and out.startswith("step 2  loss "), (out, err)
    warning = [line for line in err.splitlines() if "damaged" in line]
    assert len(warning) == 1 and "checkpoints/4" in warning[0] and "step 2" in warning[0], err
    assert "Traceback" not in err
    after = tree_digest(run_copy)
    assert {k: v for k, v in after.items() if k != "eval_step2.json"} == before
    assert_fails_cleanly(
        evaluate.main, ["--run_dir", str(run_copy), "--step", "4"], capsys, run_copy,
        "checkpoints/4",
    )


def test_evaluate_damaged_tokenizer(trained, tmp_path, capsys):
    bad = damaged_tokenizer(tmp_path)
    argv = ["--run_dir", str(trained), "--tokenizer", str(bad)]
    assert_fails_cleanly(evaluate.main, argv, capsys, trained.parent, str(bad))


def test_evaluate_negative_eval_tokens(trained, capsys):
    argv = ["--run_dir", str(trained), "--eval_tokens", "-5"]
    assert_fails_cleanly(evaluate.main, argv, capsys, trained.parent, "--eval_tokens")


def test_evaluate_read_only_run_dir_prints_the_result_first(run_copy, capsys):
    with read_only(run_copy):
        out = assert_fails_cleanly(
            evaluate.main, ["--run_dir", str(run_copy)], capsys, run_copy, "eval_step4.json"
        )
    assert out.startswith("step 4  loss ")  # the result survived the failed write


# --- item 8: the tokenizer must fit the model -----------------------------------------------------


@pytest.mark.parametrize("command", [evaluate.main, generate.main], ids=["evaluate", "generate"])
def test_tokenizer_of_another_size_is_refused(trained, capsys, gpt2_tokenizer, command):
    argv = ["--run_dir", str(trained), "--tokenizer", "gpt2", "--max_new_tokens", "4"]
    if command is evaluate.main:
        argv = argv[:-2]
    assert_fails_cleanly(command, argv, capsys, trained.parent, "--tokenizer gpt2", "257")


def test_tokenizer_of_the_same_size_but_another_hash_is_refused(trained, tmp_path, capsys):
    """A 257-id BPE (bytes + end-of-text, no merges) is not the byte tokenizer the run recorded."""
    same_size = tmp_path / "bpe257.json"
    Tokenizer.train(["some text"], vocab_size=257).save(same_size)
    for command, extra in ((evaluate.main, []), (generate.main, ["--max_new_tokens", "4"])):
        argv = ["--run_dir", str(trained), "--tokenizer", str(same_size), *extra]
        assert_fails_cleanly(command, argv, capsys, trained.parent, str(same_size), "sha256")


def test_the_runs_own_tokenizer_named_explicitly_is_accepted(trained, capsys):
    code, out, err = run_main(
        generate.main,
        ["--run_dir", str(trained), "--tokenizer", "byte", "--max_new_tokens", "4"],
        capsys,
    )
    assert code == 0, err


# --- item 8: sampling never yields a padded id ----------------------------------------------------


@pytest.mark.parametrize("top_k, top_p", [(None, None), (320, None), (None, 1.0), (300, 0.999)])
def test_padded_ids_are_never_sampled(top_k, top_p):
    """The byte model's 257 ids padded to 320: ids 257..319 are never picked, even when their
    logits are the largest and the temperature is degenerate."""
    vocab, padded, rows = 257, 320, 1024
    key_logits, key_pick = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(key_logits, (rows, padded))
    logits = logits.at[:, vocab:].set(50.0)  # the padded ids would win everything
    pick = jax.jit(pick_tokens, static_argnames=("vocab_size", "greedy"))
    for temperature in (1.0, 1e-30, 1e30, float("inf"), float("nan"), 0.0):
        for greedy in (False, True):
            ids = np.asarray(pick(logits, key_pick, vocab, temperature, top_k, top_p,
                                  greedy=greedy))
            assert ids.shape == (rows,)
            assert ids.max() < vocab and ids.min() >= 0, (temperature, greedy)
    # At temperature inf every real id is equally likely: the mask removed only the padded ones.
    sampled = np.asarray(pick(logits, key_pick, vocab, float("inf"), top_k, top_p))
    assert len(set(sampled.tolist())) > 200


@pytest.mark.parametrize("temperature", ["nan", "inf", "-1"])
def test_generate_refuses_a_degenerate_temperature(trained, capsys, temperature):
    argv = ["--run_dir", str(trained), "--temperature", temperature, "--max_new_tokens", "4"]
    assert_fails_cleanly(generate.main, argv, capsys, trained.parent, "temperature")


# --- item 6: a diverged checkpoint is never scored or sampled -------------------------------------


def test_evaluate_skips_a_diverged_latest_checkpoint(diverged, capsys):
    code, out, err = run_main(evaluate.main, ["--run_dir", str(diverged)], capsys)
    assert code == 0, err
    assert out.startswith("step 4  loss ")
    assert "nan" not in (out + err).lower()
    note = err.strip().splitlines()
    assert len(note) == 1 and "step 6" in note[0] and "using step 4" in note[0]
    assert not (diverged / "eval_step6.json").exists()
    assert json.loads((diverged / "eval_step4.json").read_text())["step"] == 4


@pytest.mark.parametrize("command", [evaluate.main, generate.main], ids=["evaluate", "generate"])
def test_a_diverged_step_asked_for_is_refused(diverged, capsys, command):
    argv = ["--run_dir", str(diverged), "--step", "6"]
    out = assert_fails_cleanly(command, argv, capsys, diverged, "checkpoints/6", "2, 4")
    assert "nan" not in out.lower()


def test_generate_on_a_diverged_run_prints_no_nul_bytes(diverged, capsys):
    argv = ["--run_dir", str(diverged), "--prompt", "a", "--max_new_tokens", "16",
            "--temperature", "1.0", "--num_samples", "4"]
    code, out, err = run_main(generate.main, argv, capsys)
    assert code == 0, err
    assert "(step 4)" in out and "using step 4" in err
    assert "\x00" not in out


# --- generate into a closed pipe ------------------------------------------------------------------


def test_generate_piped_into_head_exits_quietly(trained):
    """`generate | head -1`: the reader takes one line and closes the pipe; the rest of the
    output (far more than a pipe buffer) then meets a closed pipe."""
    prompt = "line\n" * 30_000  # echoed back: 150 KB, more than any pipe buffer
    proc = subprocess.Popen(
        [sys.executable, "-m", "minigpt_jax.generate", "--run_dir", str(trained),
         "--prompt", prompt[:100_000], "--max_new_tokens", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"},
    )
    assert proc.stdout.readline() == b"line\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert proc.returncode == 141, err  # 128 + SIGPIPE, as `yes | head -1` reports


# --- eval_arithmetic ------------------------------------------------------------------------------


@pytest.fixture
def arithmetic_dir(tmp_path) -> Path:
    """Two held-out problems, short enough for the tiny run's 32-token context."""
    rng = random.Random(0)
    d = tmp_path / "arith"
    d.mkdir()
    lines = [json.dumps(problems.make_problem(rng, "+", 1, 1).to_json()) for _ in range(2)]
    (d / "test.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.mark.parametrize(
    "flag, value", [("--batch_size", "0"), ("--temperature", "-1"), ("--samples", "-1"),
                    ("--temperature", "nan"), ("--cells", "mul 9x9"),
                    ("--cells", " , "), ("--fresh", "-1"), ("--first_tokens", "-1"),
                    ("--fresh", "5")]  # a data dir of test files only: what to avoid is unknown
)
def test_eval_arithmetic_bad_flags(trained, arithmetic_dir, capsys, flag, value):
    argv = ["--run_dir", str(trained), "--data_dir", str(arithmetic_dir), "--sets", "heldout",
            flag, value]
    assert_fails_cleanly(eval_arithmetic.main, argv, capsys, trained.parent, flag)


def test_eval_arithmetic_empty_test_set(trained, arithmetic_dir, capsys):
    (arithmetic_dir / "test.jsonl").write_text("")
    argv = ["--run_dir", str(trained), "--data_dir", str(arithmetic_dir), "--sets", "heldout"]
    assert_fails_cleanly(eval_arithmetic.main, argv, capsys, trained.parent, "test.jsonl")


def test_eval_arithmetic_unwritable_out_keeps_the_printed_table(
    trained, arithmetic_dir, tmp_path, capsys
):
    out_path = tmp_path / "missing_dir" / "eval.json"
    argv = ["--run_dir", str(trained), "--data_dir", str(arithmetic_dir), "--sets", "heldout",
            "--samples", "0", "--batch_size", "2", "--out", str(out_path)]
    before = tree_digest(trained.parent)
    code, out, err = run_main(eval_arithmetic.main, argv, capsys)
    assert code == 2
    # the results were printed before the write: the main table, not only the first-wrong-line one
    assert "| set | problem | n |" in out and "| heldout | add 1 | 2 |" in out
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(out_path) in error_lines[0]
    assert "Traceback" not in err
    assert tree_digest(trained.parent) == before
    assert not out_path.parent.exists()


# --- hf -------------------------------------------------------------------------------------------


def _hf_dir_with_heads(tmp_path: Path, n_head: int) -> Path:
    d = tmp_path / "hf_model"
    d.mkdir()
    cfg = hf.hf_config_dict(GPTConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2,
                                      n_embd=64))
    cfg["n_head"] = n_head
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_hf_import_heads_that_do_not_divide_the_width(tmp_path, capsys):
    src = _hf_dir_with_heads(tmp_path, n_head=3)
    run = tmp_path / "imported"
    assert_fails_cleanly(
        hf.main, ["import", str(src), "--run_dir", str(run)], capsys, tmp_path,
        str(src / "config.json"), "n_head",
    )
    assert not run.exists()


def test_init_from_hf_heads_that_do_not_divide_the_width(tmp_path):
    src = _hf_dir_with_heads(tmp_path, n_head=3)
    target = GPTConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=64)
    with pytest.raises(ConfigError, match="n_head=3") as e:
        init_from.load_init_params(f"hf:{src}", target)
    assert str(src / "config.json") in str(e.value)


def test_hf_export_step_not_a_number(trained, tmp_path, capsys):
    out = tmp_path / "exported"
    argv = ["export", "--run_dir", str(trained), "--step", "abc", "--out_dir", str(out)]
    assert_fails_cleanly(hf.main, argv, capsys, trained.parent, "'abc'")
    assert not out.exists()


@pytest.fixture
def exported(trained, tmp_path) -> Path:
    return hf.export_run(str(trained), str(tmp_path / "exported"))


def test_hf_import_like_run_with_bad_json(exported, tmp_path, capsys):
    like = tmp_path / "like"
    like.mkdir()
    (like / "config.json").write_text('{"data_dir": ')
    run = tmp_path / "imported"
    argv = ["import", str(exported), "--run_dir", str(run), "--like_run", str(like)]
    assert_fails_cleanly(hf.main, argv, capsys, like, str(like / "config.json"))
    assert not run.exists()


def test_hf_import_damaged_tokenizer(exported, tmp_path, capsys):
    bad = damaged_tokenizer(tmp_path)
    run = tmp_path / "imported"
    argv = ["import", str(exported), "--run_dir", str(run), "--tokenizer", str(bad)]
    assert_fails_cleanly(hf.main, argv, capsys, exported, str(bad))
    assert not run.exists()
