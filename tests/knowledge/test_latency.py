"""Latency tracker: stage timing, percentiles, the budget alert and its log warning."""

from __future__ import annotations

import logging

import pytest

from knowledge.latency import LatencyTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stage_context_manager_records_duration_in_ms() -> None:
    clock = Clock()
    tracker = LatencyTracker(clock=clock)
    with tracker.stage("vector"):
        clock.now += 0.004
    stats = tracker.percentiles("vector")
    assert stats is not None and stats["count"] == 1
    assert stats["p50"] == pytest.approx(4.0)


def test_stage_is_recorded_even_when_the_block_raises() -> None:
    clock = Clock()
    tracker = LatencyTracker(clock=clock)
    with pytest.raises(RuntimeError), tracker.stage("bm25"):
        clock.now += 0.001
        raise RuntimeError("boom")
    assert tracker.percentiles("bm25")["count"] == 1


def test_percentiles_over_a_known_distribution() -> None:
    tracker = LatencyTracker()
    for ms in range(1, 101):
        tracker.record("vector", float(ms))
    stats = tracker.percentiles("vector")
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p95"] == pytest.approx(95.05)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["max"] == 100.0
    assert tracker.percentiles("missing") is None


def test_window_is_bounded() -> None:
    tracker = LatencyTracker(window=10)
    for ms in range(100):
        tracker.record("s", float(ms))
    stats = tracker.percentiles("s")
    assert stats["count"] == 10 and stats["p50"] == pytest.approx(94.5)


def test_expected_ms_is_the_median_of_recent_samples() -> None:
    tracker = LatencyTracker()
    assert tracker.expected_ms("vector") is None
    for ms in (100.0, 1.0, 2.0, 3.0):
        tracker.record("vector", ms)
    assert tracker.expected_ms("vector", recent=3) == 2.0


def test_alert_raises_once_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    tracker = LatencyTracker(budget_ms=10, alert_window=20, alert_fraction=0.1, min_requests=20)
    for _ in range(18):
        tracker.record_request(5.0)
    with caplog.at_level(logging.WARNING, logger="knowledge.latency"):
        tracker.record_request(50.0)
        tracker.record_request(50.0)  # 2 of 20 = 10%: not *more* than 10%
        assert not tracker.alert
        tracker.record_request(50.0)  # window slides: 3 of 20 over budget
        assert tracker.alert
        tracker.record_request(50.0)
    warnings = [r for r in caplog.records if "exceeded" in r.getMessage()]
    assert len(warnings) == 1  # one warning when the alert switches on, not one per slow request
    snap = tracker.snapshot()
    assert snap["alert"] is True
    assert snap["over_budget_fraction"] == pytest.approx(4 / 20)
    assert snap["stages"]["total"]["count"] == 22
    for _ in range(20):
        tracker.record_request(1.0)
    assert not tracker.alert and tracker.alerts_raised == 1


def test_no_alert_before_min_requests() -> None:
    tracker = LatencyTracker(budget_ms=1, min_requests=5)
    for _ in range(4):
        tracker.record_request(100.0)
    assert not tracker.alert


def test_request_context_manager_counts_against_budget() -> None:
    clock = Clock()
    tracker = LatencyTracker(budget_ms=1, min_requests=1, alert_fraction=0.0, clock=clock)
    with tracker.request():
        clock.now += 0.0005  # 0.5 ms: within budget
    assert not tracker.alert
    with tracker.request():
        clock.now += 0.002  # 2 ms: over
    assert tracker.alert
    assert tracker.snapshot()["requests_in_window"] == 2


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        LatencyTracker(budget_ms=0)
    with pytest.raises(ValueError):
        LatencyTracker(alert_fraction=1.0)
