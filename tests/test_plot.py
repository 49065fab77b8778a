"""plot.py: figures inspected as objects (lines, labels, scales), never as pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from minigpt_jax import plot  # noqa: E402


def _write_run(run_dir: Path, records: list[dict], batch_size: int = 4, block_size: int = 8):
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps({"batch_size": batch_size, "block_size": block_size})
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def _records(loss0: float) -> list[dict]:
    return [
        {"step": 10, "train_loss": loss0, "lr": 1e-3, "tokens_per_s": 320.0},
        {"step": 20, "train_loss": loss0 / 2, "val_loss": loss0 / 2 + 0.1, "tokens_per_s": 160.0},
        {"step": 30, "train_loss": loss0 / 3, "val_loss": loss0 / 3 + 0.1, "tokens_per_s": 320.0},
    ]


def test_plot_curves_draws_each_named_series_and_saves(tmp_path):
    panels = [
        plot.Panel(
            "a",
            "x",
            "y",
            [plot.Series("one", [1, 2], [3, 4]), plot.Series("two", [1, 2], [4, 5])],
            ylog=True,
        ),
        plot.Panel("b", "n", "acc", [plot.Series("only", [1, 2, 3], [0.1, 0.2, 0.3])], xlog=True),
        plot.Panel("c", "n", "acc", [plot.Series("empty", [], [])]),
    ]
    out = tmp_path / "sub" / "f.png"
    fig = plot.plot_curves(panels, out, ncols=2)
    assert out.stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3  # the fourth grid cell is hidden
    assert [len(ax.get_lines()) for ax in axes] == [2, 1, 0]
    assert [line.get_label() for line in axes[0].get_lines()] == ["one", "two"]
    assert axes[0].get_yscale() == "log" and axes[0].get_xscale() == "linear"
    assert axes[1].get_xscale() == "log"
    assert (axes[1].get_title(), axes[1].get_xlabel(), axes[1].get_ylabel()) == ("b", "n", "acc")


def test_run_curves_tokens_and_training_seconds(tmp_path):
    run = plot.run_curves(_write_run(tmp_path / "r", _records(6.0)))
    assert run.steps == [10, 20, 30] and run.val_steps == [20, 30]
    assert run.tokens == [320.0, 640.0, 960.0]  # step x batch_size x block_size
    # 10 steps of 32 tokens at 320 tok/s = 1 s; then 10 at 160 tok/s = 2 s; then 1 s
    assert run.seconds == pytest.approx([1.0, 3.0, 4.0])
    assert run.val_seconds == pytest.approx([3.0, 4.0])
    assert run.val_loss == pytest.approx([3.1, 2.1])


def test_cli_overlays_runs_on_three_panels(tmp_path):
    a = _write_run(tmp_path / "a" / "run", _records(6.0))
    b = _write_run(tmp_path / "b" / "run", _records(5.0))
    c = _write_run(tmp_path / "c", _records(4.0))
    out = tmp_path / "curves.png"
    fig = plot.main([str(a), str(b), str(c), "--out", str(out)])
    assert out.stat().st_size > 0
    assert [ax.get_xlabel() for ax in fig.axes] == ["step", "tokens", "training seconds"]
    for ax in fig.axes:
        assert len(ax.get_lines()) == 6  # train + val per run
        assert ax.get_yscale() == "log"
        labels = [line.get_label() for line in ax.get_lines()]
        # two runs named "run" are told apart by their paths
        assert labels == [f"{a} train", f"{a} val", f"{b} train", f"{b} val", "c train", "c val"]
        colors = [line.get_color() for line in ax.get_lines()]
        assert colors[0] == colors[1] != colors[2]


def test_cli_bad_run_dir_is_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        plot.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nope/metrics.jsonl not found" in err and err.count("\n") == 1
    bad = _write_run(tmp_path / "bad", [])
    (bad / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(SystemExit):
        plot.main([str(bad)])
    assert "metrics.jsonl:2: not a JSON line" in capsys.readouterr().err


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[plot\]'"):
        plot.plot_curves([plot.Panel("a", "x", "y")])
