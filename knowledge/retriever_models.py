"""Which embedder and re-ranker retrieval serves: the promoted trained versions, else the untrained ones.

The trained embedder is used only for retrieval (the vector index and its queries); the router and the
answer-similarity measure keep ``settings.knowledge.embedding_model``. A trained version whose files are
missing or damaged, or that fails to load, is skipped with one warning: retrieval then serves the untrained
MiniLM (and the index manifest, which names the embedder, makes the index rebuild to match), never a
traceback. ``HEXCORE_KNOWLEDGE_TRAINED_RETRIEVER=false`` ignores trained versions altogether.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from knowledge.embeddings import Embedder, get_embedder
from knowledge.retriever_store import RetrieverStore

log = logging.getLogger(__name__)


def serving_model_dir(settings, role: str) -> Path | None:
    if not settings.knowledge.trained_retriever:
        return None
    return RetrieverStore.from_settings(settings).serving_dir(role)


def retrieval_embedder(settings) -> Embedder:
    """The embedder the search index is built and queried with."""
    folder = serving_model_dir(settings, "embedder")
    if folder is not None:
        embedder = _trained_embedder(str(folder))
        if embedder is not None:
            return embedder
    return get_embedder(settings.knowledge.embedding_model)


@lru_cache(maxsize=4)
def _trained_embedder(path: str) -> Embedder | None:
    try:
        return get_embedder(path)
    except Exception as exc:  # noqa: BLE001 - a damaged model must degrade to the untrained one
        log.warning("could not load the trained embedder %s (%s): using the untrained model", path, exc)
        return None


def serving_reranker(settings):
    """The promoted cross-encoder (a :class:`knowledge.rerank.Reranker`) when ``cross_encoder`` is on, else
    None: the second stage is then the per-clause search alone."""
    from knowledge.rerank import load_reranker

    knowledge = settings.knowledge
    if not knowledge.cross_encoder:
        return None
    return load_reranker(
        serving_model_dir(settings, "reranker"),
        depth=knowledge.rerank_depth,
        budget_ms=knowledge.rerank_budget_ms,
        prior=knowledge.rerank_prior,
    )
