"""The support check that decides whether model prose is shown above the quoted rules."""

from __future__ import annotations

import pytest

from engine.grounding import UNVERIFIED
from engine.support import (
    SUPPORT_THRESHOLD,
    check_support,
    content_words,
    has_negation,
    numbers_in,
    sentence_support,
)

DEFENDER = "A creature with defender can't attack."
TRAMPLE_B = (
    "The controller of an attacking creature with trample first assigns damage to the creature(s) blocking "
    "it. Once all those blocking creatures are assigned lethal damage, any excess damage is assigned as its "
    "controller chooses among those blocking creatures and the player, planeswalker, or battle the creature "
    "is attacking."
)


def test_a_restated_rule_that_cites_it_is_shown() -> None:
    report = check_support(
        "Rule 702.3b says that a creature with defender can't attack.",
        [DEFENDER],
        "Can a creature with defender attack?",
        ["702.3b"],
    )
    assert report.shown and report.reason == "supported" and report.score == 1.0


@pytest.mark.parametrize(
    ("text", "cites", "reason"),
    [
        ("", [], "no prose"),
        ("A creature with defender can't attack.", [], "cites no quoted rule"),
        (
            f"Rule 702.3b says a creature with defender can't attack, see {UNVERIFIED}.",
            ["702.3b"],
            "cites a rule that was not quoted",
        ),
    ],
)
def test_prose_without_a_quoted_citation_is_not_shown(text: str, cites: list[str], reason: str) -> None:
    report = check_support(text, [DEFENDER], "Can a creature with defender attack?", cites)
    assert not report.shown and report.reason == reason


@pytest.mark.parametrize(
    ("sentence", "problem"),
    [
        ("Yes.", "a bare verdict"),
        ("The answer is no.", "a bare verdict"),
        ("A creature with defender gains flying and draws a card each upkeep.", "says more than"),
        ("A creature with defender can't attack 2 times.", "states a number"),
        ("Excess damage is not assigned to the player.", "negates"),
    ],
)
def test_unsupported_sentences_are_caught(sentence: str, problem: str) -> None:
    passages = [DEFENDER, TRAMPLE_B]
    result = sentence_support(sentence, passages, "What happens?")
    assert result.problem is not None and result.problem.startswith(problem), result


def test_one_unsupported_sentence_hides_the_whole_prose() -> None:
    text = "Rule 702.3b says that a creature with defender can't attack. So it wins the game."
    report = check_support(text, [DEFENDER], "Can a creature with defender attack?", ["702.3b"])
    assert not report.shown and "So it wins the game." in report.reason
    assert [s.problem is None for s in report.sentences] == [True, False]


def test_the_best_single_passage_counts_not_the_union() -> None:
    flying = "A creature with flying can't be blocked except by creatures with flying and/or reach."
    lifelink = (
        "Damage dealt by a source with lifelink causes that source's controller to gain that much life."
    )
    # Every word is in one of the two passages, but neither says this.
    stitched = "Flying causes its controller to gain life when blocked by reach."
    alone = sentence_support(stitched, [flying, lifelink], "Question?")
    assert alone.score < SUPPORT_THRESHOLD and alone.problem


def test_the_question_backs_the_situation_it_describes() -> None:
    question = "My Wall of Stone has defender. Can it attack?"
    for sentence in ("My Wall of Stone has defender.", "A creature with defender can't attack."):
        assert sentence_support(sentence, [DEFENDER], question).problem is None
    # Its words are all backed, but "has defender, so it can't" is a phrase no source states: not shown.
    stitched = sentence_support("Wall of Stone has defender, so it can't attack.", [DEFENDER], question)
    assert stitched.problem is not None and stitched.problem.startswith("recombines")


def test_a_recombination_of_the_rules_words_is_not_shown() -> None:
    deathtouch = (
        "Any nonzero amount of combat damage assigned to a creature by a source with deathtouch is considered "
        "to be lethal damage for the purposes of determining assignment. Deathtouch is checked as a "
        "state-based action."
    )
    garbled = "A creature with deathtouch is considered to be a state-based action."
    result = sentence_support(garbled, [deathtouch], "What does deathtouch do?")
    assert result.score >= SUPPORT_THRESHOLD  # every word is the rule's...
    assert result.problem is not None and result.problem.startswith("recombines")  # ...the claim is not


def test_words_numbers_and_negations() -> None:
    assert {"creatur", "defend", "attack"} <= content_words("Creatures with defender attacking")
    assert "702.3b" not in content_words("rule 702.3b")
    assert numbers_in("It deals 3 damage to two creatures (rule 702.19b), +1/+1.") == {"3", "2", "1/1"}
    assert numbers_in("one or more creatures") == set()
    assert has_negation("It can't attack") and has_negation("it does not") and not has_negation("it can")


def test_a_sentence_naming_a_rule_must_be_backed_by_that_rules_text() -> None:
    quoted = {"702.3b": DEFENDER, "702.19b": TRAMPLE_B}
    question = "Can a creature with defender attack?"
    right = check_support(
        "Rule 702.3b says that a creature with defender can't attack.", quoted, question, ["702.3b"]
    )
    assert right.shown
    # Another quoted rule's words under this rule's number: a misattribution, never shown.
    wrong = check_support(
        "Rule 702.3b says that the controller of an attacking creature with trample first assigns damage to "
        "the creature(s) blocking it.",
        quoted,
        question,
        ["702.3b"],
    )
    assert not wrong.shown
