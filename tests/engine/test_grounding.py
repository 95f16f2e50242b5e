"""The grounding guard: only rules among the cited passages may be cited, also while streaming."""

from __future__ import annotations

import random

import pytest

from engine.grounding import UNVERIFIED, StreamGuard, allowed_rule_numbers, guard_text
from knowledge.models import Citation, Passage

RELEASE = "2026-01-16"


def rule(number: str, title: str | None = None) -> Passage:
    return Passage(f"rule:{number}", f"text of {number}", Citation(number, "rule", RELEASE), title)


PASSAGES = [
    rule("702.19b", "702.19 Trample"),
    rule("702.19c", "702.19 Trample"),
    rule("510.1"),
    Passage("card:tarmogoyf", "Tarmogoyf {1}{G}", Citation("Tarmogoyf", "card")),
    Passage("glossary:trample", "Trample\nA keyword ability.", Citation("Trample", "glossary", RELEASE)),
]
ALLOWED = allowed_rule_numbers(PASSAGES)


def test_allowed_numbers_are_the_cited_rules_and_their_headings() -> None:
    assert ALLOWED == {"702.19b", "702.19c", "702.19", "510.1"}


@pytest.mark.parametrize(
    ("text", "expected", "removed"),
    [
        ("Damage goes through (CR 702.19b).", "Damage goes through (CR 702.19b).", []),
        ("Damage goes through (CR 613.7).", "Damage goes through.", ["613.7"]),
        ("See rule 613.7 for more.", f"See {UNVERIFIED} for more.", ["613.7"]),
        (
            "Under 702.19, yes (702.19c and 999.1).",
            f"Under 702.19, yes (702.19c and {UNVERIFIED}).",
            ["999.1"],
        ),
        ("(see rules 998.2 and 999.1) Done.", " Done.", ["998.2", "999.1"]),
        ("A 2/2 for 3.5 mana, 1.5x as big.", "A 2/2 for 3.5 mana, 1.5x as big.", []),
        ("Rule 702.19bb is not a rule number.", "Rule 702.19bb is not a rule number.", []),
    ],
)
def test_guard_text(text: str, expected: str, removed: list[str]) -> None:
    report = guard_text(text, ALLOWED)
    assert report.text == expected
    assert report.removed == removed


def test_kept_lists_the_backed_citations() -> None:
    report = guard_text("First 510.1, then 702.19b and 702.19b again, never 100.1.", ALLOWED)
    assert report.kept == ["510.1", "702.19b"]
    assert report.removed == ["100.1"]


TEXTS = [
    "Trample lets damage go through (CR 702.19b). See rule 613.7 and also (rule 999.1, 998.2). Under rule "
    "702.19, the rest (702.19c and 510.1) applies. It has 2/2 and 3.5 costs. CR 100.1a says rules 702.19b",
    "(CR 123.4)(CR 702.19c) rule rule 702.19b. ((nested 999.9)) and an unclosed (paren with 613.7",
    "No references at all, just words.\nAnd a second line.",
]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_guard_adds_up_to_guard_text(text: str) -> None:
    rng = random.Random(7)
    expected = guard_text(text, ALLOWED).text
    for _ in range(200):
        guard, out, i = StreamGuard(ALLOWED), "", 0
        while i < len(text):
            n = rng.randint(1, 7)
            out += guard.feed(text[i : i + n])
            i += n
        out += guard.finish()
        assert out == expected


def test_stream_guard_never_shows_an_invented_number() -> None:
    text = "It deals damage (CR 613.7) to the player."
    guard, shown = StreamGuard(ALLOWED), ""
    for ch in text:
        shown += guard.feed(ch)
        assert "613" not in shown
    shown += guard.finish()
    assert shown == "It deals damage to the player."


def test_stream_guard_streams_without_waiting_for_the_end() -> None:
    guard = StreamGuard(ALLOWED)
    assert guard.feed("Trample lets the attacker") == "Trample lets the"  # "attacker" may go on
    # "rule" may introduce a reference: held back until the number shows whether it is backed.
    assert guard.feed(" assign damage, see rule ") == " attacker assign damage, see"
    assert guard.feed("702.19b. ") == " rule 702.19b."
