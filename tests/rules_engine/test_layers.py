"""Power and toughness through layer 7 (rule 613.4) with timestamps (613.7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rules_engine.layers import current_pt, explain_pt
from rules_engine.model import Permanent, PTEffect


def perm(power: int, toughness: int, *effects: PTEffect, plus: int = 0, minus: int = 0) -> Permanent:
    return Permanent("it", power, toughness, effects=list(effects), plus_counters=plus, minus_counters=minus)


def test_setting_applies_before_modifying_whatever_the_timestamps() -> None:
    later_set = perm(1, 1, PTEffect("modify", 2, 2, 1), PTEffect("set", 0, 1, 2))
    assert current_pt(later_set) == (2, 3)


def test_latest_setting_effect_wins() -> None:
    assert current_pt(perm(2, 2, PTEffect("set", 4, 4, 1), PTEffect("set", 1, 1, 2))) == (1, 1)
    assert current_pt(perm(2, 2, PTEffect("set", 4, 4, 2), PTEffect("set", 1, 1, 1))) == (4, 4)


def test_switch_applies_last_and_twice_cancels() -> None:
    assert current_pt(
        perm(1, 3, PTEffect("modify", 0, 1, 1), PTEffect("switch", 0, 0, 2), PTEffect("modify", 5, 0, 3))
    ) == (4, 6)
    assert current_pt(
        perm(1, 3, PTEffect("modify", 0, 1, 1), PTEffect("switch", 0, 0, 2), PTEffect("switch", 0, 0, 3))
    ) == (1, 4)


def test_gray_ogre_example_from_613_5() -> None:
    effects = (PTEffect("modify", 4, 4, 1), PTEffect("modify", 0, 2, 2), PTEffect("set", 0, 1, 3))
    assert current_pt(perm(2, 2, *effects, plus=1)) == (5, 8)


def test_steps_cite_each_sublayer() -> None:
    _, _, steps = explain_pt(
        perm(
            1,
            1,
            PTEffect("set", 5, 5, 1, "becomes 5/5"),
            PTEffect("modify", 1, 1, 2, "+1/+1"),
            PTEffect("switch", 0, 0, 3),
        )
    )
    cited = [r for s in steps for r in s.rules]
    assert cited.index("613.4b") < cited.index("613.4c") < cited.index("613.4d")


modifiers = st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), max_size=5)


@given(base=st.tuples(st.integers(0, 10), st.integers(0, 10)), mods=modifiers)
def test_layer_7c_order_does_not_matter(base: tuple[int, int], mods: list[tuple[int, int]]) -> None:
    forward = [PTEffect("modify", p, t, i) for i, (p, t) in enumerate(mods)]
    backward = [PTEffect("modify", p, t, len(mods) - i) for i, (p, t) in enumerate(mods)]
    assert current_pt(perm(*base, *forward)) == current_pt(perm(*base, *backward))


@given(plus=st.integers(0, 10), minus=st.integers(0, 10))
def test_counters_net_out(plus: int, minus: int) -> None:
    n = min(plus, minus)
    assert current_pt(perm(2, 2, plus=plus, minus=minus)) == current_pt(
        perm(2, 2, plus=plus - n, minus=minus - n)
    )
