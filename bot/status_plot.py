"""The PNG attached to ``/status``: recent answer latencies and retraining validation curves.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas), never ``pyplot``: no global backend
or figure registry, so rendering is safe in a worker thread (the admin cog calls it through
``asyncio.to_thread``; a first render costs the matplotlib import). Empty inputs still give a valid PNG
that says there is nothing to show yet.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bot.scheduler import expert_results

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from bot.storage import RetrainRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREFERRED_METRICS = ("score", "accuracy", "citation_accuracy", "exact_match", "eval_loss", "loss")
"""Which validation metric to draw when a run reports several (first one present wins)."""

Point = tuple[dt.datetime | float, float]


def curves_from_runs(
    runs: Sequence[RetrainRun], metric: str | None = None
) -> tuple[str, dict[str, list[Point]]]:
    """Per-expert series of one validation metric over retraining runs (``RetrainRun``s, oldest first).

    Returns the metric's name and ``{expert: [(finished time, value), ...]}``.
    """
    results = [(run, expert_results(run.validation)) for run in runs if run.validation]
    if metric is None:
        seen = [k for _, rs in results for r in rs for k in r.metrics]
        metric = next((m for m in PREFERRED_METRICS if m in seen), seen[0] if seen else "")
    curves: dict[str, list[Point]] = {}
    for run, rs in results:
        when = run.finished or run.started
        for r in rs:
            if metric in r.metrics:
                curves.setdefault(r.expert, []).append((when, r.metrics[metric]))
    return metric, curves


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _latency_panel(ax: Axes, latencies_ms: Sequence[float]) -> None:
    ax.set_title("Answer latency", fontsize=10)
    values = np.asarray([v for v in latencies_ms if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        _empty(ax, "no answers timed yet")
        return
    ax.hist(values / 1000.0, bins=min(30, max(5, values.size // 5)), color="#5865F2", alpha=0.85)
    for q, style in ((50, ":"), (95, "--")):
        p = float(np.percentile(values, q)) / 1000.0
        ax.axvline(p, color="black", linestyle=style, linewidth=1, label=f"p{q} {p:.2f} s")
    ax.set_xlabel(f"seconds (last {values.size} answers)")
    ax.set_ylabel("answers")
    ax.legend(fontsize=8)


def _curves_panel(ax: Axes, metric: str, curves: Mapping[str, Sequence[Point]]) -> None:
    ax.set_title(f"Retraining validation{f': {metric}' if metric else ''}", fontsize=10)
    if not any(curves.values()):
        _empty(ax, "no retraining runs yet")
        return
    for expert, points in sorted(curves.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=expert)
    ax.set_xlabel("run finished")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7, labelrotation=30)


def render_status_png(
    latencies_ms: Sequence[float] = (),
    curves: Mapping[str, Sequence[Point]] | None = None,
    *,
    metric: str = "",
    dpi: int = 100,
) -> bytes:
    """Two panels (latency histogram with p50/p95, validation metric per expert over runs) as PNG bytes."""
    fig = Figure(figsize=(8.0, 3.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _latency_panel(left, latencies_ms)
    _curves_panel(right, metric, curves or {})
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
