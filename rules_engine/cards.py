"""Named cards in a question: find them, swap them for placeholders the grammar reads as creatures, and read
the P/T, colours, types and keyword lines from their oracle text.

Only exact names, folded names and nicknames are looked up (through :class:`CardDatabase`), and only where a
player would put a card name: a capitalised run of words, or a word after "my"/"their"/"a". The scryfall
``keywords`` field is not used for abilities: it lists mechanics the card mentions, not ones it has
(Poison-Tip Archer's is empty; Kindly Ancestor's lists Enchant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from knowledge.card_names import CardDatabase
from knowledge.errors import UnknownCard
from knowledge.models import Card
from rules_engine.lexicon import INERT_KEYWORDS, UNMODELED_KEYWORDS
from rules_engine.model import MODELED_KEYWORDS

WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’\-]*(?:,)?")
MAX_NAME_WORDS = 6
COLOR_NAMES = {"W": "white", "U": "blue", "B": "black", "R": "red", "G": "green"}
SENTENCE_WORDS = frozenset(
    "a an the my your their his her if i what how which who when does do can is it they he she and or but so "
    "with without then also both each all one two three four five six seven eight nine ten my our opponent "
    "opponents attacks attack blocks block trample flying reach deathtouch lifelink menace wither infect "
    "indestructible vigilance haste first double strike strikes creature creatures token tokens damage life "
    "counter counters player players planeswalker battle me you we its that this base power toughness".split()
)
# Oracle text that changes combat arithmetic in ways the calculator doesn't read.
RISKY_TEXT = re.compile(
    r"\b(damage|power|toughness|block|blocks|blocked|attacks?|combat|prevent|indestructible|[+-]\d+/[+-]\d+|"
    r"counter|protection|first strike|double strike|trample|deathtouch|lifelink|can't be)\b",
    re.IGNORECASE,
)


ENTERS_TRIGGER = re.compile(r"^When [^,]+ enters( the battlefield)?,", re.IGNORECASE)
CDA = re.compile(r"\bpower (and toughness )?(is|are) (each )?equal to|\btoughness is equal to", re.IGNORECASE)


@dataclass
class CardFacts:
    name: str
    power: int | None
    toughness: int | None
    keywords: list[str] = field(default_factory=list)
    protection: list[str] = field(default_factory=list)
    toxic: int = 0
    colors: list[str] = field(default_factory=list)
    legendary: bool = False
    artifact: bool = False
    creature: bool = True
    risky: bool = False
    """Its other rules text may change the arithmetic: the parser then refuses."""
    unmodeled: str | None = None


def substitute_cards(question: str, cards: CardDatabase | None) -> tuple[str, list[CardFacts]]:
    """The question with each named card replaced by " cardN ", and the facts of each card."""
    if cards is None:
        return question, []
    found: list[CardFacts] = []
    words = list(WORD.finditer(question))
    pieces, last, i = [], 0, 0
    while i < len(words):
        hit = _card_at(question, words, i, cards)
        if hit is None:
            i += 1
            continue
        card, used = hit
        start, end = words[i].start(), words[i + used - 1].end()
        if question[end - 1] == ",":
            end -= 1
        pieces.append(question[last:start])
        pieces.append(f" card{len(found)} ")
        found.append(card_facts(card))
        last, i = end, i + used
    pieces.append(question[last:])
    return "".join(pieces), found


def _card_at(
    question: str, words: list[re.Match[str]], i: int, cards: CardDatabase
) -> tuple[Card, int] | None:
    first = words[i].group(0).rstrip(",")
    if first[0].isupper() and first.lower() not in SENTENCE_WORDS:
        for n in range(min(MAX_NAME_WORDS, len(words) - i), 0, -1):
            span = question[words[i].start() : words[i + n - 1].end()].rstrip(",")
            card = cards.get(span)
            if card is not None:
                return card, n
    before = words[i - 1].group(0).lower() if i else ""
    if (
        before in ("my", "their", "his", "her", "a", "an", "the", "opponent's", "your")
        and first.lower() not in SENTENCE_WORDS
    ):
        for n in (2, 1):
            if i + n > len(words):
                continue
            span = question[words[i].start() : words[i + n - 1].end()].rstrip(",")
            if not cards.suggest(span, limit=1):
                continue
            try:
                return cards.resolve(span), n
            except UnknownCard:
                continue
    return None


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and re.fullmatch(r"-?\d+", value) else None


def card_facts(card: Card) -> CardFacts:
    face = card.faces[0]
    facts = CardFacts(
        name=face.name if len(card.faces) > 1 else card.name,
        power=_number(face.power),
        toughness=_number(face.toughness),
        colors=[COLOR_NAMES[c] for c in card.colors if c in COLOR_NAMES],
        legendary="Legendary" in face.type_line,
        artifact="Artifact" in face.type_line,
        creature="Creature" in face.type_line,
    )
    for line in face.oracle_text.splitlines():
        body = re.sub(r"\s*\(.*?\)", "", line).strip()
        if not body:
            continue
        if _read_keyword_line(body, facts) or ENTERS_TRIGGER.match(body):
            continue  # an enters trigger already happened for a creature in combat
        if CDA.search(body):
            facts.power = facts.toughness = None  # the question must say what it is now
        elif RISKY_TEXT.search(body):
            facts.risky = True
    return facts


def _read_keyword_line(line: str, facts: CardFacts) -> bool:
    """True when the line is a plain keyword line ("Flying, protection from red"); records what it says."""
    parts = [p.strip().lower() for p in line.split(",")]
    seen: list[tuple[str, str]] = []
    for part in parts:
        toxic = re.fullmatch(r"toxic (\d+)", part)
        protection = re.fullmatch(r"protection from (\w+)", part)
        if part in MODELED_KEYWORDS or part in INERT_KEYWORDS:
            seen.append(("keyword", part))
        elif toxic:
            seen.append(("toxic", toxic.group(1)))
        elif protection and protection.group(1) in (
            "white",
            "blue",
            "black",
            "red",
            "green",
            "creatures",
            "everything",
            "artifacts",
        ):
            seen.append(("protection", protection.group(1)))
        elif any(part.startswith(k) for k in UNMODELED_KEYWORDS) or part.startswith(
            ("protection", "annihilator")
        ):
            facts.unmodeled = part
            seen.append(("unmodeled", part))
        else:
            return False
    for kind, value in seen:
        if kind == "keyword":
            facts.keywords.append(value)
        elif kind == "toxic":
            facts.toxic += int(value)
        elif kind == "protection":
            facts.protection.append(value)
    return True
