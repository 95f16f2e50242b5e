"""The /status picture: a valid PNG of the expected size, with data and without."""

from __future__ import annotations

import datetime as dt

import pytest

from bot.status_plot import curves_from_runs, render_status_png
from bot.storage import RetrainRun
from tests.bot.png import png_size

T0 = dt.datetime(2026, 3, 1, 3, 0, tzinfo=dt.UTC)


def run(i: int, experts: dict | None, status: str = "promoted") -> RetrainRun:
    started = T0 + dt.timedelta(days=i)
    validation = {"experts": experts} if experts is not None else None
    return RetrainRun(i, started, started + dt.timedelta(minutes=20), None, "nightly", status, 10, validation)


@pytest.mark.parametrize("dpi", [100, 50])
def test_png_without_any_data(dpi):
    data = render_status_png(dpi=dpi)
    assert png_size(data) == (8 * dpi, int(3.2 * dpi))


def test_png_with_latencies_and_curves():
    latencies = [120.0 + (i % 37) * 40 for i in range(400)] + [float("nan"), float("inf")]
    curves = {"reason": [(T0, 0.61), (T0 + dt.timedelta(days=1), 0.66)], "teach": [(T0, 0.5)]}
    data = render_status_png(latencies, curves, metric="score")
    assert png_size(data) == (800, 320)
    assert len(data) > len(render_status_png()), "drawn data makes a busier picture than the empty one"


def test_single_latency_and_empty_curves():
    assert png_size(render_status_png([250.0], {"reason": []})) == (800, 320)


def test_curves_from_runs_pick_the_preferred_metric():
    runs = [
        run(0, {"reason": {"promoted": True, "metrics": {"loss": 1.2, "score": 0.6}}}),
        run(1, None, status="failed"),
        run(
            2,
            {
                "reason": {"promoted": False, "metrics": {"loss": 1.1, "score": 0.58}},
                "teach": {"metrics": {"score": 0.7}},
            },
        ),
    ]
    metric, curves = curves_from_runs(runs)
    assert metric == "score"
    assert curves == {
        "reason": [(runs[0].finished, 0.6), (runs[2].finished, 0.58)],
        "teach": [(runs[2].finished, 0.7)],
    }
    assert curves_from_runs(runs, metric="loss")[1]["reason"] == [
        (runs[0].finished, 1.2),
        (runs[2].finished, 1.1),
    ]


def test_curves_from_runs_without_metrics():
    assert curves_from_runs([]) == ("", {})
    assert curves_from_runs([run(0, {"reason": {"promoted": True}})]) == ("", {})
    metric, curves = curves_from_runs([run(0, {"explain": {"metrics": {"f1": 0.4}}})])
    assert (metric, curves) == ("f1", {"explain": [(T0 + dt.timedelta(minutes=20), 0.4)]})
