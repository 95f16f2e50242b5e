"""Turn parsed rules and cards into retrievable :class:`~knowledge.models.Passage`s, and say what to embed.

One passage per rule and per sub-rule (with its examples: a rule is never split), one per glossary entry,
one per card (all faces) and one per ruling. Sections and chapters ("5. Turn Structure", "505. Main Phase")
are headings with no rules text of their own: they are not passages, they become the passages' titles.

What a user is shown (``Passage.text``) is the exact printed text. What is *embedded* and indexed for BM25
(:func:`index_text`) adds context a bare sub-rule lacks: the chapter and the rule heading it sits under
("Keyword Abilities / 702.19 Trample: ...") so that "how does trample work" finds 702.19b, whose own text
never says what it is about beyond "trample". A heading-only rule ("702.19. Trample") would otherwise be an
almost empty passage, so it is indexed together with the first lines of its sub-rules.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from knowledge.models import Card, Citation, Passage, PassageKind, Rule, RulesDocument

PASSAGE_KINDS: tuple[PassageKind, ...] = ("rule", "glossary", "card", "ruling")

# A rule whose whole text is a short title ("Trample", "Casting Spells") is a heading, not a statement.
_HEADING_MAX_CHARS = 60
# How much of the sub-rules a heading rule borrows for its index text: enough to say what the rule is
# about; the embedding model reads at most 256 word pieces anyway.
_HEADING_CHILD_CHARS = 700


def is_heading_rule(rule: Rule) -> bool:
    return rule.kind == "rule" and len(rule.text) <= _HEADING_MAX_CHARS and not rule.text.endswith(".")


def rule_key(number: str) -> str:
    return f"rule:{number}"


def glossary_key(term: str) -> str:
    return f"glossary:{_norm_name(term)}"


def card_key(name: str) -> str:
    return f"card:{_norm_name(name)}"


def _norm_name(name: str) -> str:
    return " ".join(name.lower().split())


def rule_title(doc: RulesDocument, rule: Rule) -> str:
    """The heading a rule sits under: "702.19 Trample" for 702.19b, "505 Main Phase" for 505.6a.

    A sub-rule is titled by its parent rule when that rule is a heading ("Trample"), else by its chapter
    with the parent's number; a rule is titled by its chapter.
    """
    chapter = _chapter_of(doc, rule)
    chapter_title = f"{chapter.number} {chapter.text}" if chapter else None
    if rule.kind == "subrule" and rule.parent in doc.rules:
        parent = doc.rules[rule.parent]
        if is_heading_rule(parent):
            return f"{parent.number} {parent.text}"
        return f"{chapter_title} / {parent.number}" if chapter_title else parent.number
    if rule.kind == "rule" and is_heading_rule(rule):
        return f"{rule.number} {rule.text}"
    return chapter_title or rule.number


def _chapter_of(doc: RulesDocument, rule: Rule) -> Rule | None:
    chapter = doc.rules.get(rule.number.split(".")[0])
    return chapter if chapter is not None and chapter.kind == "chapter" else None


def rule_passages(doc: RulesDocument) -> list[Passage]:
    """One passage per rule and sub-rule, in document order, text as printed (with its examples)."""
    out = []
    for rule in doc.rules.values():
        if rule.kind not in ("rule", "subrule"):
            continue
        out.append(
            Passage(
                key=rule_key(rule.number),
                text=rule.full_text(),
                citation=Citation(id=rule.number, kind="rule", release=doc.effective_date),
                title=rule_title(doc, rule),
            )
        )
    return out


def glossary_passages(doc: RulesDocument) -> list[Passage]:
    out: dict[str, Passage] = {}
    for term, entry in doc.glossary.items():
        key = glossary_key(term)
        if key in out:  # never seen in a release, but keys must stay unique
            continue
        out[key] = Passage(
            key=key,
            text=entry.text,
            citation=Citation(id=term, kind="glossary", release=doc.effective_date),
            title=term,
        )
    return list(out.values())


def card_passages(cards: Iterable[Card]) -> list[Passage]:
    """One passage per card (all faces, as a player reads them) and one per ruling on it."""
    out: dict[str, Passage] = {}
    for card in cards:
        key = card_key(card.name)
        if key in out:  # the same card from two fixture files (e.g. a printings list)
            continue
        out[key] = Passage(
            key=key, text=card.oracle_block(), citation=Citation(id=card.name, kind="card"), title=card.name
        )
        for i, ruling in enumerate(card.rulings, 1):
            rkey = f"ruling:{_norm_name(card.name)}:{i}"
            out[rkey] = Passage(
                key=rkey,
                text=ruling.text,
                citation=Citation(id=card.name, kind="ruling", release=ruling.date or None),
                title=card.name,
            )
    return list(out.values())


def build_passages(doc: RulesDocument, cards: Iterable[Card] = ()) -> list[Passage]:
    """All passages of a release and a card set: rules, then glossary, then cards and rulings."""
    return [*rule_passages(doc), *glossary_passages(doc), *card_passages(cards)]


def index_texts(passages: Sequence[Passage], doc: RulesDocument | None = None) -> list[str]:
    """What to embed / index for each passage (same order). ``doc`` lets heading rules borrow their
    sub-rules' opening lines; without it the heading is indexed as title + text."""
    return [index_text(p, doc) for p in passages]


def index_text(passage: Passage, doc: RulesDocument | None = None) -> str:
    kind = passage.citation.kind
    if kind == "rule":
        rule = doc.rules.get(passage.citation.id) if doc is not None else None
        if rule is not None and is_heading_rule(rule):
            chapter = _chapter_of(doc, rule)  # type: ignore[arg-type]
            head = f"{chapter.text}: {rule.text}" if chapter else rule.text
            children = " ".join(doc.rules[c].text for c in rule.children)  # type: ignore[union-attr]
            return f"{head}. {_clip(children, _HEADING_CHILD_CHARS)}"
        title = _strip_numbers(passage.title or "")
        return f"{title}: {passage.text}" if title else passage.text
    if kind == "glossary":
        return f"{passage.title}: {passage.text}"
    if kind == "ruling":
        return f"Ruling on {passage.title}: {passage.text}"
    return passage.text  # a card's oracle block starts with its name


def _strip_numbers(title: str) -> str:
    """ "505 Main Phase / 505.6" -> "Main Phase": numbers carry no meaning for the embedding model."""
    words = [w for w in title.replace("/", " ").split() if not re.fullmatch(r"\d+(?:\.\d+[a-z]*)?", w)]
    return " ".join(words)


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > 0 else limit]


def passages_digest(passages: Sequence[Passage], texts: Sequence[str] | None = None) -> str:
    """SHA-256 over keys, shown texts and (when given) the texts that were embedded: it changes whenever a
    saved index would return different passages or vectors."""
    digest = hashlib.sha256()
    for i, p in enumerate(passages):
        parts = [p.key, p.citation.release or "", p.title or "", p.text]
        if texts is not None:
            parts.append(texts[i])
        for part in parts:
            digest.update(part.encode("utf-8"))
            digest.update(b"\x00")
    return digest.hexdigest()


def count_by_kind(passages: Iterable[Passage]) -> dict[str, int]:
    counts = dict.fromkeys(PASSAGE_KINDS, 0)
    for p in passages:
        counts[p.citation.kind] += 1
    return counts
