"""Building and loading the search index of one release, and the retriever over it.

``load_or_build_knowledge_index`` reuses the saved FAISS index when its manifest matches (same embedder, release and
passages) and otherwise builds and saves a new one; the embedder is the one retrieval serves
(:func:`knowledge.retriever_models.retrieval_embedder`: the promoted trained embedder, else MiniLM), and
its id is written into the manifest, so an index built with one embedder is never searched with another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from knowledge.cache import TTLCache
from knowledge.cards import load_card_dir
from knowledge.errors import DataMissing
from knowledge.latency import LatencyTracker
from knowledge.models import Card, Passage, RulesDocument
from knowledge.passages import build_passages, index_texts
from knowledge.rules import load_release
from knowledge.vector_index import VectorIndex, load_or_build_vector_index

if TYPE_CHECKING:
    from knowledge.retrieval import HybridRetriever

log = logging.getLogger(__name__)

VECTOR_DIR = "vectors"
"""Sub-folder of ``settings.paths.index_dir`` holding the FAISS index (the graph file sits beside it)."""


@dataclass(slots=True)
class KnowledgeIndex:
    """Passages of one release (+ cards), the texts they were indexed by, and their vector index."""

    doc: RulesDocument
    passages: list[Passage]
    texts: list[str]
    vectors: VectorIndex
    rebuilt: bool
    """False when a saved index matched and was reused."""
    seconds: float


def vector_index_dir(settings) -> Path:
    return settings.paths.index_dir / VECTOR_DIR


def load_or_build_knowledge_index(
    settings,
    doc: RulesDocument | None = None,
    cards: Iterable[Card] | None = None,
    embedder=None,
    progress: bool = True,
    force: bool = False,
) -> KnowledgeIndex:
    """Passages from the rules release and cards in ``settings`` (or the ones given), with the saved
    vector index when its manifest matches them (same model, release and passage digest), else a fresh
    build saved to ``settings.paths.index_dir / "vectors"``. ``embedder`` may be any object with
    ``encode``/``dim``/``model_id`` (e.g. a caching embedder); default the configured model."""
    start = time.perf_counter()
    if doc is None:
        doc = load_release(settings.paths.rules_dir, settings.paths.rules_release)
    if cards is None:
        try:
            cards = load_card_dir(settings.paths.cards_dir)
        except DataMissing as exc:
            log.warning("%s Indexing rules only.", exc)
            cards = []
    if embedder is None:
        from knowledge.retriever_models import retrieval_embedder

        embedder = retrieval_embedder(settings)
    passages = build_passages(doc, cards)
    texts = index_texts(passages, doc)
    vectors, rebuilt = load_or_build_vector_index(
        vector_index_dir(settings),
        passages,
        texts,
        embedder,
        doc.effective_date,
        progress=progress,
        force=force,
    )
    return KnowledgeIndex(doc, passages, texts, vectors, rebuilt, round(time.perf_counter() - start, 3))


def make_retriever(
    settings, index: KnowledgeIndex, embedder=None, graph=None, card_db=None, rulebook=None, reranker=None
) -> HybridRetriever:
    """A :class:`HybridRetriever` over ``index`` with cache size, TTL, latency budgets and the serving
    re-ranker (``reranker``: default the promoted one, if any) from settings."""
    from knowledge.retrieval import HybridRetriever
    from knowledge.retriever_models import retrieval_embedder, serving_reranker
    from knowledge.rules import RuleBook

    knowledge = settings.knowledge
    return HybridRetriever(
        index.passages,
        index.vectors,
        embedder if embedder is not None else retrieval_embedder(settings),
        graph=graph,
        card_db=card_db,
        rulebook=rulebook if rulebook is not None else RuleBook(index.doc),
        cache=TTLCache(knowledge.cache_size, knowledge.cache_ttl_s),
        tracker=LatencyTracker(budget_ms=knowledge.retrieval_budget_ms),
        budget_ms=knowledge.retrieval_budget_ms,
        texts=index.texts,
        reranker=reranker if reranker is not None else serving_reranker(settings),
        rerank=knowledge.rerank,
        deep_budget_ms=knowledge.rerank_budget_ms,
    )
