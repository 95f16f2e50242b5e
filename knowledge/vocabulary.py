"""The rules vocabulary a card's oracle text is matched against: keywords, mechanics and glossary terms.

:func:`vocabulary` reads the keyword and mechanic nodes a release defines (keyword abilities 702.x and
actions 701.x from their heading rules, the ability words listed in 207.2c, the named concepts of section 7
from 708 on and the casual variants of section 9). :func:`build_phrases` turns those nodes and the glossary
terms into the phrases that link oracle text to them, and :func:`phrase_pattern` compiles the matcher.

Oracle text is matched on word boundaries, longest phrase first, without reminder text and without the
card's own name (:func:`card_text`); glossary terms that are everyday game words ("creature", "target",
"you", see :data:`TRIVIAL_TERMS`) are not linked because they say nothing about a card.

Everything here is pure (no graph): :class:`knowledge.graph.KnowledgeGraph` owns the nodes and edges.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from knowledge.models import Card, RulesDocument

EXCLUDED_CHAPTERS = frozenset({"731", "732"})
"""Shortcuts and illegal actions: tournament procedure rather than something a card does."""

LAYOUT_MECHANICS = {
    "split": "split cards",
    "flip": "flip cards",
    "leveler": "leveler cards",
    "transform": "double-faced cards",
    "modal_dfc": "double-faced cards",
    "meld": "double-faced cards",
    "reversible_card": "double-faced cards",
    "saga": "saga cards",
    "adventure": "adventurer cards",
    "class": "class cards",
    "case": "case cards",
    "prototype": "prototype cards",
}
"""Scryfall layout -> the card-kind chapter (mechanic node name) that governs it."""

# Glossary words and keyword actions too common in oracle text to say anything about a card.
TRIVIAL_TERMS = frozenset(
    """ability activate artifact attach attack basic battle battlefield becomes block card cast color
    colorless command control controller copy cost counter create creature damage day deal deck defense
    destroy discard double draw effect enchantment enter exchange exile forest graveyard hand if instant
    instead island land level library life mana mode mountain move name night object opponent owner pass
    pay permanent phase plains play player power prevent protect resolve reveal sacrifice search shuffle
    skip sorcery spell stack step swamp tap tapped target token toughness trigger type unless untap
    untapped x y you your zone""".split()
)

KEYWORD_SUFFIXES = (("walk", "landwalk"), ("cycling", "cycling"))
"""Keyword families whose members are spelled as one word: "Forestwalk" is Landwalk, "Islandcycling" Cycling."""

_REMINDER = re.compile(r"\([^()]*\)")
_ABILITY_WORDS = re.compile(r"The ability words are (.+?)\.$")


def name_key(name: str) -> str:
    """Lookup key of a keyword, mechanic or card name: lower case, straight apostrophes."""
    return name.lower().replace("’", "'").strip()


def vocabulary(doc: RulesDocument) -> dict[str, dict[str, Any]]:
    """Keyword and mechanic nodes the release defines: id -> attributes (with ``rule``, the defining rule)."""
    vocab: dict[str, dict[str, Any]] = {}
    for chapter, kind in (("701", "action"), ("702", "ability")):
        for number in doc.rules[chapter].children if chapter in doc.rules else []:
            rule = doc.rules[number]
            if rule.children and len(rule.text) < 60 and not rule.text.endswith("."):  # "702.19. Trample"
                vocab[f"keyword:{name_key(rule.text)}"] = {
                    "kind": "keyword",
                    "name": rule.text,
                    "keyword_kind": kind,
                    "rule": number,
                }
    words = doc.rules.get("207.2c")
    listing = _ABILITY_WORDS.search(words.text) if words else None
    for word in re.split(r",\s*(?:and\s+)?", listing.group(1)) if listing else []:
        vocab.setdefault(
            f"mechanic:{name_key(word)}",
            {"kind": "mechanic", "name": word, "mechanic_kind": "ability word", "rule": "207.2c"},
        )
    for section, first in (("7", 708), ("9", 901)):
        for number in doc.rules[section].children if section in doc.rules else []:
            if int(number) >= first and number not in EXCLUDED_CHAPTERS:
                name = doc.rules[number].text
                vocab.setdefault(
                    f"mechanic:{name_key(name)}",
                    {"kind": "mechanic", "name": name, "mechanic_kind": "chapter", "rule": number},
                )
    return vocab


def match_names(attrs: Mapping[str, Any]) -> list[str]:
    """Phrases that link a card's oracle text to this keyword / term / mechanic node (its attributes)."""
    kind = attrs["kind"]
    if kind == "keyword":
        name = name_key(attrs["name"])
        names = (
            [name, *name.split(" and ")] if name in ("tap and untap", "daybound and nightbound") else [name]
        )
        return [n for n in names if attrs["keyword_kind"] == "ability" or n not in TRIVIAL_TERMS]
    if kind == "term":
        if "(obsolete)" in name_key(attrs["term"]):
            return []
        parts = [name_key(p).strip('“”"') for p in attrs["term"].split(",")]
        return [p for p in parts if p and p not in TRIVIAL_TERMS and "[" not in p]
    if kind == "mechanic" and attrs["mechanic_kind"] == "chapter":
        name = name_key(attrs["name"])
        if name.startswith("the "):  # "The Monarch" -> "monarch"
            return [name[4:]]
        return ["rad counter"] if name == "rad counters" else []
    return []  # ability words are matched as ability headings ("Landfall — ...") instead


def build_phrases(
    nodes: Iterable[tuple[str, Mapping[str, Any]]], has_node: Callable[[str], bool]
) -> dict[str, str]:
    """Phrase -> node id for every keyword, mechanic and term node in ``nodes``.

    A keyword beats a term of the same name ("trample"); a glossary spelling of a keyword family member
    ("Forestwalk") points at the family's keyword (Landwalk) when ``has_node`` says it exists.
    """
    phrases: dict[str, str] = {}
    for node, attrs in nodes:
        if attrs.get("kind") not in ("keyword", "mechanic", "term"):
            continue
        for phrase in match_names(attrs):
            if phrase not in phrases or attrs["kind"] == "keyword":
                phrases[phrase] = node
    for phrase, node in phrases.items():
        for suffix, keyword in KEYWORD_SUFFIXES:
            if node.startswith("term:") and phrase.endswith(suffix) and has_node(f"keyword:{keyword}"):
                phrases[phrase] = f"keyword:{keyword}"
    return phrases


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for all ``phrases`` on word boundaries, longest first, allowing a plural; None if none."""
    ordered = sorted(phrases, key=len, reverse=True)
    if not ordered:
        return None
    alternation = "|".join(re.escape(p) for p in ordered)
    return re.compile(rf"(?<![\w-])(?:{alternation})(?:s|es)?(?![\w-])")


def phrase_node(phrases: Mapping[str, str], phrase: str) -> str | None:
    """The node a matched phrase means, after dropping a plural ending."""
    for candidate in (phrase, phrase.removesuffix("s"), phrase.removesuffix("es")):
        if candidate in phrases:
            return phrases[candidate]
    return None


def keyword_node(name: str, phrases: Mapping[str, str], has_node: Callable[[str], bool]) -> str | None:
    """The keyword node a keyword name means, also for variants ("Forestwalk" -> Landwalk,
    "Islandcycling" -> Cycling, "Partner with" -> Partner, "Hexproof from" -> Hexproof)."""
    key = name_key(name)
    for phrase in (key, key.split(" with ")[0], key.split(" from ")[0]):
        if has_node(f"keyword:{phrase}"):
            return f"keyword:{phrase}"
        target = phrases.get(phrase)
        if target and target.startswith("keyword:"):
            return target
    for suffix, keyword in KEYWORD_SUFFIXES:
        if key.endswith(suffix) and has_node(f"keyword:{keyword}"):
            return f"keyword:{keyword}"
    return None


def ability_word_heads(text: str, ability_words: Mapping[str, str]) -> list[str]:
    """Nodes of the ability words heading abilities in matched ``text`` ("landfall — whenever ...")."""
    heads = (line.split(" — ", 1)[0] for line in text.split("\n") if " — " in line)
    return [ability_words[h] for h in heads if h in ability_words]


def card_text(card: Card) -> str:
    """Oracle text as matched: lowercased, straight apostrophes, no reminder text, no self-references."""
    text = "\n".join(face.oracle_text for face in card.faces if face.oracle_text)
    text = _REMINDER.sub("", text.replace("’", "'"))
    for name in sorted({card.name, *(f.name for f in card.faces)}, key=len, reverse=True):
        if name:
            text = re.sub(re.escape(name.replace("’", "'")), "this", text, flags=re.IGNORECASE)
    return "\n".join(" ".join(line.split()) for line in text.lower().split("\n") if line.strip())
