"""State-based actions (rule 704.5) on boards built directly."""

from __future__ import annotations

from rules_engine.model import AttackTarget, Permanent, PTEffect, Scenario
from rules_engine.sba import Board, check_state_based_actions


def board(*perms: Permanent, **kw: object) -> Board:
    return Board.start(Scenario(kind="sba", ask="deaths", permanents=list(perms), **kw))  # type: ignore[arg-type]


def test_zero_toughness_beats_indestructible() -> None:
    b = board(Permanent("it", 3, 3, keywords=["indestructible"], effects=[PTEffect("modify", -3, -3, 1)]))
    steps = check_state_based_actions(b)
    assert b.dead == {0: "704.5f"}
    assert steps[0].rules == ("704.5f",)


def test_lethal_damage_and_deathtouch() -> None:
    b = board(Permanent("a", 2, 2, damage=2), Permanent("b", 5, 5, damage=1))
    b.deathtouched.add(1)
    check_state_based_actions(b)
    assert b.dead == {0: "704.5g", 1: "704.5h"}


def test_indestructible_ignores_lethal_damage_once_reported() -> None:
    b = board(Permanent("it", 2, 2, damage=9, keywords=["indestructible"]))
    steps = check_state_based_actions(b)
    assert not b.dead
    assert [s.rules for s in steps] == [("702.12b",)]


def test_counters_annihilate() -> None:
    b = board(Permanent("it", 2, 2, plus_counters=2, minus_counters=3))
    steps = check_state_based_actions(b)
    perm = b.scenario.permanents[0]
    assert (perm.plus_counters, perm.minus_counters) == (0, 1)
    assert any("704.5q" in s.rules for s in steps)


def test_legend_rule_keeps_one_per_controller() -> None:
    mine = [Permanent(f"x{i}", 1, 1, legendary=True, card_name="X") for i in range(2)]
    theirs = Permanent("y", 1, 1, legendary=True, card_name="X", controller="opponent")
    b = board(*mine, theirs)
    check_state_based_actions(b)
    assert b.dead == {1: "704.5j"}


def test_players_lose_at_zero_life_and_ten_poison() -> None:
    b = board(Permanent("it", 1, 1))
    b.scenario.you.life = 0
    b.scenario.opponent.poison = 10
    check_state_based_actions(b)
    assert sorted(b.lost) == ["opponent", "you"]


def test_planeswalker_at_zero_loyalty_goes() -> None:
    b = board(Permanent("it", 1, 1), target=AttackTarget("planeswalker", "Jace", 0))
    steps = check_state_based_actions(b)
    assert b.target_gone and steps[0].rules[0] == "704.5i"
