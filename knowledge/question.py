"""Question understanding: what a rules question is about, before any index is searched.

Players describe situations ("my creature died in response to ...", "Player A is eliminated while ..."),
while the rules state principles under their own vocabulary ("dies", "leaves the game", "respond"). This
module turns a question into:

* ``cards``: card names it mentions (``[[...]]``, a quoted piece of oracle text, or a full name written out,
  via :class:`~knowledge.card_names.CardDatabase`), whose oracle text and rulings the retriever adds;
* ``terms``: game terms it uses, mapped to the rules that define them: the glossary and keyword vocabulary
  (:class:`TermMatcher`) plus :data:`GAME_TERMS`, the everyday phrasings of
  those terms ("eliminated", "in response", "ETB") that the glossary does not list;
* ``concepts``: the question cut into its clauses when it joins several situations, so each is searched
  on its own as well as the question as a whole (a whole-sentence embedding averages concepts away).

Everything here is string work (< 1 ms); nothing loads a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from knowledge.errors import KnowledgeError

GAME_TERMS: dict[str, tuple[str, ...]] = {
    # everyday phrasing -> defining rules (most specific first); glossary terms are matched separately
    "dies": ("700.4", "603.6c"),
    "died": ("700.4", "603.6c"),
    "put into a graveyard from the battlefield": ("700.4",),
    "enters": ("603.6a", "614.12"),
    "entered": ("603.6a", "614.12"),
    "etb": ("603.6a", "614.12"),
    "leaves the battlefield": ("603.6c", "603.10a"),
    "in response": ("117.7", "405.1"),
    "respond": ("117.7",),
    "responds": ("117.7",),
    "sacrifice": ("701.21",),
    "sacrificed": ("701.21",),
    "sacrifices": ("701.21",),
    "eliminated": ("800.4a", "104.3a"),
    "leaves the game": ("800.4a",),
    "left the game": ("800.4a",),
    "loses the game": ("104.3a", "800.4a"),
    "concede": ("104.3a", "800.4a"),
    "concedes": ("104.3a", "800.4a"),
    "copy": ("707.2", "707.10"),
    "copies": ("707.2", "707.10"),
    "token": ("111.1", "111.7"),
    "tokens": ("111.1", "111.7"),
    "vote": ("701.38",),
    "votes": ("701.38",),
    "monarch": ("724.1", "724.2"),
    "initiative": ("725.1", "725.2"),
    "state-based": ("704.5",),
    "state based": ("704.5",),
    "timestamp": ("613.7",),
    "layer": ("613.1",),
    "layers": ("613.1",),
    "instead": ("614.1a",),
    "prevent": ("615.1",),
    "prevented": ("615.1",),
    "gain control": ("108.4", "613.1b"),
    "gains control": ("108.4", "613.1b"),
    "hand size": ("402.2", "514.1"),
    "mulligan": ("103.5",),
    "commander tax": ("903.8",),
    "command zone": ("903.9", "408"),
    "legend rule": ("704.5j",),
    "first strike": ("702.7", "510.4"),
    "double strike": ("702.4", "510.4"),
    "combat damage": ("510.1", "510.2"),
    "blocks": ("509.1",),
    "blocked": ("509.1", "509.1h"),
    "attacks": ("508.1", "603.2"),
    "triggers": ("603.2", "603.3"),
    "triggered": ("603.2", "603.3"),
    "priority": ("117.3",),
    "the stack": ("405.1", "608.1"),
    "resolves": ("608.2", "608.1"),
    "fizzle": ("608.2b",),
    "fizzles": ("608.2b",),
    "illegal target": ("608.2b",),
    "counter it": ("701.6a",),
    "countered": ("701.6a",),
    "mana ability": ("605.1a", "605.3"),
    "upkeep": ("503.1",),
    "cleanup": ("514.1", "514.3a"),
    "draw step": ("504.1",),
    "phases out": ("702.26b",),
    "protection": ("702.16",),
    "indestructible": ("702.12b",),
    "deathtouch": ("702.2b", "702.2c"),
    "lifelink": ("702.15b",),
    "trample": ("702.19b", "702.19c"),
    "two-headed giant": ("810.1",),
    "2hg": ("810.1",),
    "teammate": ("810.2",),
    "range of influence": ("801.1",),
}
"""Phrasings players use -> the rules that define them. Built from the rules (the glossary entry or the
defining rule of each term), never from evaluation questions."""

ABILITY_KINDS: tuple[tuple[str, re.Pattern[str], tuple[str, ...]], ...] = (
    # The kind of ability a quoted piece of card text is decides which rules govern it (CR 113.3).
    ("triggered", re.compile(r"(?:^|[.—]\s*)(?:when|whenever|at the beginning)\b", re.I), ("603.2", "603.1")),
    (
        "replacement",
        re.compile(r"\binstead\b|\bas .{3,40} enters\b|\benters with\b", re.I),
        ("614.1", "614.1a"),
    ),
    ("prevention", re.compile(r"\bprevent\b", re.I), ("615.1",)),
    ("mana", re.compile(r":\s*add \{", re.I), ("605.1a",)),
    ("activated", re.compile(r"\}\s*(?:,\s*[^:]{1,40})?:\s", re.I), ("602.1",)),
    (
        "static",
        re.compile(r"\bcan't\b|\bdon't\b|\bas though\b|\beach (?:player|opponent) can\b", re.I),
        ("604.1", "604.2"),
    ),
)
"""Quoted card text -> the kind of ability it is (first match) -> the rules defining that kind."""

_SENTENCE = re.compile(r"(?<=[.?!])\s+")
_CLAUSE = re.compile(
    r",\s*(?:and|but|then|while|so)\s+|\s+(?:while|after|before|because|whereupon)\s+|;\s*", re.IGNORECASE
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_QUOTED = re.compile(r"[\"“]([^\"”]{12,200})[\"”]")
_STOP = frozenset(
    "a an the and or of to in on at by for with is are was were be been it its this that what which who "
    "when does do did can could would will if then than their they them his her he she you your my i me "
    "player players".split()
)
MIN_CONCEPT_WORDS = 3
MAX_CONCEPTS = 3
MAX_QUOTE_CARDS = 3


@dataclass(slots=True)
class QuestionAnalysis:
    """What a question is about (see the module docstring)."""

    text: str
    cards: list[str] = field(default_factory=list)
    terms: list[tuple[str, float, list[str]]] = field(default_factory=list)
    """Glossary / keyword terms: (phrase, specificity weight, defining rule numbers), most specific first."""
    game_terms: list[tuple[str, list[str]]] = field(default_factory=list)
    """Everyday game terms (:data:`GAME_TERMS`): (phrase, defining rule numbers), in question order."""
    concepts: list[str] = field(default_factory=list)
    """The question's clauses when it joins two or more situations, else empty."""
    quoted: list[str] = field(default_factory=list)
    """Quoted text (likely oracle text) found in the question."""


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def split_concepts(text: str, max_concepts: int = MAX_CONCEPTS) -> list[str]:
    """The clauses of a multi-situation question (each with >= MIN_CONCEPT_WORDS content words), or []."""
    parts: list[str] = []
    for sentence in _SENTENCE.split(text.strip()):
        parts.extend(p.strip(" ,;") for p in _CLAUSE.split(sentence))
    parts = [p for p in parts if len(content_words(p)) >= MIN_CONCEPT_WORDS]
    if len(parts) < 2:
        return []
    # Keep the most informative clauses when there are too many: the ones with the most content words.
    if len(parts) > max_concepts:
        keep = sorted(range(len(parts)), key=lambda i: -len(content_words(parts[i])))[:max_concepts]
        parts = [parts[i] for i in sorted(keep)]
    return parts


class TermMatcher:
    """Keyword, mechanic and glossary-term phrases in a text -> (specificity, defining rule numbers)."""

    def __init__(self, entries: dict[str, tuple[float, list[str]]]) -> None:
        self.entries = entries
        ordered = sorted(entries, key=len, reverse=True)
        alternation = "|".join(re.escape(p) for p in ordered)
        self._pattern = (
            re.compile(rf"(?<![\w-])(?:{alternation})(?:s|es|ed|d|ing)?(?![\w-])", re.IGNORECASE)
            if ordered
            else None
        )

    def find(self, text: str) -> list[tuple[str, float, list[str]]]:
        """(phrase, specificity, rules) for each distinct phrase found, most specific first."""
        if self._pattern is None:
            return []
        found: dict[str, tuple[float, list[str]]] = {}
        for match in self._pattern.finditer(text.replace("’", "'")):
            phrase = _phrase_of(match.group(0).lower(), self.entries)
            if phrase is not None:
                found[phrase] = self.entries[phrase]
        return sorted(((p, w, r) for p, (w, r) in found.items()), key=lambda item: -item[1])

    @classmethod
    def build(cls, bm25, doc, graph=None, min_idf: float = 3.0) -> TermMatcher:
        """From the graph's keyword / mechanic / term nodes when there is a graph, else from the glossary."""
        raw: dict[str, list[str]] = {}
        if graph is not None:
            from knowledge.vocabulary import match_names

            for node, attrs in graph.g.nodes(data=True):
                if attrs.get("kind") not in ("keyword", "mechanic", "term"):
                    continue
                phrases = match_names(attrs)
                if not phrases:
                    continue
                try:
                    rules = graph.rules_for_keyword(node)
                except KnowledgeError:
                    continue
                for phrase in phrases:
                    if phrase not in raw or attrs["kind"] == "keyword":
                        raw[phrase] = rules
        elif doc is not None:
            for term, entry in doc.glossary.items():
                for part in term.split(","):
                    phrase = " ".join(re.sub(r"\(.*?\)|[“”\"]", "", part).lower().split())
                    if phrase and entry.references:
                        raw.setdefault(phrase, list(entry.references))
        entries = {}
        for phrase, rules in raw.items():
            weight = bm25.idf(phrase)
            if weight >= min_idf and rules:
                entries[phrase] = (weight, rules)
        return cls(entries)


def _phrase_of(matched: str, entries: dict) -> str | None:
    for suffix in ("", "s", "es", "ed", "d", "ing"):
        if matched.endswith(suffix):
            stem = matched[: len(matched) - len(suffix)] if suffix else matched
            if stem in entries:
                return stem
    return None


class GameTermMatcher:
    """Finds :data:`GAME_TERMS` phrasings in a question (whole words, case-insensitive)."""

    def __init__(self, table: dict[str, tuple[str, ...]] | None = None, known: Iterable[str] | None = None):
        table = GAME_TERMS if table is None else table
        known_set = set(known) if known is not None else None
        # Only rules this release has: a renumbered release must not send the retriever to a missing rule.
        self.table = {
            phrase: [r for r in rules if known_set is None or r in known_set]
            for phrase, rules in table.items()
        }
        self.table = {p: r for p, r in self.table.items() if r}
        ordered = sorted(self.table, key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w-])(?:" + "|".join(map(re.escape, ordered)) + r")(?![\w-])", re.IGNORECASE)
            if ordered
            else None
        )

    def find(self, text: str) -> list[tuple[str, list[str]]]:
        if self._pattern is None:
            return []
        found = dict.fromkeys(m.group(0).lower() for m in self._pattern.finditer(text.replace("’", "'")))
        return [(phrase, self.table[phrase]) for phrase in found]


class QuestionAnalyzer:
    """Cards, game terms and concepts of a question. ``card_db`` and ``term_matcher`` are optional."""

    def __init__(
        self, card_db=None, term_matcher=None, known_rules: Iterable[str] | None = None, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        """False: only the glossary/keyword terms and the cards the caller found (the retriever before
        question understanding; benchmarks compare the two)."""
        self.card_db = card_db
        self.term_matcher = term_matcher
        self.game_terms = GameTermMatcher(known=known_rules)
        self._oracles: list[tuple[str, str]] | None = None

    def analyze(self, text: str, card_names: list[str] | None = None) -> QuestionAnalysis:
        analysis = QuestionAnalysis(text=text)
        if not self.enabled:
            analysis.cards = list(card_names or [])
            analysis.terms = self.term_matcher.find(text) if self.term_matcher is not None else []
            return analysis
        analysis.quoted = [q.strip() for q in _QUOTED.findall(text)]
        cards = list(card_names or [])
        for quote in analysis.quoted:
            cards.extend(self._cards_with_text(quote))
        analysis.cards = list(dict.fromkeys(cards))
        if self.term_matcher is not None:
            analysis.terms = self.term_matcher.find(text)
        analysis.game_terms = self.game_terms.find(text) + ability_terms(analysis.quoted)
        analysis.concepts = split_concepts(text)
        return analysis

    def _cards_with_text(self, quote: str) -> list[str]:
        """Cards whose oracle text contains ``quote`` (a player pasting a card's ability); a quote that
        several cards share ("Draw a card.") names none of them."""
        if self.card_db is None:
            return []
        if self._oracles is None:
            self._oracles = [
                (c.name, " ".join(c.oracle_block().lower().split())) for c in self.card_db.cards()
            ]
        needle = " ".join(quote.lower().split())
        found = [name for name, text in self._oracles if needle in text]
        return found if len(found) <= MAX_QUOTE_CARDS else []


def ability_terms(quotes: Iterable[str]) -> list[tuple[str, list[str]]]:
    """For each quoted ability, its kind's defining rules (a triggered ability -> 603.2, ...)."""
    out: dict[str, list[str]] = {}
    for quote in quotes:
        for kind, pattern, rules in ABILITY_KINDS:
            if pattern.search(quote):
                out.setdefault(f"{kind} ability", list(rules))
                break
    return list(out.items())
