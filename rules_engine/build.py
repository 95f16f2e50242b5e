"""Parsed mentions and roles -> a validated :class:`Scenario` (one permanent per creature, readable labels).

Validation is where impossible boards are caught, with a message for the user: negative printed P/T,
absurd sizes, a creature with defender attacking.
"""

from __future__ import annotations

import re
from collections import Counter

from rules_engine.errors import ImpossibleBoard
from rules_engine.mentions import Mention
from rules_engine.model import Permanent, Scenario
from rules_engine.roles import Roles

YOURS = re.compile(r"\b(i control|i have|i've got|i got)\b")
MAX_PERMANENTS = 40
MAX_NUMBER = 1_000_000
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def validate_mention(m: Mention) -> None:
    if m.count > MAX_PERMANENTS:
        raise ImpossibleBoard(
            f"The calculator handles boards of up to {MAX_PERMANENTS} creatures; this question has {m.count} of one kind."
        )
    power, toughness = m.power or 0, m.toughness or 0
    if max(abs(power), abs(toughness), m.plus, m.minus, m.damage, m.toxic) > MAX_NUMBER:
        raise ImpossibleBoard("Those numbers are too large for a board the calculator will work out.")
    if power < 0 or toughness < 0:
        raise ImpossibleBoard(
            f"A creature can't have a negative printed power or toughness: {power}/{toughness}. "
            "If effects lowered it, give the printed P/T and the effect (for example “a 1/3 that got -2/-0”)."
        )


def _label_base(m: Mention) -> str:
    return m.name if m.name else f"{m.power}/{m.toughness}"


def build_scenario(mentions: list[Mention], roles: Roles, ask: str, norm: str) -> Scenario:
    for m in mentions:
        validate_mention(m)
        if m.controller is None and not roles.attackers and YOURS.search(norm):
            m.controller = "you"
    total = sum(m.count for m in mentions)
    if total > MAX_PERMANENTS:
        raise ImpossibleBoard(
            f"The calculator handles boards of up to {MAX_PERMANENTS} creatures; this question has {total}."
        )
    labels = Counter((m.controller, _label_base(m)) for m in mentions for _ in range(m.count))
    seen: Counter[tuple[str | None, str]] = Counter()
    perms: list[Permanent] = []
    first_index: dict[int, int] = {}
    for k, m in enumerate(mentions):
        first_index[k] = len(perms)
        for _ in range(m.count):
            key = (m.controller, _label_base(m))
            seen[key] += 1
            perms.append(_permanent(m, k, roles, labels[key] > 1, seen[key]))
    if "same name" in norm:
        for p in perms:
            if p.legendary and not p.card_name:
                p.card_name = "that name"
    for p in perms:
        if p.role == "blocker" and p.blocking is not None:
            p.blocking = first_index[p.blocking]
    is_combat = bool(roles.attackers)
    for p in perms:
        if p.role == "attacker" and p.has("defender"):
            raise ImpossibleBoard(
                f"A creature with defender can't attack (rule 702.3b), so {p.label} can't be attacking."
            )
    if is_combat:
        kind = "block" if ask == "block_legal" else "combat"
    else:
        kind = "pt" if ask in ("pt", "counters") else "sba"
    subject = next((i for i, p in enumerate(perms) if mentions_base(mentions, perms, i)), 0)
    return Scenario(kind=kind, ask=ask, permanents=perms, subject=subject if perms else None)


def mentions_base(mentions: list[Mention], perms: list[Permanent], i: int) -> bool:
    return bool(perms[i].effects) or perms[i].plus_counters > 0 or perms[i].minus_counters > 0


def _permanent(m: Mention, k: int, roles: Roles, numbered: bool, nth: int) -> Permanent:
    if k in roles.attackers:
        role, blocking = "attacker", None
    elif k in roles.blockers:
        role, blocking = "blocker", roles.blockers[k]
    else:
        role, blocking = "none", None
    owner = {"you": "your", "opponent": "their"}.get(m.controller or "", "the")
    ordinal = f"{ORDINALS[nth - 1]} " if numbered and nth <= len(ORDINALS) else ""
    return Permanent(
        label=f"{owner} {ordinal}{_label_base(m)}",
        power=m.power or 0,
        toughness=m.toughness or 0,
        controller=m.controller or "you",
        role=role,
        blocking=blocking,
        keywords=list(dict.fromkeys(m.keywords)),
        toxic=m.toxic,
        protection=list(dict.fromkeys(m.protection)),
        colors=list(dict.fromkeys(m.colors)),
        artifact=m.artifact,
        legendary=m.legendary,
        card_name=m.name,
        plus_counters=m.plus,
        minus_counters=m.minus,
        damage=m.damage,
        effects=[type(e)(e.kind, e.power, e.toughness, e.timestamp, e.text) for e in m.effects],
        cant_block=m.cant_block,
        tapped=m.tapped,
    )
