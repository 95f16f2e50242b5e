"""Training and validation curves as a PNG.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas), never ``pyplot``: training runs in the
bot's worker thread, and pyplot's global figure registry and backend are not thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Train loss per step and validation loss per evaluation (and the learning rate); None when empty."""
    train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if not train and not val:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange")
        best = min(val, key=lambda p: p[1])
        ax.axvline(best[0], color="tab:orange", linestyle=":", label=f"best (step {best[0]})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / answer token)")
    lrs = [(h["step"], h["lr"]) for h in history if "lr" in h]
    if lrs:
        twin = ax.twinx()
        twin.plot(*zip(*lrs, strict=True), color="tab:gray", linewidth=0.8, alpha=0.5)
        twin.set_ylabel("learning rate", color="tab:gray")
    ax.legend(loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
