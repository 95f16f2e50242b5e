"""The charts are real PNGs with the data drawn, and empty inputs still give a valid image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.plots import plot_latency_distributions, plot_metrics_by_group

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _image(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == PNG_MAGIC
    return Image.open(path)


def _colourful_pixels(image: Image.Image) -> int:
    """Pixels that are clearly not grey (drawn data: coloured boxes, points, bars)."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


def test_latency_chart_draws_every_series(tmp_path: Path) -> None:
    one = plot_latency_distributions({"hybrid": [1.0, 2.0, 3.0, 9.0]}, tmp_path / "one.png", "search")
    two = plot_latency_distributions(
        {"hybrid": [1.0, 2.0, 3.0, 9.0], "BM25": [0.5, 0.6, 0.7, 4.0]}, tmp_path / "sub" / "two.png", "search"
    )
    assert _colourful_pixels(_image(two)) > _colourful_pixels(_image(one)) > 0


def test_quality_chart_has_one_bar_per_group_and_metric(tmp_path: Path) -> None:
    groups = {"fundamentals": {"recall": 0.9, "precision": 0.5}, "edge_cases": {"recall": 0.3}}
    path = plot_metrics_by_group(
        groups, ["recall", "precision"], tmp_path / "q.png", "quality", counts={"edge_cases": 4}
    )
    low = plot_metrics_by_group(
        {"fundamentals": {"recall": 0.1, "precision": 0.05}, "edge_cases": {"recall": 0.03}},
        ["recall", "precision"],
        tmp_path / "low.png",
        "quality",
    )
    assert _colourful_pixels(_image(path)) > 2 * _colourful_pixels(_image(low)) > 0


def test_empty_inputs_give_a_valid_png(tmp_path: Path) -> None:
    for path in (
        plot_latency_distributions({}, tmp_path / "a.png", "nothing"),
        plot_latency_distributions({"x": []}, tmp_path / "b.png", "nothing"),
        plot_metrics_by_group({}, ["recall"], tmp_path / "c.png", "nothing"),
    ):
        image = _image(path)
        assert image.size[0] > 100 and _colourful_pixels(image) == 0
