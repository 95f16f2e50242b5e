"""The parser: mentions, roles, controllers, asks, named cards, follow-ups, and bad input."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules_engine import ImpossibleBoard, Scenario, solve
from rules_engine.lexicon import normalise, tokenize
from rules_engine.mentions import extract_mentions
from rules_engine.parser import THRESHOLD, parse_question


def mentions(text: str):  # noqa: ANN201 - test helper
    return extract_mentions(tokenize(normalise(text)))


def test_mention_reads_keywords_counters_and_damage() -> None:
    (m,) = mentions(
        "a red 3/3 creature with first strike, trample and two +1/+1 counters and 1 damage marked on it"
    )
    assert (m.power, m.toughness, m.plus, m.damage) == (3, 3, 2, 1)
    assert m.keywords == ["first strike", "trample"] and m.colors == ["red"]


def test_counts_and_agent_nouns() -> None:
    a, b = mentions("my 6/6 trampler is blocked by two 1/1s")
    assert a.keywords == ["trample"] and a.controller == "you"
    assert b.count == 2


def test_effects_and_counters_are_not_creatures() -> None:
    (m,) = mentions("a 2/2 gets +1/+1 and a -1/-1 counter, then becomes a 5/5")
    assert (m.power, m.toughness) == (2, 2)


@pytest.mark.parametrize(
    ("question", "attacker", "blockers"),
    [
        ("A 6/6 trampler is blocked by a 3/3, how much damage do I take?", "their 6/6", ["your 3/3"]),
        (
            "My 5/5 attacks, they block with a 2/2 and a 3/3. What dies?",
            "your 5/5",
            ["their 2/2", "their 3/3"],
        ),
        ("I block their 5/5 with my 2/2 and my 3/3. What dies?", "their 5/5", ["your 2/2", "your 3/3"]),
        ("My 2/2 blocks their 3/3. What dies?", "their 3/3", ["your 2/2"]),
        (
            "Their 4/4 attacks me and I chump with a 1/1. How much damage do I take?",
            "their 4/4",
            ["your 1/1"],
        ),
    ],
)
def test_roles_and_controllers(question: str, attacker: str, blockers: list[str]) -> None:
    scenario = parse_question(question).scenario
    perms = scenario.permanents
    assert [perms[i].label for i in scenario.attackers()] == [attacker]
    assert [perms[i].label for i in scenario.blockers_of(scenario.attackers()[0])] == blockers


@pytest.mark.parametrize(
    ("question", "ask"),
    [
        ("My 3/3 attacks, they block with a 2/2. How much damage do they take?", "player_damage"),
        ("My 3/3 attacks, they block with a 2/2. Which creatures die?", "deaths"),
        ("My 3/3 with wither attacks, they block with a 2/2. How many -1/-1 counters?", "counters"),
        ("My 3/3 lifelink attacks unblocked. How much life do I gain?", "lifegain"),
        ("Their 3/3 flyer attacks. Can my 2/2 block it?", "block_legal"),
        ("A 1/1 gets +2/+2. What is its power and toughness?", "pt"),
    ],
)
def test_asks(question: str, ask: str) -> None:
    assert parse_question(question).scenario.ask == ask


def test_named_cards_from_the_database(card_db) -> None:  # noqa: ANN001 - fixture
    solution = solve("My Poison-Tip Archer blocks their 2/2 flyer. Which creatures die?", card_db)
    assert solution is not None
    archer = solution.scenario.permanents[0]
    assert archer.card_name == "Poison-Tip Archer" and {"reach", "deathtouch"} <= set(archer.keywords)
    assert solution.outcome["deaths"] == ["their 2/2"]


def test_nickname_for_a_card_without_fixed_pt_is_refused(card_db) -> None:  # noqa: ANN001 - fixture
    assert solve("My goyf attacks and they block with a 2/2. What dies?", card_db) is None


def test_followups_change_the_previous_scenario() -> None:
    first = solve("A 6/6 trampler is blocked by a 3/3, how much damage do I take?")
    assert first is not None and first.verdict == "You take 3 damage."
    previous = Scenario.from_json(first.scenario.to_json())
    lifelink = solve("and if it also had lifelink?", previous=previous)
    assert lifelink is not None and "lifelink" in lifelink.scenario.permanents[0].keywords
    deathtouch = solve("what if it had deathtouch?", previous=previous)
    assert deathtouch is not None and deathtouch.verdict == "You take 5 damage."
    no_trample = solve("and if it lost trample?", previous=previous)
    assert no_trample is not None and no_trample.outcome["player_damage"] == 0
    bigger = solve("what if I blocked with a 5/5 instead?", previous=previous)
    assert bigger is not None and bigger.outcome["player_damage"] == 1
    first_strike = solve("what if the blocker had first strike?", previous=previous)
    assert first_strike is not None and "first strike" in first_strike.scenario.permanents[1].keywords


def test_followup_on_layers() -> None:
    first = solve("base 1/1, one spell makes it 5/5, another gives +1/+1, what is it?")
    assert first is not None and first.outcome["pt"] == "6/6"
    again = solve("and with a +1/+1 counter?", previous=first.scenario)
    assert again is not None and again.outcome["pt"] == "7/7"


def test_followup_that_changes_nothing_is_declined() -> None:
    first = solve("A 6/6 trampler is blocked by a 3/3, how much damage do I take?")
    assert first is not None
    assert solve("and what about it?", previous=first.scenario) is None


def test_scenario_json_round_trip() -> None:
    solution = solve(
        "My 2/2 with first strike and a +1/+1 counter attacks, they block with a 2/2. What dies?"
    )
    assert solution is not None
    data = solution.scenario.to_json()
    assert Scenario.from_json(data) == solution.scenario
    with pytest.raises(ValueError):
        Scenario.from_json({**data, "bogus": 1})


@pytest.mark.parametrize(
    "question",
    [
        "A -1/3 creature attacks, how much damage do I take?",
        "I attack with 10,000 1/1s, how much damage does my opponent take?",
        "My 0/4 defender attacks, how much damage does my opponent take?",
        "My 3/3 attacks and my opponent blocks with my 2/2. How much damage?",
        "My 999999999/1 attacks. How much damage does my opponent take?",
    ],
)
def test_impossible_boards_get_a_clear_message(question: str) -> None:
    with pytest.raises(ImpossibleBoard) as err:
        solve(question)
    assert len(str(err.value)) > 20


def test_confidence_threshold_is_reported() -> None:
    solution = solve("My 5/5 attacks and nobody blocks. How much damage does my opponent take?")
    assert solution is not None and solution.confidence >= THRESHOLD


def test_very_long_question_is_declined() -> None:
    assert solve("My 2/2 attacks. " * 200 + "How much damage?") is None


WORDS = [
    "my",
    "their",
    "a",
    "attacks",
    "blocks",
    "with",
    "trample",
    "deathtouch",
    "3/3",
    "-1/3",
    "+2/+2",
    "0/0",
    "two",
    "-1/-1",
    "counters",
    "becomes",
    "how",
    "much",
    "damage",
    "?",
    ",",
    "and",
    "99999",
    "1/1s",
    "flying",
    "can",
    "block",
    "it",
    "what",
    "dies",
    "i'm",
    "at",
    "life",
    "poison",
    "planeswalker",
    "loyalty",
    "switch",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=6), max_size=25).map(" ".join))
def test_garbage_never_raises_anything_but_impossible_board(text: str) -> None:
    """solve() must decline or answer, and never hide a crash behind its catch-all (it logs one)."""
    failures: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = failures.append  # type: ignore[method-assign]
    logging.getLogger("rules_engine.solver").addHandler(handler)
    try:
        solution = solve(text)
    except ImpossibleBoard as err:
        assert str(err)
        return
    finally:
        logging.getLogger("rules_engine.solver").removeHandler(handler)
    assert not [r for r in failures if r.levelno >= logging.ERROR], failures[0].exc_info if failures else None
    assert solution is None or solution.verdict
