"""Training pairs for the retriever (embedder and re-ranker): (query, rule the query should find).

Built only from the rules release, the card data and the bot's feedback votes: never from the question sets
in ``data/qa`` (those are evaluation only). Sources, each tagged so the report can count them:

* ``example``: a rule's printed "Example:" paragraphs -> the rule. They describe game situations, the way
  players ask, so they are the closest thing to real questions the rules contain;
* ``glossary``: "What is <term>?" and the glossary definition -> the rules the entry cites;
* ``subrule``: a sub-rule's text -> its parent rule (the parent states what the sub-rule details);
* ``xref``: a rule's sentence that says "see rule N" -> rule N;
* ``card``: a card's oracle text -> the defining rule of each keyword it has (702.19 for trample);
* ``ruling``: a card ruling that names a rule ("see rule 702.19c") -> that rule;
* ``feedback``: the question of an answer voted helpful -> the rules it cited.

Each pair has a ``group`` (the positive rule's top-level number, "702.19" for 702.19b) used to split
training from validation so no rule family is on both sides.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from knowledge.models import Card, RulesDocument

_RULE_REF = re.compile(r"\b(?:rule|rules|see)\s+(\d{3}(?:\.\d+[a-z]?)?)", re.IGNORECASE)
_CITED = re.compile(r"(?<![\d.])(\d{3}\.\d+[a-z]?)\b")
_EXAMPLE_PREFIX = re.compile(r"^\s*Example:\s*", re.IGNORECASE)
MIN_QUERY_CHARS = 20
MAX_QUERY_CHARS = 600


@dataclass(frozen=True, slots=True)
class RetrieverPair:
    query: str
    rule: str
    """The rule number the query should retrieve."""
    source: str
    group: str


def family(number: str) -> str:
    """702.19b -> 702.19; 702.19 -> 702.19; 702 -> 702."""
    return number.rstrip("abcdefghijklmnopqrstuvwxyz")


def _pair(query: str, rule: str, source: str, doc: RulesDocument) -> RetrieverPair | None:
    query = " ".join(query.split())
    target = doc.rules.get(rule)
    if target is not None and target.kind == "chapter" and target.children:
        rule = target.children[0]  # "see rule 707" -> 707.1, the chapter's opening rule (a passage)
        target = doc.rules.get(rule)
    if target is None or target.kind not in ("rule", "subrule") or len(query) < MIN_QUERY_CHARS:
        return None
    return RetrieverPair(query[:MAX_QUERY_CHARS], rule, source, family(rule))


def rule_pairs(doc: RulesDocument) -> list[RetrieverPair]:
    """Examples, sub-rule -> parent, cross-references, from every rule of the release."""
    out: list[RetrieverPair | None] = []
    for rule in doc.rules.values():
        if rule.kind not in ("rule", "subrule"):
            continue
        for example in rule.examples:
            out.append(_pair(_EXAMPLE_PREFIX.sub("", example), rule.number, "example", doc))
        if rule.kind == "subrule" and rule.parent in doc.rules and doc.rules[rule.parent].kind == "rule":
            out.append(_pair(rule.text, rule.parent, "subrule", doc))
        for ref in dict.fromkeys(_RULE_REF.findall(rule.text)):
            if ref != rule.number and family(ref) != family(rule.number):
                out.append(_pair(rule.text, ref, "xref", doc))
    return [p for p in out if p is not None]


def glossary_pairs(doc: RulesDocument) -> list[RetrieverPair]:
    out: list[RetrieverPair | None] = []
    for term, entry in doc.glossary.items():
        for ref in entry.references[:3]:
            out.append(_pair(f"What is {term}? {entry.text}", ref, "glossary", doc))
    return [p for p in out if p is not None]


def card_pairs(cards: Iterable[Card], doc: RulesDocument, graph=None) -> list[RetrieverPair]:
    """Oracle text -> its keywords' defining rules; rulings that cite a rule -> that rule."""
    out: list[RetrieverPair | None] = []
    for card in cards:
        text = card.oracle_block()
        if graph is not None:
            try:
                numbers = graph.rules_for_card(card.name)
            except Exception:  # noqa: BLE001 - a card the graph does not know contributes no keyword pairs
                numbers = []
            for number in numbers:
                if not number[-1].isalpha():
                    out.append(_pair(text, number, "card", doc))
        for ruling in card.rulings:
            for ref in dict.fromkeys(_RULE_REF.findall(ruling.text) + _CITED.findall(ruling.text)):
                out.append(_pair(ruling.text, ref, "ruling", doc))
    return [p for p in out if p is not None]


def feedback_pairs(rows: Iterable[Mapping], doc: RulesDocument) -> list[RetrieverPair]:
    """Helpful answers (net score > 0): their question -> each rule they cited."""
    out: list[RetrieverPair | None] = []
    for row in rows:
        if (row.get("score") or 0) <= 0:
            continue
        question = str(row.get("question") or "")
        for citation in row.get("citations") or ():
            label = citation.get("id", "") if isinstance(citation, Mapping) else str(citation)
            for number in _CITED.findall(label) or ([label] if label in doc.rules else []):
                out.append(_pair(question, number, "feedback", doc))
    return [p for p in out if p is not None]


def build_pairs(
    doc: RulesDocument,
    cards: Sequence[Card] = (),
    graph=None,
    feedback: Iterable[Mapping] = (),
) -> list[RetrieverPair]:
    """Every pair, de-duplicated on (query, rule), feedback first (scarcest and closest to real use)."""
    pairs = [
        *feedback_pairs(feedback, doc),
        *rule_pairs(doc),
        *glossary_pairs(doc),
        *card_pairs(cards, doc, graph),
    ]
    seen: set[tuple[str, str]] = set()
    out = []
    for pair in pairs:
        if (pair.query, pair.rule) not in seen:
            seen.add((pair.query, pair.rule))
            out.append(pair)
    return out


def split_pairs(
    pairs: Sequence[RetrieverPair], val_fraction: float = 0.1, sources: Iterable[str] = ("example",)
) -> tuple[list[RetrieverPair], list[RetrieverPair]]:
    """(train, validation) by a hash of each pair's rule family; validation holds only ``sources`` pairs
    (situational examples, the closest to questions), the other sources of held-out families are dropped
    so no family is on both sides."""
    keep = set(sources)
    train, val = [], []
    for pair in pairs:
        bucket = int(hashlib.sha1(pair.group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        if bucket >= val_fraction:
            train.append(pair)
        elif pair.source in keep:
            val.append(pair)
    return train, val


def counts_by_source(pairs: Iterable[RetrieverPair]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        out[pair.source] = out.get(pair.source, 0) + 1
    return out
