"""Follow-ups in a thread: "and if it also had lifelink?", "what if the blocker had first strike?",
"what if they blocked with a 4/4 instead?", "and with two +1/+1 counters?".

The previous scenario is copied and changed; nothing the follow-up says is guessed at. A follow-up that
names no change the grammar reads is not understood (the normal answer path takes it).
"""

from __future__ import annotations

import copy
import re

from knowledge.card_names import CardDatabase
from rules_engine.asks import detect_ask
from rules_engine.boardfacts import read_players
from rules_engine.build import validate_mention
from rules_engine.errors import NotUnderstood
from rules_engine.lexicon import OUT_OF_SCOPE, keyword_at, normalise, tokenize, unmodeled_keyword_in
from rules_engine.mentions import counter_phrase, extract_mentions
from rules_engine.model import Permanent, PTEffect, Scenario
from rules_engine.parser import ParsedQuestion, parse_question

FOLLOWUP_START = re.compile(
    r"^\s*(and|but|what if|what about|how about|if|now|same|suppose|ok|okay|and what if|what would happen if)\b"
)
NEGATION = re.compile(
    r"\b(no|without|lost|loses|lose|didn't have|did not have|doesn't have|does not have|not|removed?)\W*(\w+\W*){0,1}$"
)
BLOCKER_REF = re.compile(
    r"\b(blockers?|blocking|their creatures?|their guy|the defender's|the opponent's creature|chump)\b"
)
ATTACKER_REF = re.compile(r"\b(attackers?|attacking|my creature|my guy|it|its|mine)\b")


def looks_like_followup(question: str) -> bool:
    return bool(FOLLOWUP_START.match(normalise(question))) or len(question.split()) <= 8


def apply_followup(question: str, previous: Scenario, cards: CardDatabase | None) -> ParsedQuestion:
    norm = normalise(question)
    if OUT_OF_SCOPE.search(norm) or unmodeled_keyword_in(norm):
        raise NotUnderstood("follow-up out of scope")
    tokens = tokenize(norm)
    if extract_mentions(tokens):
        return _replace_combatants(question, previous, cards)
    scenario = copy.deepcopy(previous)
    targets = _targets(norm, scenario)
    changed = _change_keywords(tokens, norm, scenario, targets)
    changed |= _change_stats(tokens, scenario, targets)
    before = (copy.copy(scenario.you), copy.copy(scenario.opponent))
    read_players(norm, scenario)
    changed |= before != (scenario.you, scenario.opponent)
    if not changed:
        raise NotUnderstood("follow-up names no change")
    ask, confidence = detect_ask(norm, scenario.kind in ("combat", "block"))
    if confidence >= 1.0:
        scenario.ask = ask
        if scenario.kind in ("combat", "block"):
            scenario.kind = "block" if ask == "block_legal" else "combat"
    return ParsedQuestion(scenario, 1.0)


def _targets(norm: str, scenario: Scenario) -> list[Permanent]:
    perms = scenario.permanents
    named = [p for p in perms if re.search(rf"\b{re.escape(f'{p.power}/{p.toughness}')}\b", norm)]
    if named:
        return named
    if BLOCKER_REF.search(norm):
        return [p for p in perms if p.role == "blocker"]
    attackers = [p for p in perms if p.role == "attacker"]
    if attackers and (ATTACKER_REF.search(norm) or scenario.kind != "pt"):
        return attackers
    return [perms[scenario.subject or 0]] if perms else []


def _change_keywords(tokens, norm: str, scenario: Scenario, targets: list[Permanent]) -> bool:
    changed = False
    for i, tok in enumerate(tokens):
        kw = keyword_at(tokens, i)
        if kw is None:
            continue
        negated = NEGATION.search(norm[: tok.start])
        for perm in targets:
            if negated and kw[0] in perm.keywords:
                perm.keywords.remove(kw[0])
            elif not negated and kw[0] not in perm.keywords:
                perm.keywords.append(kw[0])
        changed = True
    return changed


def _change_stats(tokens, scenario: Scenario, targets: list[Permanent]) -> bool:
    changed = False
    stamp = 1 + max((e.timestamp for p in scenario.permanents for e in p.effects), default=0)
    skip_to = 0
    for i, tok in enumerate(tokens):
        if i < skip_to:
            continue
        counters = counter_phrase(tokens, i) if i + 1 < len(tokens) else None
        if counters:
            for perm in targets:
                perm.plus_counters += counters[0]
                perm.minus_counters += counters[1]
            changed, skip_to = True, i + counters[2]
            continue
        m = re.fullmatch(r"([+-]\d+)/([+-]\d+)", tok.text)
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if m and not nxt.startswith("counter"):
            for perm in targets:
                perm.effects.append(PTEffect("modify", int(m.group(1)), int(m.group(2)), stamp + i, tok.text))
            changed = True
    return changed


def _replace_combatants(question: str, previous: Scenario, cards: CardDatabase | None) -> ParsedQuestion:
    """ "What if they blocked with a 4/4 instead?": new blockers (or attackers) replace the old ones."""
    fresh = parse_question(question, cards)
    new = fresh.scenario
    if previous.kind not in ("combat", "block") or new.kind == "pt" and len(new.permanents) > 1:
        raise NotUnderstood("follow-up changes too much to carry the thread")
    scenario = copy.deepcopy(previous)
    new_perms = [p for p in new.permanents]
    roles = {p.role for p in new_perms}
    if roles == {"none"}:
        roles = (
            {"blocker"}
            if BLOCKER_REF.search(normalise(question)) or "block" in normalise(question)
            else set()
        )
        for p in new_perms:
            p.role = "blocker"
    if roles != {"blocker"}:
        raise NotUnderstood("follow-up with new creatures that aren't blockers")
    attacker = scenario.attackers()[0]
    kept = [p for p in scenario.permanents if p.role != "blocker"]
    defender = "opponent" if scenario.permanents[attacker].controller == "you" else "you"
    index = kept.index(scenario.permanents[attacker])
    for p in new_perms:
        p.controller, p.role, p.blocking = defender, "blocker", index
        p.label = ("your " if defender == "you" else "their ") + p.label.split(" ", 1)[1]
        validate_mention_like(p)
    scenario.permanents = kept + new_perms
    ask, ask_confidence = detect_ask(normalise(question), True)
    if ask_confidence >= 1.0 and ask != "block_legal":
        scenario.ask = ask
    return ParsedQuestion(scenario, 1.0, fresh.notes)


def validate_mention_like(p: Permanent) -> None:
    from rules_engine.mentions import Mention

    validate_mention(Mention(0, 0, 0, power=p.power, toughness=p.toughness))
