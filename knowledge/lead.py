"""The lead of an answer: the rule (or card ruling) that decides the question, and its answering sentence.

What a player reads first must be right. A 135M model's prose is not, so every answer opens with a quoted
source instead: the best-ranked rule or ruling of retrieval, verbatim, with the one sentence of it that
answers the question picked out (sentence-level selection, so "702.19d" is shown with the sentence about
a removed blocker, not the whole rule).

Choosing the lead: the candidates are the retrieved rules and rulings that say something (a heading such as
"702.19 Trample", whose text is the keyword alone, is never a lead). The candidates are re-ranked by
reciprocal-rank fusion of two orders: retrieval's own, and how well each candidate's best sentence matches
the question (cosine of sentence embeddings: late interaction at sentence level, which finds the deciding
sentence inside a long rule where one embedding of the whole rule blurs it). The lead's ``score`` is that
best sentence's cosine: below the calibrated relevance threshold (``engine.relevance``) nothing retrieved
is about the question, and the answer says so instead of quoting unrelated rules.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cachetools
import numpy as np

from knowledge.models import Passage, RetrievalResult

LEAD_KINDS = ("rule", "ruling")
MIN_LEAD_CHARS = 25
"""Shorter rule texts are headings ("Trample"), not statements that decide anything."""
CANDIDATES = 6
"""How many of retrieval's best rules and rulings compete for the lead."""
RRF_K = 2.0
"""Small: the first places of both orders count most."""
SENTENCE_WEIGHT = 1.0
"""Weight of the sentence-match order against retrieval's order (1.0: equal)."""

Encoder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> L2-normalised embeddings, one row per text."""

# A sentence ends at ., ! or ? followed by a space and a capital, a quote or a parenthesis; rule numbers
# ("702.19b") and abbreviations inside parentheses ("(See rule 510.)") do not split.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”’)]?\s+(?=[A-Z(\"“])")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (examples and line breaks end a sentence too)."""
    spans: list[tuple[int, int]] = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for match in _SENTENCE_END.finditer(line.group(0)):
            end = line.start() + match.start()
            if text[start:end].strip():
                spans.append(_strip(text, start, end))
            start = line.start() + match.end()
        if text[start : line.end()].strip():
            spans.append(_strip(text, start, line.end()))
    return spans


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


@dataclass(frozen=True, slots=True)
class Lead:
    """The passage that decides the question, and the span of its sentence that answers it."""

    passage: Passage
    start: int
    end: int
    score: float
    """Cosine of the question and the answering sentence (the relevance the threshold is checked on)."""

    @property
    def sentence(self) -> str:
        return self.passage.text[self.start : self.end]

    def to_json(self) -> dict:
        citation = self.passage.citation
        return {
            "id": citation.id,
            "kind": citation.kind,
            "release": citation.release,
            "text": self.passage.text,
            "sentence": self.sentence,
            "score": round(self.score, 4),
        }


def is_lead_candidate(passage: Passage) -> bool:
    return passage.citation.kind in LEAD_KINDS and len(passage.text.strip()) >= MIN_LEAD_CHARS


class LeadSelector:
    """Picks the lead among retrieval results; caches sentence embeddings per passage (thread-safe)."""

    def __init__(self, encode: Encoder, *, candidates: int = CANDIDATES, cache_size: int = 4096) -> None:
        self.encode = encode
        self.candidates = candidates
        # A passage's sentence spans and vectors, by passage key; cache_size=0 keeps nothing.
        self._cache: cachetools.LRUCache[str, tuple[list[tuple[int, int]], np.ndarray]] = cachetools.LRUCache(
            max(1, cache_size)
        )
        self._caching = cache_size > 0
        self._lock = threading.Lock()

    def select(self, question: str, results: Sequence[RetrievalResult], ranked: bool = True) -> Lead | None:
        """The lead for ``question`` among ``results`` (best first), or None when none is a candidate.

        ``ranked=False``: the results' order says nothing about relevance (the rules a calculation applied,
        in the order it applied them), so all of them compete on their sentence match alone."""
        pool = [r.passage for r in results if is_lead_candidate(r.passage)]
        pool = pool[: self.candidates] if ranked else pool
        if not pool:
            return None
        query = self.encode([question])[0]
        best: list[tuple[float, int, int]] = []  # per candidate: (cosine, start, end) of its best sentence
        for passage in pool:
            spans, vectors = self._sentences(passage)
            sims = vectors @ query
            i = int(np.argmax(sims))
            best.append((float(sims[i]), *spans[i]))
        by_sentence = sorted(range(len(pool)), key=lambda i: -best[i][0])
        fused = [1.0 / (RRF_K + i + 1) if ranked else 0.0 for i in range(len(pool))]
        for place, i in enumerate(by_sentence):
            fused[i] += SENTENCE_WEIGHT / (RRF_K + place + 1)
        # A tie (the two orders disagree on two candidates) goes to the better sentence match.
        winner = max(range(len(pool)), key=lambda i: (round(fused[i], 9), best[i][0]))
        score, start, end = best[winner]
        return Lead(pool[winner], start, end, score)

    def _sentences(self, passage: Passage) -> tuple[list[tuple[int, int]], np.ndarray]:
        with self._lock:
            hit = self._cache.get(passage.key)
            if hit is not None:
                return hit
        # The rule's own statement answers; its examples illustrate (they are quoted, never highlighted).
        body = passage.text.split("\nExample:", 1)[0]
        spans = split_sentences(body) or [(0, len(passage.text))]
        # The title gives a sentence its subject ("702.19 Trample: ... it is blocked ..."), as in the index.
        prefix = f"{passage.title}: " if passage.title else ""
        vectors = self.encode([prefix + passage.text[s:e] for s, e in spans])
        entry = (spans, np.asarray(vectors, dtype=np.float32))
        if self._caching:
            with self._lock:
                self._cache[passage.key] = entry
        return entry
