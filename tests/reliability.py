"""Counters of the reliability layer (tests/hexcore/test_fuzz_*.py, tests/bot/test_fuzz_slash.py): how many
malformed-input cases a run fed in and how the CLI ones exited, printed at the end of the test run."""

from __future__ import annotations

from collections import Counter

CASES: Counter[str] = Counter()
"""Cases run this session, by layer."""
EXITS: Counter[int | str] = Counter()
"""Exit codes of the CLI cases."""


def summary() -> str | None:
    if not CASES:
        return None
    parts = ", ".join(f"{layer} {n}" for layer, n in sorted(CASES.items()))
    exits = ", ".join(f"{code}: {n}" for code, n in sorted(EXITS.items(), key=str))
    return f"reliability layer: {parts}; CLI exit codes {exits or '-'}; no traceback (each case asserts it)"
