"""From a player's question to a :class:`Scenario`, with a confidence.

Deterministic: card names are swapped for placeholders (:mod:`cards`), the text is normalised and tokenised
(:mod:`lexicon`), creature mentions are read (:mod:`mentions`), effects and board facts are attached, roles
and controllers are assigned (:mod:`roles`), and the question's ask is classified (:mod:`asks`). Anything
the grammar can't place lowers the confidence; :data:`THRESHOLD` decides whether the calculator answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from knowledge.card_names import CardDatabase
from rules_engine.asks import detect_ask
from rules_engine.boardfacts import read_effects, read_players, read_target
from rules_engine.build import build_scenario
from rules_engine.cards import CardFacts, substitute_cards
from rules_engine.errors import NotUnderstood
from rules_engine.lexicon import (
    KNOWN_WORDS,
    OUT_OF_SCOPE,
    Token,
    keyword_at,
    normalise,
    tokenize,
    unmodeled_keyword_in,
)
from rules_engine.mentions import Mention, extract_mentions
from rules_engine.model import Scenario, Step
from rules_engine.roles import Roles, assign_controllers, assign_roles

THRESHOLD = 0.75
MAX_QUESTION_CHARS = 1500
COMBAT_WORDS = re.compile(r"\b(attack\w*|block\w*|swing\w*|swung|chump\w*|combat|trample\w*)\b")


@dataclass
class ParsedQuestion:
    scenario: Scenario
    confidence: float
    notes: list[Step] = field(default_factory=list)


def parse_question(question: str, cards: CardDatabase | None = None) -> ParsedQuestion:
    """The scenario the question describes; raises :class:`NotUnderstood` or ``ImpossibleBoard``."""
    if len(question) > MAX_QUESTION_CHARS:
        raise NotUnderstood("question too long for the calculator")
    text, facts = substitute_cards(question, cards)
    norm = normalise(text)
    scope = OUT_OF_SCOPE.search(norm)
    if scope:
        raise NotUnderstood(f"out of scope: {scope.group(0)!r}")
    unmodeled = unmodeled_keyword_in(norm)
    if unmodeled:
        raise NotUnderstood(f"keyword not modelled: {unmodeled}")
    tokens = tokenize(norm)
    mentions = extract_mentions(tokens)
    if not mentions:
        raise NotUnderstood("no creature in the question")
    for m in mentions:
        if m.unknown:
            raise NotUnderstood(f"unknown ability: {m.unknown[0]}")
    confidence, notes = _apply_cards(mentions, facts)
    strays = read_effects(tokens, mentions)
    is_combat = bool(COMBAT_WORDS.search(norm))
    roles = (
        assign_roles(mentions, tokens, norm) if is_combat else Roles(unassigned=list(range(len(mentions))))
    )
    if is_combat:
        assign_controllers(mentions, roles, norm)
    ask, ask_confidence = detect_ask(norm, is_combat)
    confidence = min(confidence, ask_confidence)
    scenario = build_scenario(mentions, roles, ask, norm)
    read_players(norm, scenario)
    read_target(norm, scenario)
    _name_defender(scenario)
    if not is_combat:
        _check_board_question(scenario, mentions)
    confidence -= (
        0.3 * strays + _role_penalty(scenario, roles, is_combat) + _unknown_word_penalty(tokens, mentions)
    )
    return ParsedQuestion(scenario, round(max(0.0, confidence), 2), notes)


def _check_board_question(scenario: Scenario, mentions: list[Mention]) -> None:
    """Without combat the calculator answers P/T and state-based-action questions about one creature (or
    copies of one legendary): anything else has nothing for it to compute."""
    if scenario.ask not in ("pt", "counters", "deaths"):
        raise NotUnderstood(f"{scenario.ask} question without combat")
    if len(mentions) != 1:
        raise NotUnderstood("several creatures without combat")
    perm = scenario.permanents[0]
    legend = len(scenario.permanents) > 1 and perm.legendary and perm.card_name
    changed = perm.effects or perm.plus_counters or perm.minus_counters or perm.damage or perm.toughness <= 0
    if not (legend or changed):
        raise NotUnderstood("nothing to compute about the creature")


def _unknown_word_penalty(tokens: list[Token], mentions: list[Mention]) -> float:
    """Questions with many words the grammar doesn't know are about something else too."""
    inside = {i for m in mentions for i in range(m.start, m.end)}
    outside = [i for i in range(len(tokens)) if i not in inside]
    # An ability the grammar couldn't attach to a creature: whose it is, is a guess.
    floating = sum(
        1
        for i in outside
        if (keyword_at(tokens, i) or tokens[i].text in ("protection", "toxic"))
        and not (i + 1 < len(tokens) and tokens[i + 1].text == "damage")  # "how much trample damage"
    )
    words = [tokens[i].text for i in outside if tokens[i].text[0].isalpha()]
    if not words:
        return 0.3 * floating
    unknown = sum(1 for w in words if w not in KNOWN_WORDS and w.rstrip("s") not in KNOWN_WORDS)
    return 0.3 * floating + max(0.0, unknown / len(words) - 0.35)


def _name_defender(scenario: Scenario) -> None:
    attackers = scenario.attackers()
    if scenario.target.kind == "player" and attackers:
        theirs = scenario.permanents[attackers[0]].controller == "opponent"
        scenario.target.name = "you" if theirs else "your opponent"


def _role_penalty(scenario: Scenario, roles: Roles, is_combat: bool) -> float:
    if not is_combat:
        return 0.0
    penalty = 0.0
    if not roles.attackers:
        penalty += 0.6
    if roles.unassigned:
        penalty += 0.3
    if roles.ambiguous:
        penalty += 0.3
    return penalty


def _apply_cards(mentions: list[Mention], facts: list[CardFacts]) -> tuple[float, list[Step]]:
    confidence, notes = 1.0, []
    for m in mentions:
        if m.card is None:
            continue
        card = facts[m.card]
        if card.unmodeled:
            raise NotUnderstood(f"{card.name} has {card.unmodeled}")
        if not card.creature and m.power is None:
            raise NotUnderstood(f"{card.name} isn't a creature")
        if m.power is None:
            if card.power is None or card.toughness is None:
                raise NotUnderstood(f"{card.name}'s power/toughness is not a fixed number")
            m.power, m.toughness = card.power, card.toughness
        m.keywords = list(dict.fromkeys([*card.keywords, *m.keywords]))
        m.protection += card.protection
        m.toxic += card.toxic
        m.colors = m.colors or card.colors
        m.legendary |= card.legendary
        m.artifact |= card.artifact
        m.name = card.name
        if card.risky:
            confidence = min(confidence, 0.5)
        notes.append(
            Step(
                f"{card.name}: {m.power}/{m.toughness}"
                + (f", {', '.join(m.keywords)}" if m.keywords else "")
                + " (from its oracle text).",
                (),
            )
        )
    return confidence, notes
