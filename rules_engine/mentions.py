"""Creature mentions in a question: "my 5/5 trample deathtouch", "two 1/1s", "a red 3/3 with first strike and
two +1/+1 counters", "their Poison-Tip Archer".

A mention is anchored on a P/T token (or a card name the card database knows) and grows left over
determiners, counts, colours and keywords, and right over creature nouns, keywords and a "with ..." clause.
P/T tokens that are effects ("+2/+2", "becomes a 5/5") or counters ("-1/-1 counters") never anchor one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rules_engine.lexicon import (
    COLOR_WORDS,
    CREATURE_NOUNS,
    DETERMINERS,
    MODIFIER_ADJECTIVES,
    POSSESSIVE_OPPONENT,
    POSSESSIVE_YOU,
    Token,
    keyword_at,
    parse_pt,
)
from rules_engine.model import COLORS, Controller, PTEffect

SET_CUE = re.compile(
    r"\b(makes?|made|making|becomes?|became|become|turns?( it)? into|sets?( it| its \w+( and \w+)?)? (to|at)|"
    r"set (to|at)|base \w*( and \w+)? (of|to|is|becomes?|are)|is now|now)( it| him| her| them)?( an?)?$"
)
CARD_TOKEN = re.compile(r"^card(\d+)$")
PROTECTION_QUALITIES = set(COLORS) | {"creatures", "everything", "artifacts", "multicolored"}
WITH_WORDS = frozenset({"with", "has", "have", "had", "having", "that", "which", "who"})
FILLER = WITH_WORDS | {"also", "both", "it", "on", "marked", "already", "is", "and", ","}


@dataclass
class Mention:
    start: int
    end: int
    anchor: int
    power: int | None = None
    toughness: int | None = None
    count: int = 1
    controller: Controller | None = None
    keywords: list[str] = field(default_factory=list)
    toxic: int = 0
    protection: list[str] = field(default_factory=list)
    colors: list[str] = field(default_factory=list)
    artifact: bool = False
    legendary: bool = False
    tapped: bool = False
    cant_block: bool = False
    plus: int = 0
    minus: int = 0
    damage: int = 0
    card: int | None = None
    """Index into the parser's resolved cards for a "cardN" placeholder."""
    effects: list[PTEffect] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    base: bool = False
    name: str | None = None
    """Card name, for a mention of a named card."""
    definite: bool = False
    """Named with "the"/"my"/"their"/"it" and no count: may be a creature mentioned before."""
    indefinite: bool = False
    role_hint: str | None = None
    """"attacker" or "blocker" when the mention itself says so ("a 2/2 blocker")."""


def is_set_effect(tokens: list[Token], i: int) -> bool:
    before = " ".join(t.text for t in tokens[max(0, i - 5) : i])
    return bool(SET_CUE.search(before))


def counter_phrase(tokens: list[Token], i: int) -> tuple[int, int, int] | None:
    """(plus, minus, tokens used) for "2 +1/+1 counters", "a -1/-1 counter", "+1/+1 counter" at ``i``."""
    n, j = 1, i
    if tokens[j].text.isdigit():
        n, j = int(tokens[j].text), j + 1
    elif tokens[j].text in ("a", "an", "another", "1"):
        j += 1
    if j + 1 >= len(tokens) or not tokens[j + 1].text.startswith("counter"):
        return None
    if tokens[j].text in ("+1/+1", "+1/+1s"):
        return n, 0, j + 2 - i
    if tokens[j].text in ("-1/-1", "-1/-1s"):
        return 0, n, j + 2 - i
    return None


def anchors(tokens: list[Token]) -> list[int]:
    """Token indexes of creature P/T tokens and card placeholders."""
    found = []
    for i, tok in enumerate(tokens):
        pt = parse_pt(tok.text)
        if CARD_TOKEN.match(tok.text):
            found.append(i)
        elif pt and not pt[2] and not is_set_effect(tokens, i):
            nxt = tokens[i + 1].text if i + 1 < len(tokens) else ""
            if not nxt.startswith("counter"):
                found.append(i)
    return found


def _scan_left(tokens: list[Token], m: Mention, floor: int) -> None:
    i = m.anchor - 1
    while i >= floor:
        word = tokens[i].text
        kw = keyword_at(tokens, i)
        if word in POSSESSIVE_YOU:
            m.controller = m.controller or "you"
        elif word in POSSESSIVE_OPPONENT:
            m.controller = m.controller or "opponent"
        elif word.isdigit():
            m.count = int(word)
            m.indefinite = True
        elif word in COLOR_WORDS:
            m.colors.append(COLOR_WORDS[word])
        elif kw:
            m.keywords.append(kw[0])
        elif word in MODIFIER_ADJECTIVES:
            _adjective(m, word)
        elif word not in DETERMINERS:
            break
        if word in ("the", "this", "that", "my", "their", "his", "her", "your"):
            m.definite = True
        elif word in ("a", "an", "another", "other"):
            m.indefinite = True
        i -= 1
    m.start = i + 1


def _adjective(m: Mention, word: str) -> None:
    if word == "legendary":
        m.legendary = True
    elif word == "artifact":
        m.artifact = True
    elif word == "tapped":
        m.tapped = True
    elif word == "base":
        m.base = True


def _scan_right(tokens: list[Token], m: Mention, ceiling: int) -> None:
    j, in_with, end = m.anchor + 1, False, m.anchor + 1
    while j < ceiling:
        used = _right_item(tokens, j, m, in_with, ceiling)
        if used == 0:
            break
        word = tokens[j].text
        if word in WITH_WORDS:
            in_with = True
        j += used
        if word not in FILLER:
            end = j  # trailing "with", "and", "it" that led nowhere stay outside the mention
    m.end = end


def _right_item(tokens: list[Token], j: int, m: Mention, in_with: bool, ceiling: int) -> int:
    """How many tokens at ``j`` belong to the mention (0: it ends here), recording what they say."""
    word = tokens[j].text
    nxt = tokens[j + 1].text if j + 1 < ceiling else ""
    singular = word[:-1] if word.endswith("s") else word
    kw = keyword_at(tokens, j)
    counters = counter_phrase(tokens, j) if j + 1 < ceiling else None
    if counters:
        m.plus += counters[0]
        m.minus += counters[1]
        return counters[2]
    negated = _negated_keyword(tokens, j)
    if negated:
        return negated
    if kw:
        m.keywords.append(kw[0])
        return 1
    if word in CREATURE_NOUNS or singular in CREATURE_NOUNS or CARD_TOKEN.match(word):
        if CARD_TOKEN.match(word) and m.card is None:
            m.card = int(word[4:])
        if singular in ("attacker", "blocker"):
            m.role_hint = singular
        return 1
    if word in WITH_WORDS or (
        in_with and word in ("also", "both", "it", "on", "marked", "already", "is", "untapped")
    ):
        return 1
    if word == "and" or word == ",":
        follow = tokens[j + 1 : j + 3]
        if follow and (
            keyword_at(tokens, j + 1)
            or counter_phrase(tokens, j + 1)
            or follow[0].text in ("protection", "toxic", "with")
            or (len(follow) == 2 and follow[0].text.isdigit() and follow[1].text == "damage")
        ):
            return 1
        return 0
    return _with_clause_item(tokens, j, m, in_with, nxt)


def _negated_keyword(tokens: list[Token], j: int) -> int:
    """Tokens used by "without flying", "doesn't have flying", "that has no trample" (nothing is added)."""
    words = [t.text for t in tokens[j : j + 3]]
    lead = 2 if words[:2] in (["doesn't", "have"], ["does", "not"], ["has", "no"]) else 1
    if words[0] not in ("without", "lacks", "lacking", "doesn't", "does", "has", "no"):
        return 0
    if words[0] in ("does", "has") and lead == 1:
        return 0
    if words[:3] == ["does", "not", "have"]:
        lead = 3
    kw = keyword_at(tokens, j + lead) if j + lead < len(tokens) else None
    return lead + kw[1] if kw else 0


def _with_clause_item(tokens: list[Token], j: int, m: Mention, in_with: bool, nxt: str) -> int:
    word = tokens[j].text
    if word == "protection" and nxt == "from" and j + 2 < len(tokens):
        quality = tokens[j + 2].text
        if quality in ("all", "each") and j + 3 < len(tokens) and tokens[j + 3].text.startswith("color"):
            m.protection.extend(COLORS)
            return 4
        quality = {"artifact": "artifacts", "creature": "creatures"}.get(quality, quality)
        if quality in PROTECTION_QUALITIES:
            m.protection.append(quality)
            return 3
        m.unknown.append(f"protection from {quality}")
        return 0
    if word == "toxic" and nxt.isdigit():
        m.toxic += int(nxt)
        return 2
    if word.isdigit() and nxt == "damage":
        m.damage += int(word)
        return 2
    if word in ("can't", "cannot") and nxt == "block":
        m.cant_block = True
        return 2
    if word == "tapped":
        m.tapped = True
        return 1
    if in_with and word.isalpha() and word not in STOP_WORDS:
        m.unknown.append(word)
    return 0


STOP_WORDS = frozenset(
    {
        "attacks",
        "attack",
        "attacking",
        "attacked",
        "blocks",
        "block",
        "blocking",
        "blocked",
        "swings",
        "swing",
        "is",
        "are",
        "was",
        "were",
        "gets",
        "get",
        "got",
        "and",
        "then",
        "but",
        "so",
        "how",
        "what",
        "which",
        "who",
        "does",
        "do",
        "did",
        "if",
        "when",
        "i",
        "they",
        "he",
        "she",
        "you",
        "it",
        "me",
        "my",
        "their",
        "the",
        "a",
        "an",
        "into",
        "in",
        "from",
        "until",
        "end",
        "turn",
        "this",
        "chump",
        "double",
        "triple",
        "will",
        "would",
        "can",
        "could",
        "now",
        "each",
        "both",
        "all",
        "to",
        "for",
        "of",
        "on",
        "by",
        "at",
        "after",
        "before",
        "counters",
        "counter",
        "damage",
        "life",
        "poison",
        "its",
        "his",
        "her",
        "becomes",
        "become",
        "power",
        "toughness",
        "switched",
        "swapped",
        "gains",
        "gain",
        "loses",
        "lose",
        "deals",
        "deal",
        "takes",
        "take",
        "dies",
        "die",
        "survives",
        "survive",
    }
)


def extract_mentions(tokens: list[Token]) -> list[Mention]:
    found: list[Mention] = []
    points = anchors(tokens)
    for k, anchor in enumerate(points):
        m = Mention(start=anchor, end=anchor + 1, anchor=anchor)
        pt = parse_pt(tokens[anchor].text)
        if pt:
            m.power, m.toughness = pt[0], pt[1]
        elif CARD_TOKEN.match(tokens[anchor].text):
            m.card = int(tokens[anchor].text[4:])
        floor = found[-1].end if found else 0
        ceiling = points[k + 1] if k + 1 < len(points) else len(tokens)
        _scan_left(tokens, m, floor)
        _scan_right(tokens, m, ceiling)
        if found and _merges(found[-1], m, tokens):
            _merge(found[-1], m)
            continue
        found.append(m)
    return _resolve_coreference(found)


def _same_creature(earlier: Mention, m: Mention) -> bool:
    if not m.definite or m.indefinite or m.count != 1:
        return False
    if m.controller and earlier.controller and m.controller != earlier.controller:
        return False
    if m.card is not None or earlier.card is not None:
        return m.name is not None and m.name == earlier.name
    return (m.power, m.toughness) == (earlier.power, earlier.toughness) and earlier.count == 1


def _resolve_coreference(found: list[Mention]) -> list[Mention]:
    """ "the 3/3 has 2 damage on it", "does my 4/4 survive?": a definite mention of a P/T seen before is that
    creature again; what it adds (damage, counters, keywords) goes to the first mention."""
    kept: list[Mention] = []
    for m in found:
        earlier = next((e for e in kept if _same_creature(e, m)), None)
        if earlier is None:
            kept.append(m)
            continue
        earlier.controller = earlier.controller or m.controller
        for name in ("keywords", "protection", "colors", "effects"):
            getattr(earlier, name).extend(getattr(m, name))
        earlier.plus += m.plus
        earlier.minus += m.minus
        earlier.damage += m.damage
        earlier.toxic += m.toxic
    return kept


def _merges(prev: Mention, m: Mention, tokens: list[Token]) -> bool:
    """ "my 4/5 Tarmogoyf" or "Tarmogoyf (4/5)": a card token and a P/T token that name one creature."""
    gap = [t.text for t in tokens[prev.end : m.start]]
    adjacent = all(w in ("(", ")", ",", "a", "as") for w in gap) and m.start - prev.end <= 2
    one_card = (prev.card is None) != (m.card is None)
    one_pt = (prev.power is None) != (m.power is None)
    return adjacent and one_card and one_pt


def _merge(prev: Mention, m: Mention) -> None:
    prev.end = m.end
    if prev.power is None:
        prev.power, prev.toughness = m.power, m.toughness
    prev.card = prev.card if prev.card is not None else m.card
    prev.controller = prev.controller or m.controller
    for name in ("keywords", "protection", "colors", "unknown", "effects"):
        getattr(prev, name).extend(getattr(m, name))
    prev.toxic += m.toxic
    prev.plus += m.plus
    prev.minus += m.minus
    prev.damage += m.damage
    prev.cant_block |= m.cant_block
    prev.tapped |= m.tapped
