"""Every figure the package makes, as PNG-ready matplotlib Figures (headless): a run's loss curves (logged to
MLflow), several runs' losses (`compare --plot`), and a sweep's trials (its parent run). One look for all:
the same size, grid, legend and layout; each caller hands data, not matplotlib calls."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is assumed
    import matplotlib.pyplot as plt

    return plt


def _axes(size: tuple[float, float] = (7, 4), dpi: int = 100) -> tuple[Any, Any]:
    return _pyplot().subplots(figsize=size, dpi=dpi)


def _dress(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, legend: bool = True) -> Any:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()
        fig.tight_layout()
    return fig


def save_png(fig: Any, path: Path) -> None:
    """Write ``fig`` to ``path`` and free it ("tight": a legend below the axes stays in the picture)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png", bbox_inches="tight")
    finally:
        close(fig)


def close(fig: Any) -> None:
    _pyplot().close(fig)


def loss_figure(records: Iterable[dict], title: str = "") -> Any:
    """One run's train and val loss against step, from metric records."""
    train, val = [], []
    for r in records:
        if "train/loss" in r:
            train.append((r["step"], r["train/loss"]))
        if "val/loss" in r:
            val.append((r["step"], r["val/loss"]))
    fig, ax = _axes()
    if train:
        ax.plot(*zip(*train), label="train/loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val/loss", linewidth=1.5, markersize=3)
    return _dress(fig, ax, "step", "loss (nats/token)", title)


@dataclass(frozen=True)
class Curves:
    """One run's losses for :func:`runs_figure`: ``[(x, loss)]`` each, and its legend label."""

    label: str
    train: Sequence[tuple[float, float]]
    val: Sequence[tuple[float, float]]


def runs_figure(runs: Sequence[Curves], x_label: str) -> Any:
    """Train (solid) and val (dashed, dots) loss of every run on one axes, one colour per run."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, ax = _axes((9, 5), 110)
    handles = []
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        if run.train:
            ax.plot(*zip(*run.train), color=colour, linewidth=1.2, alpha=0.85)
        if run.val:
            ax.plot(*zip(*run.val), "o--", color=colour, linewidth=1.5, markersize=4)
        handles.append(Line2D([], [], color=colour, linewidth=2, label=run.label))
    # One legend entry per run (its colour), and two for the line styles, so the legend stays short.
    handles += [Line2D([], [], color="0.4", linewidth=1.2, label="train loss"),
                Line2D([], [], color="0.4", linestyle="--", marker="o", markersize=4, label="val loss")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # counts: round ticks
    return _dress(fig, ax, x_label, "loss (nats/token)", f"loss by {x_label}", legend=False)


def trials_figure(title: str, trials: Sequence[tuple[int, str, float | None]], metric: str,
                  mode: str = "min") -> Any:
    """A sweep's monitored metric for each ``(trial, state, value)`` against its number (pruned and failed
    marked), and the best so far."""
    fig, ax = _axes()
    sign = -1.0 if mode == "max" else 1.0
    styles = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:orange"), "fail": ("s", "tab:gray")}
    for state, (marker, color) in styles.items():
        pts = [(n, v) for n, s, v in trials if s == state and v is not None and math.isfinite(v)]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, label=f"{state} ({len(pts)})", zorder=3)
    best, line = sign * math.inf, []
    for n, state, v in trials:
        if state == "complete" and v is not None and sign * v < sign * best:
            best = v
        if math.isfinite(best):
            line.append((n, best))
    if line:
        ax.step(*zip(*line), where="post", color="tab:green", label="best so far", linewidth=1.5)
    return _dress(fig, ax, "trial", f"{metric} (best of the trial; last reported if pruned)", title)
