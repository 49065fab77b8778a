"""bench/train_step.py's bookkeeping: result parsing, the trainer's tokens/s, medians and ratios."""

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "train_step_bench", Path(__file__).resolve().parent.parent / "bench" / "train_step.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_parse_result_finds_the_one_tagged_line_among_noise():
    out = 'compiling...\nW0101 some warning\nBENCH_RESULT {"tokens_per_s": 123.5}\nbye\n'
    assert bench.parse_result(out) == {"tokens_per_s": 123.5}
    with pytest.raises(ValueError, match="expected one"):
        bench.parse_result("no result here\n")
    with pytest.raises(ValueError, match="got 2"):
        bench.parse_result("BENCH_RESULT {}\nBENCH_RESULT {}\n")


def test_trainer_rate_drops_warm_up_and_weights_by_time():
    records = [
        {"step": 5, "tokens_per_s": 10.0},  # compile and warm-up: left out
        {"step": 10, "tokens_per_s": 1000.0},  # 5 steps x 100 tokens in 0.5 s
        {"step": 20, "tokens_per_s": 500.0},  # 10 steps x 100 tokens in 2 s
    ]
    # 1500 tokens in 2.5 s, not the mean of the rates (750) nor their median
    assert bench.trainer_tokens_per_s(records, 100) == pytest.approx(600.0)
    with pytest.raises(ValueError, match="at least two"):
        bench.trainer_tokens_per_s(records[:1], 100)


def test_summarize_medians_spread_mfu_and_ratio():
    samples = {
        "trainer": [{"tokens_per_s": t, "compile_s": None} for t in (900.0, 1100.0, 1000.0)],
        "torch_eager": [{"tokens_per_s": t} for t in (480.0, 520.0, 500.0)],
        "torch_compile": [{"tokens_per_s": 800.0, "compile_s": c} for c in (30.0, 5.0, 5.0)],
    }
    rows = bench.summarize(samples, flops_per_token=1e6, peak_flops=2e9)
    t = rows["trainer"]
    assert (t["tokens_per_s"], t["tokens_per_s_min"], t["tokens_per_s_max"]) == (1000, 900, 1100)
    assert t["rounds"] == 3 and "compile_s" not in t
    assert t["gflops"] == pytest.approx(1.0) and t["mfu"] == pytest.approx(0.5)
    assert t["over_torch_eager"] == pytest.approx(2.0)
    assert rows["torch_eager"]["over_torch_eager"] == pytest.approx(1.0)
    assert rows["torch_compile"]["compile_s"] == [30.0, 5.0, 5.0]
    table = bench.markdown_table(rows)
    assert "| trainer | 1,000 (900–1,100) | 1.0 | 50.0% | 2.00× | – | – |" in table
    assert "| torch_compile | 800 (800–800) | 0.8 | 40.0% | 1.60× | – | 30, 5, 5 |" in table
    json.dumps(rows)  # the --json output is plain JSON


def test_summarize_without_baseline_has_no_ratio():
    rows = bench.summarize({"jax_step": [{"tokens_per_s": 10.0}]}, 1.0, 10.0)
    assert not any(k.startswith("over_") for k in rows["jax_step"])
    assert "| jax_step | 10 (10–10) | 0.0 | 100.0% | – | – | – |" in bench.markdown_table(rows)


def test_cpu_seconds_per_step_leave_out_the_warm_up_and_take_the_median():
    records = [
        {"step": 5, "cpu_minutes": 1.0},  # start-up and compile: left out
        {"step": 10, "cpu_minutes": 1.5},
        {"step": 25, "cpu_minutes": 2.0},  # 60 CPU s over 20 steps
    ]
    assert bench.trainer_cpu_s_per_step(records) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="at least two"):
        bench.trainer_cpu_s_per_step(records[:1])
    runs = [{"tokens_per_s": 1.0, "cpu_s_per_step": c} for c in (0.5, 0.2, 0.3)]
    rows = bench.summarize({"trainer/hugepages": runs}, 1.0, 10.0)
    assert rows["trainer/hugepages"]["cpu_s_per_step"] == pytest.approx(0.3)
    assert "| trainer/hugepages | 1 (1–1) | 0.0 | 10.0% | – | 0.300 | – |" in bench.markdown_table(
        rows
    )


def test_rows_take_environment_levers_anywhere_and_step_levers_on_the_bare_step_only():
    assert bench.parse_row("trainer") == ("trainer", None)
    assert bench.parse_row("trainer/hugepages") == ("trainer", "hugepages")
    assert bench.parse_row("torch_eager/hugepages") == ("torch_eager", "hugepages")
    assert bench.parse_row("jax_step/flat_adam") == ("jax_step", "flat_adam")
    assert bench.LEVERS["hugepages"]["env"] == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    with pytest.raises(ValueError, match="only jax_step/flat_adam"):
        bench.parse_row("trainer/flat_adam")
    with pytest.raises(ValueError, match="unknown row 'jax_step/nope'"):
        bench.parse_row("jax_step/nope")
    with pytest.raises(ValueError, match="unknown row 'gpu'"):
        bench.parse_row("gpu")
    with pytest.raises(ValueError, match="unknown row 'trainer/'"):
        bench.parse_row("trainer/")


def test_rows_without_the_lever_run_without_huge_pages_whatever_the_shell_exported(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    assert bench._env({})["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    lever = bench.LEVERS["hugepages"]["env"]
    # the lever row keeps the shell's other tunables: the rows differ by the lever alone
    assert bench._env(lever)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert "GLIBC_TUNABLES" not in bench._env({})
    assert bench._env(lever)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_gpu_checks_train_step_runner_imports_and_times_the_trainers_step(monkeypatch):
    """bench/gpu_check.py's train_step part imports `jax_runner` as below; it runs on any device."""
    from minigpt_jax.model import GPTConfig

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    from train_step import jax_runner

    run = jax_runner(GPTConfig.preset("tiny", block_size=16), batch=2, block=16, loss_chunks=0)
    assert 0 < run(1) and 0 < run(2)
