"""The scenario suite (scenarios.yaml): each question, its expected outcome, and the rules it rests on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rules_engine import ImpossibleBoard, solve

SCENARIOS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "scenarios.yaml").read_text(encoding="utf-8")
)
LIST_FIELDS = {"deaths", "survivors", "lost"}


def test_suite_is_large_enough() -> None:
    assert len(SCENARIOS) >= 150


def _check_outcome(expected: dict[str, Any], outcome: dict[str, Any]) -> None:
    for key, want in expected.items():
        assert key in outcome, f"outcome has no {key!r}: {outcome}"
        got = outcome[key]
        if key in LIST_FIELDS:
            assert sorted(got) == sorted(want), f"{key}: {got} != {want}"
        else:
            assert got == want, f"{key}: {got!r} != {want!r}"


@pytest.mark.parametrize("case", SCENARIOS, ids=[c["q"][:60] for c in SCENARIOS])
def test_scenario(case: dict[str, Any], request: pytest.FixtureRequest) -> None:
    cards = request.getfixturevalue("card_db") if case.get("cards") else None
    expect = case["expect"]
    if expect == "impossible":
        with pytest.raises(ImpossibleBoard) as err:
            solve(case["q"], cards)
        assert str(err.value) and "Traceback" not in str(err.value)
        return
    solution = solve(case["q"], cards)
    if expect == "none":
        assert solution is None, solution and solution.text()
        return
    assert solution is not None, "the calculator declined"
    assert solution.kind == case["kind"]
    _check_outcome(expect, solution.outcome)
    missing = [str(r) for r in case.get("rules", []) if str(r) not in solution.rules]
    assert not missing, f"rules {missing} not cited; cited {solution.rules}\n{solution.text()}"
    if "verdict" in case:
        assert solution.verdict == case["verdict"]
