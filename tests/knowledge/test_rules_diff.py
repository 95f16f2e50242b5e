"""Diffs between real rules releases."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from knowledge.models import RulesDocument
from knowledge.rules import load_rules
from knowledge.rules_diff import diff_releases


@pytest.fixture(scope="session")
def april(rules_dir: Path) -> RulesDocument:
    return load_rules(rules_dir / "2025-04-04.txt")


@pytest.fixture(scope="session")
def june(rules_dir: Path) -> RulesDocument:
    return load_rules(rules_dir / "2025-06-06.txt")


def test_april_to_june_2025(april: RulesDocument, june: RulesDocument) -> None:
    diff = diff_releases(april, june)
    assert (len(diff.added), len(diff.removed), len(diff.changed)) == (69, 57, 247)
    assert (diff.old_release, diff.new_release) == ("2025-04-04", "2025-06-06")
    assert not set(diff.added) & set(april.rules)
    assert not set(diff.removed) & set(june.rules)
    assert all(april.rules[n].full_text() != june.rules[n].full_text() for n in diff.changed)
    assert diff.added == [n for n in june.rules if n in set(diff.added)]  # document order
    assert (len(diff.glossary_added), len(diff.glossary_removed), len(diff.glossary_changed)) == (3, 0, 62)
    assert "69 added, 57 removed, 247 changed" in diff.summary()


def test_same_release_is_empty(june: RulesDocument) -> None:
    diff = diff_releases(june, june)
    assert diff.is_empty() and diff.touched == []


def test_examples_count_and_whitespace_does_not(june: RulesDocument) -> None:
    edited = copy.deepcopy(june)
    edited.rules["702.19b"].examples[0] += " Extra words."
    edited.rules["702.19a"].text = edited.rules["702.19a"].text.replace(" ", "  ")
    del edited.rules["702.19g"]
    edited.glossary["Trample"].text += " More."
    diff = diff_releases(june, edited)
    assert diff.changed == ["702.19b"]
    assert diff.removed == ["702.19g"] and diff.added == []
    assert diff.glossary_changed == ["Trample"]
    assert diff_releases(edited, june).added == ["702.19g"]


def test_examples_matter_between_releases(rules_dir: Path) -> None:
    """2024-11-08 -> 2025-02-07 edits examples of rules whose own text stayed the same."""
    old, new = load_rules(rules_dir / "2024-11-08.txt"), load_rules(rules_dir / "2025-02-07.txt")
    diff = diff_releases(old, new)
    by_text = [n for n in diff.changed if old.rules[n].text != new.rules[n].text]
    assert len(diff.changed) == 60 and len(by_text) == 13
