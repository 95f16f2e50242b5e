"""Per-answer quality scores for ``hexcore eval qa``: pure functions over texts and rule numbers, no model.

Citations. A gold rule g is *matched* by a cited rule c when

- c == g (exact),
- c == parent(g): citing 505.6 for gold 505.6a (the rule whose sub-rule is gold, which a reader opens to
  find it), or
- parent(c) == g: citing 702.19b for gold 702.19 (a sub-rule of the gold rule states part of it).

Only rule-to-sub-rule steps count, never a section number: citing 702 ("Keyword Abilities") for gold 702.19
would match every keyword question. Numbers are compared whole, so 702.1 never matches 702.19. Siblings
(702.19b for gold 702.19c) do not match: they are different rules.

Undefined scores are ``None``, never a made-up 0 or 1: citation recall of a question without gold rules
(tournament-policy questions in quiz-dev.jsonl), citation precision of an answer that cites no rule,
keyword scores against an empty reference. Summaries average the defined values and say how many there were.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from knowledge.recall import parent_rule

Encoder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> one vector per text (``knowledge.embeddings.Embedder.encode``)."""

_NON_WORD = re.compile(r"[\W_]+")


# ---------------------------------------------------------------------------------------------- rules


def _rule_parent(number: str) -> str | None:
    """The rule a sub-rule belongs to (702.19b -> 702.19); None for rules and sections (702.19, 702)."""
    parent = parent_rule(number)
    return parent if parent is not None and "." in parent else None


def rule_matches(gold: str, cited: str) -> bool:
    """Whether citing ``cited`` counts for the gold rule ``gold`` (the relation in the module docstring)."""
    return cited == gold or cited == _rule_parent(gold) or _rule_parent(cited) == gold


def citation_recall(gold: Iterable[str], cited: Iterable[str]) -> float | None:
    """Share of the gold rules matched by some cited rule number; None without gold rules."""
    gold_rules = list(dict.fromkeys(gold))
    if not gold_rules:
        return None
    cited_rules = list(dict.fromkeys(cited))
    return sum(any(rule_matches(g, c) for c in cited_rules) for g in gold_rules) / len(gold_rules)


def citation_precision(gold: Iterable[str], cited: Iterable[str]) -> float | None:
    """Share of the cited rule numbers that match some gold rule; None without gold or without citations.

    Without gold rules nothing can be judged relevant, so precision is undefined there too, not 0.
    """
    gold_rules = list(dict.fromkeys(gold))
    cited_rules = list(dict.fromkeys(cited))
    if not gold_rules or not cited_rules:
        return None
    return sum(any(rule_matches(g, c) for g in gold_rules) for c in cited_rules) / len(cited_rules)


# ------------------------------------------------------------------------------------------- entities


def fold(text: str) -> str:
    """Lowercase, accents and punctuation removed, single spaces: "Jace, the Mind-Sculptor" -> "jace the mind sculptor"."""
    decomposed = unicodedata.normalize("NFKD", text.replace("’", "'"))
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    return " ".join(_NON_WORD.sub(" ", plain.replace("'", "")).split())


def entity_recall(gold: Iterable[str], cited_names: Iterable[str], text: str) -> float | None:
    """Share of the gold entities (card names, keywords) the answer cites or names; None without gold.

    An entity counts when a citation's id is the entity (a card, a ruling on it, a glossary term) or the
    answer text contains it as whole words, both compared folded (case, accents, punctuation).
    """
    entities = list(dict.fromkeys(fold(e) for e in gold if fold(e)))
    if not entities:
        return None
    cited = {fold(name) for name in cited_names}
    haystack = f" {fold(text)} "
    return sum(e in cited or f" {e} " in haystack for e in entities) / len(entities)


# ------------------------------------------------------------------------------------------- keywords


@dataclass(frozen=True, slots=True)
class KeywordOverlap:
    recall: float | None
    """Share of the reference's keywords found in the answer; None when the reference has none."""
    precision: float | None
    """Share of the answer's keywords found in the reference; None when either has none."""
    f1: float | None
    """0 when the answer shares no keyword (also when it has none); None when the reference has none."""


@lru_cache(maxsize=1)
def _tokenizer() -> Callable[[str], list[str]]:
    # The BM25 stage's tokenizer: lowercase, English stopwords out (negations kept), Snowball stems, rule
    # numbers whole. Scoring with the same notion of "word" as retrieval keeps the two comparable.
    from knowledge.bm25 import Tokenizer

    return Tokenizer()


def keywords(text: str) -> set[str]:
    """Content words of ``text``, stemmed: "Attacking creatures attack" -> {"attack", "creatur"}."""
    return set(_tokenizer()(text))


def keyword_overlap(reference: str, answer: str) -> KeywordOverlap:
    ref, ans = keywords(reference), keywords(answer)
    if not ref:
        return KeywordOverlap(None, None, None)
    shared = len(ref & ans)
    recall = shared / len(ref)
    precision = shared / len(ans) if ans else None
    if not shared or precision is None:
        return KeywordOverlap(recall, precision, 0.0)
    return KeywordOverlap(recall, precision, 2 * recall * precision / (recall + precision))


# ----------------------------------------------------------------------------------------- similarity


def similarities(encode: Encoder, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Cosine similarity of each (answer, reference) pair, all texts encoded in one call (one batch pass).

    Vectors are normalised here as well, so an encoder that does not normalise still gives cosines.
    """
    if not pairs:
        return []
    texts = [text for pair in pairs for text in pair]
    vectors = np.asarray(encode(texts), dtype=np.float64).reshape(len(texts), -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    return [float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(pairs))]


def similarity(encode: Encoder, a: str, b: str) -> float:
    return similarities(encode, [(a, b)])[0]
