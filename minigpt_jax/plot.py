"""`python -m minigpt_jax.plot RUN_DIR [RUN_DIR ...] --out curves.png`

The one plotting module. `plot_curves` draws panels of named series and returns the matplotlib
Figure (tests count its lines and read its labels instead of looking at pixels); benches and eval
scripts build their own `Panel`s and call it. The CLI reads each run's metrics.jsonl and overlays
train and val loss against steps, tokens and training seconds.

Figures are drawn on `matplotlib.figure.Figure` directly, never through pyplot: no global figure
state, no GUI backend, nothing to close.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minigpt_jax.files import read_jsonl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class PlotError(ValueError):
    """A run directory or metrics file that cannot be plotted; the message names it."""


@dataclass(frozen=True)
class Series:
    """One named line. `color` ties the series of one run together across panels."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str | None = None
    linestyle: str = "-"
    marker: str | None = None


@dataclass(frozen=True)
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: Sequence[Series] = field(default_factory=tuple)
    xlog: bool = False
    ylog: bool = False


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib: pip install -e '.[plot]' in the checkout "
            "(or pip install matplotlib)"
        ) from e
    return Figure


def plot_curves(
    panels: Sequence[Panel],
    out_path: str | Path | None = None,
    *,
    ncols: int | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (5.0, 3.8),
) -> Figure:
    """Draw `panels` in a grid (one row unless `ncols` is smaller) and save to `out_path`
    (format from its suffix) when given. Empty series are skipped, so a run without val points
    leaves no empty legend entry."""
    if not panels:
        raise ValueError("plot_curves needs at least one panel")
    Figure = _matplotlib_figure()
    ncols = min(ncols or len(panels), len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        drawn = 0
        for s in panel.series:
            if len(s.xs) == 0:
                continue
            ax.plot(
                s.xs,
                s.ys,
                label=s.name,
                color=s.color,
                linestyle=s.linestyle,
                marker=s.marker,
                markersize=3,
            )
            drawn += 1
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.xlog:
            ax.set_xscale("log")
        if panel.ylog:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=120)
    return fig


@dataclass(frozen=True)
class RunCurves:
    """A run's logged losses with three x axes. `seconds` is training time (compile and eval
    left out), integrated from each record's tokens_per_s over the steps since the last record."""

    name: str
    steps: list[int]
    tokens: list[float]
    seconds: list[float]
    train_loss: list[float]
    val_steps: list[int]
    val_tokens: list[float]
    val_seconds: list[float]
    val_loss: list[float]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise PlotError(f"{path} not found; pass a run directory that training has logged to")
    records = []
    for where, record in read_jsonl(path, PlotError):
        if not isinstance(record, dict) or "step" not in record:
            raise PlotError(f"{where}: a metrics record needs a 'step'")
        records.append(record)
    return records


def tokens_per_step(run_dir: Path) -> int:
    """batch_size x block_size from the run's config.json (the tokens one optimizer step sees)."""
    path = run_dir / "config.json"
    try:
        cfg = json.loads(path.read_text())
        return int(cfg["batch_size"]) * int(cfg["block_size"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PlotError(
            f"{path}: cannot read batch_size and block_size ({e}); the run directory should "
            f"hold the config.json training writes"
        ) from e


def run_curves(run_dir: str | Path, name: str | None = None) -> RunCurves:
    run_dir = Path(run_dir)
    records = sorted(read_metrics(run_dir / "metrics.jsonl"), key=lambda r: r["step"])
    per_step = tokens_per_step(run_dir)
    steps, tokens, seconds, train = [], [], [], []
    v_steps, v_tokens, v_seconds, val = [], [], [], []
    prev_step, elapsed = 0, 0.0
    for r in records:
        step = int(r["step"])
        rate = r.get("tokens_per_s") or 0.0
        if rate > 0:  # 0 when nothing was timed since the last record (the compile step)
            elapsed += (step - prev_step) * per_step / rate
        prev_step = step
        n_tokens = float(r.get("tokens", step * per_step))
        if "train_loss" in r:
            steps.append(step)
            tokens.append(n_tokens)
            seconds.append(elapsed)
            train.append(float(r["train_loss"]))
        if "val_loss" in r:
            v_steps.append(step)
            v_tokens.append(n_tokens)
            v_seconds.append(elapsed)
            val.append(float(r["val_loss"]))
    return RunCurves(
        name or run_dir.name, steps, tokens, seconds, train, v_steps, v_tokens, v_seconds, val
    )


def loss_panels(runs: Sequence[RunCurves], xlog: bool = False) -> list[Panel]:
    """Loss against steps, tokens and seconds: train solid, val dashed with markers, one color
    per run. Loss is log-scaled: early and late training differ by an order of magnitude."""
    axes = (("steps", "step"), ("tokens", "tokens"), ("seconds", "training seconds"))
    panels = []
    for attr, label in axes:
        series = []
        for i, run in enumerate(runs):
            color = f"C{i % 10}"
            series.append(Series(f"{run.name} train", getattr(run, attr), run.train_loss, color))
            series.append(
                Series(
                    f"{run.name} val", getattr(run, f"val_{attr}"), run.val_loss, color, "--", "o"
                )
            )
        panels.append(Panel(f"loss vs {label}", label, "loss", series, xlog=xlog, ylog=True))
    return panels


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, or the paths as given where two runs share a name."""
    names = [p.name or str(p) for p in run_dirs]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(run_dirs, names, strict=True)]


def main(argv: list[str] | None = None) -> Figure:
    parser = argparse.ArgumentParser(description="Plot runs' train and val loss curves.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", default="curves.png", help="image path (.png, .pdf, .svg)")
    parser.add_argument("--logx", action="store_true", help="log-scale the x axes too")
    args = parser.parse_args(argv)
    try:
        runs = [
            run_curves(d, n) for d, n in zip(args.run_dirs, _run_names(args.run_dirs), strict=True)
        ]
        fig = plot_curves(loss_panels(runs, xlog=args.logx), args.out)
    except (PlotError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.out}")
    return fig


if __name__ == "__main__":
    main()
