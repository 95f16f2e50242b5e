"""Latency of the rules calculator over the scenario suite: p50/p99 of solve() and the share it answered.

Usage: PYTHONPATH=. python bench/bench_calculator.py [--repeat N]
The issue's target: a calculator answer adds < 50 ms to an answer's latency (CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

from knowledge.card_names import CardDatabase
from rules_engine import ImpossibleBoard, solve

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "tests" / "rules_engine" / "scenarios.yaml"
CARDS = ROOT.parent / "shared" / "data" / "cards"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, 100 * q, method="nearest"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = yaml.safe_load(SCENARIOS.read_text(encoding="utf-8"))
    cards = CardDatabase.from_dir(CARDS) if CARDS.is_dir() else None
    timings: list[float] = []
    answered = declined = impossible = 0
    for _ in range(args.repeat):
        for case in cases:
            db = cards if case.get("cards") else None
            start = time.perf_counter()
            try:
                result = solve(case["q"], db)
            except ImpossibleBoard:
                result, impossible = None, impossible + 1
            else:
                answered += result is not None
                declined += result is None
            timings.append((time.perf_counter() - start) * 1000)
    total = len(timings)
    print(f"questions: {len(cases)} x {args.repeat} runs")
    print(
        f"solve(): p50 {percentile(timings, 0.5):.2f} ms, p99 {percentile(timings, 0.99):.2f} ms, max {max(timings):.2f} ms, mean {statistics.fmean(timings):.2f} ms"
    )
    print(
        f"accepted by the parser (answered): {answered / total:.1%}; declined (normal path): {declined / total:.1%}; impossible board: {impossible / total:.1%}"
    )


if __name__ == "__main__":
    main()
