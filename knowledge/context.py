"""Assemble retrieved passages into the model's context under a token budget, whole passages only.

The engine cites exactly the passages this returns, and the bot quotes them verbatim, so a passage is either
in the context whole or not at all: one that would overflow the budget is skipped (never cut), and the
smaller passages after it still get their chance. Each passage is rendered under its citation label and,
when it adds something, its heading ("[CR 702.19b (2026-01-16) | 702.19 Trample] ..."), so a sub-rule keeps
the parent rule that says what it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from knowledge.models import Passage, RetrievalResult

SEPARATOR = "\n\n"


@dataclass(slots=True)
class AssembledContext:
    text: str
    """Rendered passages, most relevant first, joined by blank lines."""
    passages: list[Passage] = field(default_factory=list)
    """Exactly the passages in ``text``, in the same order: what the answer may cite."""
    tokens: int = 0
    """``count_tokens(text)``."""
    skipped: list[str] = field(default_factory=list)
    """Keys of passages left out because they did not fit."""


def citation_label(passage: Passage) -> str:
    """ "CR 702.19b (2026-01-16)", "Glossary: Trample (2026-01-16)", "Card: Tarmogoyf", "Ruling on Tarmogoyf"."""
    citation = passage.citation
    if citation.kind == "card":
        return f"Card: {citation.id}"
    return citation.label()


def render_passage(passage: Passage) -> str:
    label = citation_label(passage)
    title = passage.title
    if title and title != passage.citation.id and passage.citation.kind == "rule":
        label = f"{label} | {title}"
    return f"[{label}] {passage.text}"


def assemble_context(
    results: Sequence[RetrievalResult | Passage],
    token_budget: int,
    count_tokens: Callable[[str], int],
    max_passages: int | None = None,
) -> AssembledContext:
    """Greedily add passages in the given (relevance) order while the whole text fits ``token_budget``.

    Duplicates (same passage key) are dropped. The budget is checked on the joined text, not on a sum of
    per-passage counts, because tokenizers can merge across a boundary: the returned ``tokens`` is exact.
    """
    pieces: list[str] = []
    included: list[Passage] = []
    skipped: list[str] = []
    seen: set[str] = set()
    tokens = 0
    for item in results:
        passage = item.passage if isinstance(item, RetrievalResult) else item
        if passage.key in seen:
            continue
        seen.add(passage.key)
        if max_passages is not None and len(included) >= max_passages:
            break
        candidate = SEPARATOR.join([*pieces, render_passage(passage)])
        count = count_tokens(candidate)
        if count > token_budget:
            skipped.append(passage.key)
            continue
        pieces.append(render_passage(passage))
        included.append(passage)
        tokens = count
    return AssembledContext(text=SEPARATOR.join(pieces), passages=included, tokens=tokens, skipped=skipped)
