"""bench/speedrun.py --quick end to end: real runs, then the table, the JSON and the plot."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO


def _speedrun():
    spec = importlib.util.spec_from_file_location("speedrun", REPO / "bench" / "speedrun.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["speedrun"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_crossing_interpolates_and_never_extrapolates():
    speedrun = _speedrun()
    xs, ys = [100, 200, 300], [3.0, 2.0, 1.0]
    assert speedrun.crossing(xs, ys, 1.5) == pytest.approx(250)
    assert speedrun.crossing(xs, ys, 0.5) is None  # never reached
    assert speedrun.crossing(xs, ys, 5.0) == 100  # below target from the first point
    assert speedrun.value_at(xs, ys, 150) == pytest.approx(2.5)
    assert speedrun.value_at(xs, ys, 301) is None


def test_lr_sweep_on_first_seed_then_other_seeds_at_its_best_lr(monkeypatch, tmp_path):
    speedrun = _speedrun()
    recipe = speedrun._recipe()
    trained = []

    def fake_train(v, lr, seed, task, data_dir, out_dir):
        trained.append((v.name, lr, seed))
        return dict(name=f"{v.name}/{lr}/{seed}", variant=v.name, lr=lr, seed=seed,
                    run_dir=tmp_path / f"{v.name}_{lr}_{seed}")

    final = {1e-3: 2.5, 2e-3: 2.0, 4e-3: 2.2}
    monkeypatch.setattr(speedrun, "_train", fake_train)
    monkeypatch.setattr(speedrun, "_final_val_loss",
                        lambda run_dir: final[float(run_dir.name.split("_")[1])])
    v = recipe.Variant("x", lrs=(1e-3, 2e-3, 4e-3), seeds=(0, 1, 2))
    runs = speedrun.run_all([v], speedrun.QUICK, tmp_path, tmp_path)
    assert trained == [("x", 1e-3, 0), ("x", 2e-3, 0), ("x", 4e-3, 0), ("x", 2e-3, 1),
                       ("x", 2e-3, 2)]
    assert len(runs) == 5


def test_train_only_trains_exactly_the_named_variants(monkeypatch, tmp_path):
    speedrun = _speedrun()
    seen = []
    monkeypatch.setattr(speedrun, "prepare_data", lambda out_dir, classics, max_bytes: tmp_path)
    monkeypatch.setattr(speedrun, "run_all",
                        lambda variants, *a: seen.append([v.name for v in variants]) or {})
    assert speedrun.main(["--only", "best-stack+muon", "--train_only", "--out_dir",
                          str(tmp_path)]) == {}
    assert seen == [["best-stack+muon"]]  # the baseline is not added, nothing analysed


@pytest.mark.slow
def test_quick_mode_writes_table_json_and_plot(shared_data, tmp_path):
    speedrun = _speedrun()
    out = tmp_path / "speedrun"
    # --quick's two variants and data, trained 4 steps (of its 24) each: the pipeline is under test.
    argv = ["--quick", "--tokens", str(4 * 8 * 256), "--out_dir", str(out),
            "--classics", str(shared_data / "classics")]
    results = speedrun.main(argv)
    for name in ("results.json", "results.md", "curves.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["variants"]) == {"gpt2", "best-stack+muon"}
    assert saved["task"]["steps"] == 4 and saved["task"]["max_train_bytes"] == 1_000_000
    base = saved["variants"]["gpt2"]
    assert base["tokens_ratio"] == 1.0  # the target is the baseline's own final loss
    for row in saved["variants"].values():
        for key in ("final_val_loss", "tokens_to_baseline", "tokens_ratio", "flops_ratio",
                    "seconds_ratio", "val_loss_at_baseline_seconds", "params", "tokens_per_s",
                    "best_lr", "flops_per_token"):
            assert key in row
        assert 0 < row["final_val_loss"] < 5.6  # below ln 257: the runs learned
    modern = saved["variants"]["best-stack+muon"]
    assert modern["params"] != base["params"]  # untied head in, position table and biases out
    # The val documents were never trained on.
    train = (out / "train.jsonl").read_text().splitlines()
    val = set((out / "val.jsonl").read_text().splitlines())
    assert val and not val & set(train)
    table = (out / "results.md").read_text()
    assert "| gpt2 |" in table and "| best-stack+muon |" in table
    assert results["target_val_loss"] == base["final_val_loss"]
