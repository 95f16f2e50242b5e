"""``KnowledgeBase``: the one object the engine and the CLI use for rules, cards, graph and retrieval.

Parts cost very different amounts to get ready, so they load in two tiers:

* always, in :meth:`KnowledgeBase.load`: the rules release and its :class:`RuleBook` (~0.5 s). Nothing works
  without rules, so a missing release is one :class:`DataMissing` line saying how to get one;
* on first use, or all at once with ``lazy=False`` (what the engine wants before it takes questions): the
  cards, the knowledge graph, and the passages + vector index + hybrid retriever. ``hexcore rule`` and
  ``hexcore card`` therefore never load the embedding model or FAISS.

Saved state lives in ``settings.paths.index_dir``: ``graph.json.gz`` (reused when saved for this release and
card set; moved to a new release incrementally with ``update_rules`` when only the rules changed; rebuilt
otherwise), ``vectors/`` (reused when its manifest matches model, release and passages; see
:mod:`knowledge.retrieval`) and ``embeddings/`` (:mod:`knowledge.embedding_cache`), so a rebuild embeds only
passages whose text is new. Each lazy part is built once under a lock: concurrent first calls are safe.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from knowledge.errors import DataMissing, StaleIndex
from knowledge.models import Card, Passage, RetrievalResult, Rule, RulesDocument
from knowledge.rules import RuleBook, list_releases, load_release

if TYPE_CHECKING:
    import numpy as np

    from hexcore.settings import Settings
    from knowledge.card_names import CardDatabase
    from knowledge.context import AssembledContext
    from knowledge.embedding_cache import CachingEmbedder
    from knowledge.embeddings import Embedder
    from knowledge.graph import KnowledgeGraph
    from knowledge.index_build import KnowledgeIndex
    from knowledge.retrieval import HybridRetriever, SearchOutcome
    from knowledge.vector_index import VectorIndex

log = logging.getLogger(__name__)

GRAPH_FILE = "graph.json.gz"
EMBEDDINGS_DIR = "embeddings"
DATA_HINT = (
    "Run `hexcore data update` to download it, or set HEXCORE_DATA_DIR to a folder that has rules/*.txt."
)
BUILD_HINT = "Run `hexcore index build`."

T = TypeVar("T")


@dataclass(slots=True)
class BuildReport:
    """What ``hexcore index build`` did: counts, where it saved, and how long each stage took."""

    release: str
    rules: int
    glossary: int
    cards: int
    passages: dict[str, int]
    graph: dict[str, int]
    graph_path: Path
    index_path: Path
    embedded: int = 0
    """Texts embedded by this build (the others came from the embedding cache)."""
    embeddings_reused: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds per stage; "index" includes "embedder" (loading the model), "total" includes everything."""

    def summary(self) -> str:
        passages = ", ".join(f"{n} {kind}" for kind, n in self.passages.items())
        timings = ", ".join(f"{stage} {s:.1f} s" for stage, s in self.timings_s.items())
        return (
            f"Rules release {self.release}: {self.rules} rules, {self.glossary} glossary entries; "
            f"{self.cards} cards\n"
            f"Graph: {self.graph.get('nodes', 0)} nodes, {self.graph.get('edges', 0)} edges -> {self.graph_path}\n"
            f"Index: {sum(self.passages.values())} passages ({passages}) -> {self.index_path}\n"
            f"Embedded {self.embedded} texts; {self.embeddings_reused} reused from the embedding cache\n"
            f"Timings: {timings}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["graph_path"], data["index_path"] = str(self.graph_path), str(self.index_path)
        return data


def cards_digest(cards: Iterable[Card]) -> str:
    """Changes whenever the card data the graph was linked from changes (names, layouts, text, keywords)."""
    digest = hashlib.sha256()
    for card in sorted(cards, key=lambda c: c.name):
        digest.update(
            "\x00".join([card.name, card.layout, ",".join(card.keywords), card.oracle_block()]).encode()
        )
        digest.update(b"\x01")
    return digest.hexdigest()


def load_rules_release(settings: Settings) -> RulesDocument:
    """The configured rules release (``HEXCORE_RULES_RELEASE``) or the newest; one clear DataMissing line."""
    rules_dir = settings.paths.rules_dir
    if not list_releases(rules_dir):
        raise DataMissing(f"No Comprehensive Rules data in {rules_dir}. {DATA_HINT}")
    return load_release(rules_dir, settings.paths.rules_release)


def load_card_list(settings: Settings) -> list[Card]:
    """Every card in the cards folder, or none (rules still work) when there is no card data."""
    from knowledge.cards import load_card_dir

    try:
        return load_card_dir(settings.paths.cards_dir)
    except DataMissing as exc:
        log.warning("%s Card lookups will find nothing.", exc)
        return []


class KnowledgeBase:
    """Rules, cards, the knowledge graph and hybrid retrieval behind one small API (thread-safe)."""

    def __init__(
        self, settings: Settings, doc: RulesDocument, *, progress: bool = False, build_if_missing: bool = True
    ) -> None:
        self.settings = settings
        self.doc = doc
        self.book = RuleBook(doc)
        self.progress = progress
        self.build_if_missing = build_if_missing
        self.events: list[str] = []
        """What loading did, in order: "graph: loaded|built|updated A -> B", "index: loaded|built"."""
        self.graph_update: dict[str, Any] | None = None
        """The ``update_rules`` report when the saved graph was moved to this release."""
        self.embedded = 0
        """Texts this process embedded for the index (0 when a saved index was reused)."""
        self.embeddings_reused = 0
        self.timings_s: dict[str, float] = {}
        self._lock = threading.RLock()
        self._parts: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls, settings: Settings, *, progress: bool = False, build_if_missing: bool = True, lazy: bool = False
    ) -> KnowledgeBase:
        """The knowledge base for ``settings``. ``lazy=True`` defers cards, graph and index to first use.

        Raises DataMissing without rules data. With ``build_if_missing=False`` nothing is ever built: a
        missing or stale graph or index raises DataMissing / StaleIndex saying to run ``hexcore index build``.
        """
        start = time.perf_counter()
        kb = cls(settings, load_rules_release(settings), progress=progress, build_if_missing=build_if_missing)
        kb.timings_s["rules"] = _since(start)
        return kb if lazy else kb.warm()

    @classmethod
    def build(cls, settings: Settings, progress: bool = True, reuse_embeddings: bool = True) -> BuildReport:
        """Rebuild the graph and the vector index from the data (what ``hexcore index build`` runs).

        Both are always built afresh and saved; ``reuse_embeddings`` still takes the vectors of texts embedded
        before (same model, same text) from the embedding cache, so only new or changed passages are embedded.
        """
        start = time.perf_counter()
        kb = cls.load(settings, progress=progress, lazy=True)
        _ = kb.cards
        with kb._lock:
            kb._parts["graph"] = kb._timed("graph", lambda: kb._load_graph(force=True))
            kb._parts["index"] = kb._timed("index", lambda: kb._load_index(True, reuse_embeddings))
        index = kb.index
        return BuildReport(
            release=kb.release,
            rules=len(kb.book),
            glossary=len(kb.doc.glossary),
            cards=len(kb.cards),
            passages=index.vectors.counts(),
            graph={k: v for k, v in kb.graph.stats().items() if k in ("nodes", "edges")},
            graph_path=kb.graph_path,
            index_path=kb.vectors_dir,
            embedded=kb.embedded,
            embeddings_reused=kb.embeddings_reused,
            timings_s={**kb.timings_s, "total": _since(start)},
        )

    def warm(self) -> KnowledgeBase:
        """Load every lazy part now (the engine calls this before it serves questions)."""
        _ = self.retriever
        return self

    def _part(self, name: str, factory: Callable[[], T]) -> T:
        part = self._parts.get(name)
        if part is None:
            with self._lock:
                part = self._parts.get(name)
                if part is None:
                    part = self._parts[name] = self._timed(name, factory)
        return part

    def _timed(self, name: str, factory: Callable[[], T]) -> T:
        start = time.perf_counter()
        value = factory()
        self.timings_s[name] = _since(start)
        return value

    @property
    def release(self) -> str:
        return self.doc.effective_date

    @property
    def index_dir(self) -> Path:
        return self.settings.paths.index_dir

    @property
    def graph_path(self) -> Path:
        return self.index_dir / GRAPH_FILE

    @property
    def vectors_dir(self) -> Path:
        from knowledge.index_build import vector_index_dir

        return vector_index_dir(self.settings)

    @property
    def card_list(self) -> list[Card]:
        return self._part("cards", lambda: load_card_list(self.settings))

    @property
    def cards(self) -> CardDatabase:
        from knowledge.card_names import NICKNAMES_FILE, CardDatabase, load_nicknames

        nicknames = self.settings.paths.cards_dir / NICKNAMES_FILE
        return self._part("card_db", lambda: CardDatabase(self.card_list, load_nicknames(nicknames)))

    @property
    def graph(self) -> KnowledgeGraph:
        return self._part("graph", self._load_graph)

    @property
    def index(self) -> KnowledgeIndex:
        """Passages, the texts they were indexed by, and their vector index."""
        return self._part("index", self._load_index)

    @property
    def retriever(self) -> HybridRetriever:
        return self._part("retriever", self._make_retriever)

    def _load_graph(self, force: bool = False) -> KnowledgeGraph:
        """The saved graph when it fits this release and card set, moved to this release when only the
        rules changed, else a fresh build; saved unless it was reused as it was."""
        from knowledge.graph import KnowledgeGraph

        digest = cards_digest(self.card_list)
        graph: KnowledgeGraph | None = None
        if not force:
            try:
                graph = KnowledgeGraph.load(self.graph_path)
            except (DataMissing, StaleIndex) as exc:
                if not self.build_if_missing:
                    raise type(exc)(f"{exc} {BUILD_HINT}") from exc
                log.info("%s", exc)
        if graph is not None and graph.g.graph.get("cards_sha256") != digest:
            if not self.build_if_missing:
                raise StaleIndex(
                    f"The knowledge graph {self.graph_path} was built from other card data. {BUILD_HINT}"
                )
            log.info("card data changed since the graph was saved: rebuilding it")
            graph = None
        if graph is not None and graph.release == self.release:
            self.events.append("graph: loaded")
            return graph
        if graph is not None:
            old = graph.release
            self.graph_update = graph.update_rules(self.doc)
            self.events.append(f"graph: updated {old} -> {self.release}")
        else:
            graph = KnowledgeGraph.build(self.doc, self.card_list)
            graph.g.graph["cards_sha256"] = digest
            self.events.append("graph: built")
        if force:  # `hexcore index build`: saving is the point, so a failed save fails the build
            graph.save(self.graph_path)
        else:
            _try(lambda: graph.save(self.graph_path), f"the knowledge graph to {self.graph_path}")
        return graph

    def _load_index(self, force: bool = False, reuse_embeddings: bool = True) -> KnowledgeIndex:
        from knowledge.embedding_cache import CachingEmbedder
        from knowledge.index_build import load_or_build_knowledge_index
        from knowledge.retriever_models import retrieval_embedder

        # The promoted trained embedder when there is one (else MiniLM): the manifest records which.
        embedder = self._timed("embedder", lambda: retrieval_embedder(self.settings))
        if not self.build_if_missing and not force:
            index = self._load_saved_index(embedder)
            self.events.append("index: loaded")
            return index
        caching = CachingEmbedder(embedder, self.index_dir / EMBEDDINGS_DIR) if reuse_embeddings else None
        index = load_or_build_knowledge_index(
            self.settings,
            doc=self.doc,
            cards=self.card_list,
            embedder=caching if caching is not None else embedder,  # an empty cache is falsy (__len__)
            progress=self.progress,
            force=force,
        )
        self.events.append("index: built" if index.rebuilt else "index: loaded")
        if caching is not None:
            self.embedded, self.embeddings_reused = caching.encoded, caching.reused
            if not index.rebuilt:
                _prime(caching, index)  # a saved index predating the cache: keep its vectors for next time
            _try(caching.save, "the embedding cache")
        elif index.rebuilt:
            self.embedded = len(index.passages)
        return index

    def _load_saved_index(self, embedder: Embedder) -> KnowledgeIndex:
        """The saved index, only if it matches this release, model and passages (``build_if_missing=False``)."""
        from knowledge.index_build import KnowledgeIndex
        from knowledge.passages import build_passages, index_texts, passages_digest
        from knowledge.vector_index import VectorIndex

        start = time.perf_counter()
        passages = build_passages(self.doc, self.card_list)
        texts = index_texts(passages, self.doc)
        try:
            vectors = VectorIndex.load(
                self.vectors_dir, embedder.model_id, self.release, passages_digest(passages, texts)
            )
        except StaleIndex as exc:
            if not (self.vectors_dir / "manifest.json").is_file():
                raise DataMissing(f"No search index in {self.vectors_dir}. {BUILD_HINT}") from exc
            raise StaleIndex(f"The search index does not match the current data: {exc} {BUILD_HINT}") from exc
        return KnowledgeIndex(self.doc, passages, texts, vectors, False, _since(start))

    def _make_retriever(self) -> HybridRetriever:
        from knowledge.index_build import make_retriever
        from knowledge.retriever_models import retrieval_embedder

        index, graph, cards = self.index, self.graph, self.cards  # each loaded and timed on its own
        embedder = retrieval_embedder(self.settings)  # loaded (and timed) with the index
        retriever = self._timed(
            "retriever_init",
            lambda: make_retriever(
                self.settings, index, embedder=embedder, graph=graph, card_db=cards, rulebook=self.book
            ),
        )
        # The first encode pays one-off setup (~1 s here); paying it now keeps it out of the first query,
        # whose time would otherwise make the latency budget skip the vector stage for the next queries.
        self._timed("warm_up", lambda: _warm_up(retriever))
        return retriever

    # ------------------------------------------------------------------------------------- queries

    def search(
        self, query: str, k: int = 8, kinds: Iterable[str] | None = None, rerank: bool | None = None
    ) -> list[RetrievalResult]:
        """The ``k`` passages most relevant to ``query`` (all kinds, or only ``kinds``), best first.

        ``rerank`` None follows ``HEXCORE_KNOWLEDGE_RERANK`` (default on: the answer path leads with the top
        result, so it gets the trained re-ranker's order, under ``HEXCORE_KNOWLEDGE_RERANK_BUDGET_MS``)."""
        return self.retriever.search(query, k=k, kinds=kinds, rerank=rerank)

    def search_detailed(
        self, query: str, k: int = 8, kinds: Iterable[str] | None = None, rerank: bool | None = None
    ) -> SearchOutcome:
        """:meth:`search` with the stages run and skipped and their timings."""
        return self.retriever.search_detailed(query, k=k, kinds=kinds, rerank=rerank)

    def rule(self, number: str) -> tuple[Rule, list[Rule], str]:
        """(rule, all its sub-rules in order, rules release). Raises UnknownRule with the nearest numbers."""
        rule = self.book.get(number)
        return rule, self.book.subrules(rule.number), self.release

    def format_rule(self, number: str) -> str:
        """The rule and its sub-rules as printed, under a header naming the release (``hexcore rule``)."""
        from knowledge.rules import format_rule

        return format_rule(self.book, number)

    def card(self, name: str) -> Card:
        """The card the user means (exact, nickname, face, fuzzy). Raises UnknownCard with suggestions."""
        return self.cards.resolve(name)

    def autocomplete_cards(self, prefix: str, limit: int = 25) -> list[str]:
        return self.cards.suggest(prefix, limit)

    def autocomplete_rules(self, prefix: str, limit: int = 25) -> list[str]:
        return self.book.complete(prefix, limit)

    def assemble(
        self,
        results: Sequence[RetrievalResult | Passage],
        token_budget: int | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> AssembledContext:
        """Whole passages, most relevant first, under ``token_budget`` (default the configured budget)."""
        from knowledge.context import assemble_context

        budget = self.settings.knowledge.context_tokens if token_budget is None else token_budget
        return assemble_context(results, budget, count_tokens or approx_tokens)

    def stats(self) -> dict[str, Any]:
        """Counts, release, index manifest and cache/latency snapshots of what is loaded (loads nothing)."""
        parts = self._parts
        index, retriever = parts.get("index"), parts.get("retriever")
        return {
            "release": self.release,
            "rules": len(self.book),
            "glossary": len(self.doc.glossary),
            "cards": len(parts["card_db"]) if "card_db" in parts else None,
            "graph": parts["graph"].stats() if "graph" in parts else None,
            "index": index.vectors.manifest() if index is not None else None,
            "index_rebuilt": index.rebuilt if index is not None else None,
            "embedded": self.embedded,
            "embeddings_reused": self.embeddings_reused,
            "retrieval": retriever.stats() if retriever is not None else None,
            "events": list(self.events),
            "timings_s": dict(self.timings_s),
        }


def _warm_up(retriever: HybridRetriever) -> None:
    retriever.embedder.encode(["warm up"])  # type: ignore[union-attr]
    if retriever.reranker is not None:
        retriever.reranker.encoder.score("warm up", ["warm up"])


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (~4 characters per token) for callers without the model's tokenizer."""
    return (len(text) + 3) // 4


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _try(action: Callable[[], None], what: str) -> None:
    """Saving is an optimisation: a read-only state dir still serves from memory."""
    try:
        action()
    except OSError as exc:
        log.warning("could not save %s: %s", what, exc)


def _prime(caching: CachingEmbedder, index: KnowledgeIndex) -> None:
    """Put the vectors of a reused index into the embedding cache, when it lacks them."""
    if not caching.missing(index.texts):
        return
    text_of = dict(zip((p.key for p in index.passages), index.texts, strict=True))
    try:
        passages, vectors = _stored_vectors(index.vectors)
    except (AttributeError, KeyError, RuntimeError) as exc:  # an index without readable vectors: keep nothing
        log.debug("cannot read vectors back from the index: %s", exc)
        return
    caching.prime([text_of[p.key] for p in passages], vectors)


def _stored_vectors(vectors: VectorIndex) -> tuple[list[Passage], np.ndarray]:
    """(passages, their vectors) as the FAISS index holds them.

    Reads the index's current snapshot (never modified once published, see knowledge.vector_index), because
    VectorIndex has no public accessor for its vectors; flat indexes give them back exactly.
    """
    import numpy as np

    snapshot = vectors._snapshot
    passages: list[Passage] = []
    chunks = []
    for kind, faiss_index in snapshot.indexes.items():
        chunks.append(faiss_index.reconstruct_n(0, faiss_index.ntotal))
        passages.extend(snapshot.passages[kind])
    return passages, np.vstack(chunks) if chunks else np.zeros((0, vectors.dim), np.float32)
