"""Per-stage latency tracking with percentiles, a budget, and an alert when too many requests exceed it.

The retriever times each stage (``with tracker.stage("vector"):``) and each whole request
(``with tracker.request():``). Windows are bounded deques, so memory stays flat however long the bot runs.
The alert is a flag in :meth:`LatencyTracker.snapshot` (shown by ``/status``) plus one warning in the log
when it switches on, not one per slow request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from statistics import median

import numpy as np

log = logging.getLogger(__name__)

TOTAL = "total"


class LatencyTracker:
    """Sliding-window latencies per stage, in milliseconds. Thread-safe.

    ``alert_fraction`` of the last ``alert_window`` requests over ``budget_ms`` raises the alert (once at
    least ``min_requests`` were seen, so one slow cold start does not alert); it clears when the fraction
    falls back under the threshold.
    """

    def __init__(
        self,
        budget_ms: float = 20.0,
        window: int = 1000,
        alert_window: int = 100,
        alert_fraction: float = 0.05,
        min_requests: int = 20,
        clock: Callable[[], float] = time.perf_counter,
        name: str = "retrieval",
    ) -> None:
        if budget_ms <= 0:
            raise ValueError("latency budget must be > 0 ms")
        if not 0 <= alert_fraction < 1:
            raise ValueError("alert_fraction must be in [0, 1)")
        self.budget_ms = budget_ms
        self.window = window
        self.alert_window = alert_window
        self.alert_fraction = alert_fraction
        self.min_requests = min_requests
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._stages: dict[str, deque[float]] = {}
        self._over: deque[bool] = deque(maxlen=alert_window)
        self._alert = False
        self.alerts_raised = 0

    # -- recording ---------------------------------------------------------------------------------

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as one sample of ``name`` (recorded even if the block raises)."""
        start = self._clock()
        try:
            yield
        finally:
            self.record(name, (self._clock() - start) * 1000.0)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Time a whole request: recorded as stage ``total`` and checked against the budget."""
        start = self._clock()
        try:
            yield
        finally:
            self.record_request((self._clock() - start) * 1000.0)

    def record(self, stage: str, ms: float) -> None:
        with self._lock:
            samples = self._stages.get(stage)
            if samples is None:
                samples = self._stages[stage] = deque(maxlen=self.window)
            samples.append(ms)

    def record_request(self, total_ms: float) -> None:
        self.record(TOTAL, total_ms)
        with self._lock:
            self._over.append(total_ms > self.budget_ms)
            fraction = sum(self._over) / len(self._over)
            alert = len(self._over) >= self.min_requests and fraction > self.alert_fraction
            raised = alert and not self._alert
            self._alert = alert
            if raised:
                self.alerts_raised += 1
        if raised:
            log.warning(
                "%s latency: %.0f%% of the last %d requests exceeded the %.1f ms budget",
                self.name,
                100 * fraction,
                len(self._over),
                self.budget_ms,
            )

    # -- reading -----------------------------------------------------------------------------------

    @property
    def alert(self) -> bool:
        with self._lock:
            return self._alert

    def expected_ms(self, stage: str, recent: int = 32) -> float | None:
        """Median of the stage's most recent samples: what the next run is likely to cost (None = unknown)."""
        with self._lock:
            samples = self._stages.get(stage)
            if not samples:
                return None
            return median(islice(reversed(samples), recent))

    def percentiles(self, stage: str) -> dict[str, float] | None:
        with self._lock:
            samples = list(self._stages.get(stage, ()))
        if not samples:
            return None
        p50, p95, p99 = np.percentile(np.asarray(samples), [50, 95, 99])
        return {
            "count": len(samples),
            "p50": float(p50),
            "p95": float(p95),
            "p99": float(p99),
            "max": float(max(samples)),
        }

    def snapshot(self) -> dict:
        """JSON-ready view: budget, alert flag, fraction over budget, and percentiles per stage."""
        with self._lock:
            stages = list(self._stages)
            over = list(self._over)
            alert = self._alert
        return {
            "budget_ms": self.budget_ms,
            "alert": alert,
            "over_budget_fraction": (sum(over) / len(over)) if over else 0.0,
            "requests_in_window": len(over),
            "stages": {stage: self.percentiles(stage) for stage in stages},
        }

    def reset(self) -> None:
        with self._lock:
            self._stages.clear()
            self._over.clear()
            self._alert = False
