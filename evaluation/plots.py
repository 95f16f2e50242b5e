"""PNG charts for the eval commands and the benchmarks: latency distributions and quality per group.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas), never ``pyplot``: no global backend
state, safe from any thread, nothing needs a display. Both functions write one PNG and return its path;
empty inputs still give a valid PNG that says "no data", so a report can always link its charts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _percentile(values: Sequence[float], q: float) -> float:
    """The measured value nearest to rank ``q * (n - 1)`` (no interpolation); 0.0 for no values."""
    import numpy as np

    return float(np.percentile(values, 100 * q, method="nearest")) if len(values) else 0.0


def plot_latency_distributions(
    series: Mapping[str, Sequence[float]], path: Path, title: str, unit: str = "ms"
) -> Path:
    """One box (with the points) per series, p50/p95/p99 written under each: compares distributions.

    ``series`` maps a label ("hybrid", "BM25", "16 concurrent") to its latency samples in ``unit``.
    """
    fig = _figure(max(5.0, 1.6 * len(series) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    labels = [label for label, values in series.items() if values]
    if not labels:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title)
        return _save(fig, path)
    data = [list(series[label]) for label in labels]
    ax.boxplot(data, showfliers=False, whis=(1, 99))
    for i, values in enumerate(data, 1):
        jitter = [i + 0.18 * (((j * 7919) % 100) / 100 - 0.5) for j in range(len(values))]
        ax.scatter(jitter, values, s=6, alpha=0.35, color=_COLORS[(i - 1) % len(_COLORS)])
    ax.set_xticks(range(1, len(labels) + 1))
    ax.set_xticklabels(
        [
            f"{label}\np50 {_percentile(v, 0.5):.3g} / p95 {_percentile(v, 0.95):.3g}"
            f"\np99 {_percentile(v, 0.99):.3g} (n={len(v)})"
            for label, v in zip(labels, data, strict=True)
        ],
        fontsize=8,
    )
    ax.set_ylabel(f"latency ({unit})")
    if max(max(v) for v in data) > 20 * max(min(min(v) for v in data), 1e-9):
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)


def plot_metrics_by_group(
    groups: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    path: Path,
    title: str,
    counts: Mapping[str, int] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> Path:
    """Grouped bars: for each group (a difficulty), one bar per metric (recall, precision, agreement...).

    ``groups`` maps group -> metric -> value; a metric missing from a group is drawn as no bar.
    ``counts`` (questions per group) is written under the group's name.
    """
    names = list(groups)
    fig = _figure(max(6.0, 0.9 * len(names) * max(1, len(metrics)) / 2 + 3), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if not names or not metrics:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title)
        return _save(fig, path)
    width = 0.8 / len(metrics)
    for m, metric in enumerate(metrics):
        xs, ys = [], []
        for g, name in enumerate(names):
            value = groups[name].get(metric)
            if value is not None:
                xs.append(g - 0.4 + width * (m + 0.5))
                ys.append(value)
        bars = ax.bar(xs, ys, width=width, label=metric, color=_COLORS[m % len(_COLORS)])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [f"{name}\n(n={counts[name]})" if counts and name in counts else name for name in names],
        fontsize=8,
        rotation=20 if len(names) > 5 else 0,
    )
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    return _save(fig, path)
