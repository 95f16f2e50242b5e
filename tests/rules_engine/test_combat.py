"""Combat damage and blocking legality on scenarios built directly (no parser), plus property tests."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rules_engine.combat import block_problems, resolve_combat
from rules_engine.model import Permanent, Scenario


def attack(attacker: Permanent, *blockers: Permanent, ask: str = "outcome") -> Scenario:
    attacker.role = "attacker"
    for b in blockers:
        b.role, b.blocking, b.controller = "blocker", 0, "opponent"
    return Scenario(kind="combat", ask=ask, permanents=[attacker, *blockers])


def creature(power: int, toughness: int, *keywords: str, **kw: object) -> Permanent:
    return Permanent(f"the {power}/{toughness}", power, toughness, keywords=list(keywords), **kw)  # type: ignore[arg-type]


def test_trample_assigns_lethal_then_the_rest_to_the_player() -> None:
    board, steps = resolve_combat(attack(creature(6, 6, "trample"), creature(3, 3)))
    assert board.player_damage["opponent"] == 3
    assert any("702.19b" in s.rules for s in steps)


def test_trample_counts_damage_already_marked() -> None:
    board, _ = resolve_combat(attack(creature(6, 6, "trample"), creature(3, 3, damage=2)))
    assert board.player_damage["opponent"] == 5


def test_deathtouch_makes_one_damage_lethal_for_trample() -> None:
    board, steps = resolve_combat(
        attack(creature(5, 5, "trample", "deathtouch"), creature(2, 2), creature(3, 3))
    )
    assert board.player_damage["opponent"] == 3
    assert any("702.2c" in s.rules for s in steps)
    assert set(board.dead) == {0, 1, 2}


def test_double_strike_trample_second_step_goes_to_player_when_blocker_died() -> None:
    board, steps = resolve_combat(attack(creature(3, 3, "double strike", "trample"), creature(2, 2)))
    assert board.player_damage["opponent"] == 4
    assert any("702.19d" in s.rules for s in steps)


def test_blocked_creature_without_trample_deals_nothing_once_blocker_is_gone() -> None:
    board, steps = resolve_combat(attack(creature(4, 4, "double strike"), creature(2, 2, "first strike")))
    assert board.player_damage.get("opponent", 0) == 0
    assert board.damage_dealt[1] == 4
    assert any("510.1c" in s.rules for s in steps)


def test_first_strike_kills_before_regular_damage() -> None:
    board, _ = resolve_combat(attack(creature(3, 3, "first strike"), creature(2, 2, "deathtouch")))
    assert list(board.dead) == [1]


def test_protection_prevents_damage_but_trample_must_still_assign_lethal() -> None:
    red = creature(6, 6, "trample", colors=["red"])
    board, steps = resolve_combat(attack(red, creature(2, 2, protection=["red"])))
    assert board.player_damage["opponent"] == 4
    assert 1 not in board.dead
    assert any("702.16e" in s.rules for s in steps)


def test_infect_gives_poison_and_wither_gives_counters() -> None:
    board, _ = resolve_combat(attack(creature(3, 3, "infect")))
    assert board.poison_added["opponent"] == 3
    assert board.player_damage["opponent"] == 3
    board, _ = resolve_combat(attack(creature(3, 3, "wither"), creature(4, 4)))
    assert board.counters_placed[1] == 3
    assert board.scenario.permanents[1].minus_counters == 3


def test_lifelink_gains_for_damage_to_creatures_too() -> None:
    board, _ = resolve_combat(attack(creature(3, 3, "lifelink"), creature(1, 1)))
    assert board.life_gained["you"] == 3


def test_indestructible_survives_lethal_and_deathtouch() -> None:
    board, steps = resolve_combat(attack(creature(4, 4, "deathtouch"), creature(2, 2, "indestructible")))
    assert 1 not in board.dead
    assert any("702.12b" in s.rules for s in steps)


def test_block_restrictions() -> None:
    assert block_problems(attack(creature(2, 2, "flying"), creature(3, 3)))[0].rules[0] == "702.9b"
    assert not block_problems(attack(creature(2, 2, "flying"), creature(1, 4, "reach")))
    assert block_problems(attack(creature(3, 3, "menace"), creature(2, 2)))[0].rules[0] == "702.111b"
    assert not block_problems(attack(creature(3, 3, "menace"), creature(1, 1), creature(1, 1)))
    assert block_problems(attack(creature(2, 2, protection=["green"]), creature(3, 3, colors=["green"])))
    assert block_problems(attack(creature(2, 2), creature(3, 3, tapped=True)))[0].rules == ("509.1a",)


blockers_strategy = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 3)).map(
        lambda t: creature(t[0], t[0] + 1, damage=min(t[1], t[0]))
    ),
    min_size=0,
    max_size=4,
)


@given(
    power=st.integers(1, 20),
    trample=st.booleans(),
    deathtouch=st.booleans(),
    blockers=blockers_strategy,
)
def test_total_damage_assigned_equals_attackers_power(
    power: int, trample: bool, deathtouch: bool, blockers: list[Permanent]
) -> None:
    keywords = [k for k, on in (("trample", trample), ("deathtouch", deathtouch)) if on]
    board, _ = resolve_combat(attack(creature(power, 30, *keywords), *blockers))
    to_blockers = sum(n for i, n in board.damage_dealt.items() if i != 0)
    assert to_blockers + board.player_damage.get("opponent", 0) == power
    if blockers and not trample:
        assert board.player_damage.get("opponent", 0) == 0


@given(
    power=st.integers(1, 20),
    toughness=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    deathtouch=st.booleans(),
)
def test_trample_damage_to_player_is_power_minus_lethal(
    power: int, toughness: list[int], deathtouch: bool
) -> None:
    keywords = ["trample", "deathtouch"] if deathtouch else ["trample"]
    blockers = [creature(1, t) for t in toughness]
    board, _ = resolve_combat(attack(creature(power, 30, *keywords), *blockers))
    lethal = len(toughness) if deathtouch else sum(toughness)
    assert board.player_damage.get("opponent", 0) == max(0, power - lethal)
