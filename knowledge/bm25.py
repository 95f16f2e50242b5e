"""Lexical BM25 over the passages: a retrieval stage of the hybrid retriever and the baseline it must beat.

``bm25s`` (sparse-matrix BM25) scores a query against ~4,000 passages in well under a millisecond, where
``rank-bm25`` loops in Python over every document per query term (~10 ms per question here): too slow for a
20 ms budget. Tokens are lowercased words, Snowball-stemmed (PyStemmer) so "blocking" matches "blocked",
with English stopwords removed; rule numbers ("702.19b") stay whole tokens so "rule 702.19b" matches.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from knowledge.models import Passage, RetrievalResult, RulesDocument
from knowledge.passages import index_texts

# bm25s sets its own logger to DEBUG on import, so "Building index from tokens" reached every user's
# terminal. NOTSET hands the level back to the application's logging configuration (``hexcore -vv``).
logging.getLogger("bm25s").setLevel(logging.NOTSET)

_TOKEN = re.compile(r"\d{3}\.\d+[a-z]?|[a-z0-9]+")
_STOPWORDS = frozenset(STOPWORDS_EN) - {"can", "cannot", "not", "no", "all", "each", "only", "first", "any"}


class Tokenizer:
    """Text -> stemmed tokens. PyStemmer objects are not thread-safe, so one is kept per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _stemmer(self) -> Stemmer.Stemmer:
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer("english")
        return stemmer

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _TOKEN.findall(text.lower().replace("’", "'")) if w not in _STOPWORDS]
        return self._stemmer().stemWords(words)


@dataclass(frozen=True, slots=True)
class LexicalHit:
    passage: Passage
    score: float


class BM25Index:
    """BM25 scores of a query against a fixed list of passages, filterable by kind."""

    def __init__(
        self, passages: Sequence[Passage], texts: Sequence[str], k1: float = 1.2, b: float = 0.75
    ) -> None:
        if len(texts) != len(passages):
            raise ValueError("one text per passage")
        self.passages = list(passages)
        self.tokenize = Tokenizer()
        self._model = bm25s.BM25(k1=k1, b=b)
        # A rule's own number is a token too, so "702.19b" finds rule 702.19b lexically.
        corpus = [
            [*self.tokenize(t), *([p.citation.id] if p.citation.kind == "rule" else [])] or ["<empty>"]
            for p, t in zip(self.passages, texts, strict=True)
        ]
        self._model.index(corpus, show_progress=False)
        # Document frequencies, for callers that weigh query terms by how specific they are (graph stage).
        self._df = Counter(token for doc in corpus for token in set(doc))
        self._n = len(corpus)
        # bm25s maps query tokens through its own vocabulary; unknown tokens must be dropped first.
        self._vocab = self._model.vocab_dict
        kinds = np.array([p.citation.kind for p in self.passages])
        self._kind_masks = {kind: (kinds == kind).astype(np.float32) for kind in set(kinds.tolist())}
        self._lock = threading.Lock()  # bm25s caches state on the instance while scoring

    def idf(self, phrase: str) -> float:
        """How specific ``phrase`` is in this corpus: the largest idf of its tokens (0 if none is known)."""
        dfs = [self._df[t] for t in self.tokenize(phrase) if t in self._df]
        return max((math.log((self._n + 1) / (df + 0.5)) for df in dfs), default=0.0)

    def scores(self, query: str, kinds: Iterable[str] | None = None) -> np.ndarray:
        """One score per passage (0 for passages of other kinds)."""
        tokens = [t for t in self.tokenize(query) if t in self._vocab]
        if not tokens:
            return np.zeros(len(self.passages), dtype=np.float32)
        with self._lock:
            scores = self._model.get_scores(tokens)
        if kinds is not None:
            mask = sum(
                (self._kind_masks[k] for k in set(kinds) if k in self._kind_masks), start=np.float32(0)
            )
            scores = scores * mask
        return scores

    def search(self, query: str, k: int = 8, kinds: Iterable[str] | None = None) -> list[LexicalHit]:
        scores = self.scores(query, kinds)
        if k <= 0 or not scores.any():
            return []
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [LexicalHit(self.passages[i], float(scores[i])) for i in top if scores[i] > 0]


class BM25Retriever:
    """The lexical baseline, with the hybrid retriever's ``search`` signature (for the recall comparison)."""

    def __init__(
        self,
        passages: Sequence[Passage],
        texts: Sequence[str] | None = None,
        doc: RulesDocument | None = None,
    ) -> None:
        self.index = BM25Index(passages, texts if texts is not None else index_texts(passages, doc))

    def search(self, query: str, k: int = 8, kinds: Iterable[str] | None = None) -> list[RetrievalResult]:
        return [
            RetrievalResult(passage=h.passage, score=h.score, sources=frozenset({"bm25"}))
            for h in self.index.search(query, k, kinds)
        ]
