"""Plain data types shared by the knowledge layer, the engine and the bot.

These are the contract between modules: parsers produce them, the graph and indexes consume them,
the engine cites them, the bot shows them verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PassageKind = Literal["rule", "glossary", "card", "ruling"]


@dataclass(frozen=True, slots=True)
class Citation:
    """Where a passage comes from: a rule number with its rules release, or a card name."""

    id: str
    """Rule number ("702.19b"), glossary term ("Trample"), or card name ("Jace, the Mind Sculptor")."""
    kind: PassageKind
    release: str | None = None
    """Rules release the text is quoted from (effective date, ISO), for rule and glossary citations."""

    def label(self) -> str:
        if self.kind == "rule":
            return f"CR {self.id} ({self.release})" if self.release else f"CR {self.id}"
        if self.kind == "glossary":
            return f"Glossary: {self.id} ({self.release})" if self.release else f"Glossary: {self.id}"
        if self.kind == "ruling":
            return f"Ruling on {self.id}"
        return self.id


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable unit of text, never split: a rule with its examples, a glossary entry, a card."""

    key: str
    """Unique across kinds: "rule:702.19b", "glossary:trample", "card:jace, the mind sculptor", "ruling:<card>:<n>"."""
    text: str
    citation: Citation
    title: str | None = None
    """Heading that gives the passage context, e.g. "702.19 Trample" for rule 702.19b."""


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    """One retrieved passage with its fused relevance score and the retrieval stages that found it."""

    passage: Passage
    score: float
    sources: frozenset[str] = frozenset()
    """Subset of {"exact", "vector", "bm25", "graph"}."""


@dataclass(slots=True)
class Rule:
    number: str
    """As printed without the trailing dot for rules: "100", "100.1", "100.1a", "702.19b"; sections: "1"."""
    text: str
    kind: Literal["section", "chapter", "rule", "subrule"]
    parent: str | None = None
    examples: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    """Rule numbers this rule refers to ("See rule 613.7"), in order, without duplicates."""

    def full_text(self) -> str:
        """The rule with its examples, as printed."""
        return "\n".join([self.text, *(f"Example: {e}" for e in self.examples)])


@dataclass(slots=True)
class GlossaryEntry:
    term: str
    text: str
    references: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RulesDocument:
    effective_date: str
    """ISO date from the header ("These rules are effective as of January 16, 2026.")."""
    rules: dict[str, Rule]
    """By number, in document order."""
    glossary: dict[str, GlossaryEntry]
    """By term as printed, in document order."""
    source: str | None = None


@dataclass(slots=True)
class CardFace:
    name: str
    mana_cost: str = ""
    type_line: str = ""
    oracle_text: str = ""
    power: str | None = None
    toughness: str | None = None
    loyalty: str | None = None
    defense: str | None = None


@dataclass(slots=True)
class Ruling:
    date: str
    text: str
    source: str = "wotc"


@dataclass(slots=True)
class Card:
    name: str
    """Full name as Scryfall prints it, faces joined by " // "."""
    layout: str
    faces: list[CardFace]
    mana_value: float = 0.0
    colors: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    oracle_id: str | None = None
    rulings: list[Ruling] = field(default_factory=list)
    scryfall_uri: str | None = None
    image_uri: str | None = None

    def oracle_block(self) -> str:
        """All faces as a player reads them: name, cost, type line, text, P/T or loyalty."""
        parts = []
        for face in self.faces:
            head = f"{face.name} {face.mana_cost}".strip()
            lines = [head, face.type_line]
            if face.oracle_text:
                lines.append(face.oracle_text)
            if face.power is not None and face.toughness is not None:
                lines.append(f"{face.power}/{face.toughness}")
            if face.loyalty is not None:
                lines.append(f"Loyalty: {face.loyalty}")
            if face.defense is not None:
                lines.append(f"Defense: {face.defense}")
            parts.append("\n".join(line for line in lines if line))
        return "\n----\n".join(parts)
