"""Facts around the creatures: P/T effects and counters said outside a mention ("it gets +2/+2", "one spell
makes it 5/5", "switch its power and toughness", "put two +1/+1 counters on it"), life and poison totals,
and a planeswalker or battle being attacked.
"""

from __future__ import annotations

import re

from rules_engine.errors import NotUnderstood
from rules_engine.lexicon import Token, parse_pt
from rules_engine.mentions import Mention, counter_phrase, is_set_effect
from rules_engine.model import AttackTarget, PTEffect, Scenario

SWITCH_WORDS = frozenset(
    {"switch", "switches", "switched", "swap", "swaps", "swapped", "exchange", "exchanges", "inverts"}
)
NUM = r"(\d+)"
YOU_LIFE = re.compile(
    rf"\b(i'?m|i am|i have|i'm sitting|my life total is|my life is|i'm on|i am on|i'm at|i am at)\s*(at|on)?\s*{NUM}(?![\d/])(?!\s*(poison|\+|-|counter|damage|creature|card|\d))\s*(life|hp)?\b"
)
OPP_LIFE = re.compile(
    rf"\b(they'?re|they are|they have|he'?s|he is|he has|she'?s|she is|she has|(my )?opponent('s| is| has)?|"
    rf"(their|his|her|my opponent's) life total is)\s*(at|on)?\s*{NUM}(?![\d/])(?!\s*(poison|\+|-|counter|damage|creature|card|\d))\s*(life|hp)?\b"
)
YOU_POISON = re.compile(
    rf"\b(i'?m|i am|i have|i'm at|i'm on|i am at|i am on|i already have)\s*(at|on)?\s*{NUM} poison"
)
OPP_POISON = re.compile(
    rf"\b(they'?re|they are|they have|he'?s|he has|she'?s|she has|(my )?opponent('s| is| has)?|they already have)\s*(at|on)?\s*{NUM} poison"
)
WALKER = re.compile(r"\b(planeswalker|walker|pw)\b")
WALKER_LOYALTY = re.compile(
    rf"\b(planeswalker|walker|pw)\b[^.?]*?\b{NUM} loyalty|\b{NUM}[- ]loyalty\b|\bloyalty (of )?{NUM}\b"
)
BATTLE_DEFENSE = re.compile(rf"\bbattle\b[^.?]*?\b{NUM} defense|\b{NUM}[- ]defense\b|\bdefense (of )?{NUM}\b")
ATTACKS_WALKER = re.compile(r"\b(attack\w*|swing\w*|hit\w*)\b[^.?]*\b(planeswalker|walker|pw|battle)\b")


def _target_mention(mentions: list[Mention], i: int) -> Mention | None:
    before = [m for m in mentions if m.end <= i]
    if before:
        return before[-1]
    return mentions[0] if mentions else None


def read_effects(tokens: list[Token], mentions: list[Mention]) -> int:
    """Attaches effects and loose counters to the nearest mention before them; returns how many had none."""
    inside = {i for m in mentions for i in range(m.start, m.end)}
    strays, i = 0, 0
    while i < len(tokens):
        if i in inside:
            i += 1
            continue
        target = _target_mention(mentions, i)
        asked = i > 0 and tokens[i - 1].text in ("many", "much", "what", "which", "any", "of")
        counters = counter_phrase(tokens, i) if i + 1 < len(tokens) else None
        if asked and counters:  # "how many -1/-1 counters": the question, not a counter on the board
            i += counters[2]
            continue
        pt = parse_pt(tokens[i].text)
        effect: PTEffect | None = None
        if counters:
            if target is None:
                strays += 1
            else:
                target.plus += counters[0]
                target.minus += counters[1]
            i += counters[2]
            continue
        if pt and pt[2]:
            effect = PTEffect("modify", pt[0], pt[1], i, tokens[i].text)
        elif pt and is_set_effect(tokens, i):
            effect = PTEffect("set", pt[0], pt[1], i, f"becomes {pt[0]}/{pt[1]}")
        elif tokens[i].text in SWITCH_WORDS:
            effect = PTEffect("switch", 0, 0, i, "switch its power and toughness")
        if effect is not None:
            if target is None:
                strays += 1
            else:
                target.effects.append(effect)
        i += 1
    return strays


def read_players(norm: str, scenario: Scenario) -> None:
    for pattern, player in ((YOU_LIFE, scenario.you), (OPP_LIFE, scenario.opponent)):
        m = pattern.search(norm)
        if m:
            player.life = int(next(g for g in m.groups() if g and g.isdigit()))
    for pattern, player in ((YOU_POISON, scenario.you), (OPP_POISON, scenario.opponent)):
        m = pattern.search(norm)
        if m:
            player.poison = int(next(g for g in m.groups() if g and g.isdigit()))


def read_target(norm: str, scenario: Scenario) -> None:
    if not ATTACKS_WALKER.search(norm):
        return
    if WALKER.search(norm):
        m = WALKER_LOYALTY.search(norm)
        if not m:
            raise NotUnderstood("planeswalker without a loyalty")
        loyalty = int(next(g for g in m.groups() if g and g.isdigit()))
        scenario.target = AttackTarget("planeswalker", "the planeswalker", loyalty)
        return
    m = BATTLE_DEFENSE.search(norm)
    if not m:
        raise NotUnderstood("battle without a defense")
    scenario.target = AttackTarget(
        "battle", "the battle", int(next(g for g in m.groups() if g and g.isdigit()))
    )
