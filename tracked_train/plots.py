"""Loss curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Iterable


def loss_figure(records: Iterable[dict], title: str = ""):
    """A matplotlib Figure of train and val loss against step from metric records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for r in records:
        if "train/loss" in r:
            train.append((r["step"], r["train/loss"]))
        if "val/loss" in r:
            val.append((r["step"], r["val/loss"]))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train/loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val/loss", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
