"""Hybrid retrieval: exact references, BM25, knowledge-graph terms and FAISS vectors, fused by weighted RRF.

Stages, in the order they run (each timed by the :class:`~knowledge.latency.LatencyTracker`):

1. ``exact`` (always): rule numbers in the query ("702.19b", "rule 510") give that rule and its sub-rules;
   card names (``[[name]]``, or a card's full name in the text) give the card, its rulings, and (through
   the graph) the rules of its keywords.
2. ``bm25`` (always): lexical BM25 over the same passages (:mod:`knowledge.bm25`).
3. ``graph`` (optional, < 1 ms): keywords, mechanics and glossary terms named in the query give their
   defining rules, weighted by how specific the term is (idf), so "trample" counts and "player" does not.
4. ``vector`` (optional, the expensive one: one query embedding): cosine search in the FAISS index.

Fusion is reciprocal-rank fusion with per-stage weights: ranks, not raw scores, because cosines and BM25
scores live on unrelated scales. Then a *family roll-up*: a rule whose sub-rule scored gets at least that
score, because the parent states what the sub-rule details ("603.2" for a hit on "603.2c"), and rules are
cited and read by family. Ties keep document order, so a parent sorts just before its children.

Latency budget: before each optional stage the retriever checks the time spent so far plus what the stage
usually costs (median of its recent runs) against ``budget_ms``; if that would overrun, the stage is
skipped and recorded in :class:`SearchOutcome` (``exact`` and ``bm25`` always run, so a degraded answer
still has lexical results). A skipped stage is still run at most once every ``probe_interval_s`` seconds
(when the budget is not already spent) so its cost estimate recovers once the machine is quiet again;
probing by time rather than every N-th request keeps the slow probes out of the p99 under load.
Degraded results are not cached.

Thread-safe: the cache, tracker, embedder and BM25 scorer lock internally and the FAISS index is
searched lock-free (see :mod:`knowledge.vector_index`).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from knowledge.bm25 import BM25Index
from knowledge.cache import TTLCache
from knowledge.cards import extract_bracket_names, load_card_dir
from knowledge.embeddings import Embedder, get_embedder
from knowledge.errors import DataMissing, KnowledgeError
from knowledge.latency import LatencyTracker
from knowledge.models import Card, Passage, RetrievalResult, RulesDocument
from knowledge.passages import build_passages, card_key, index_texts, rule_key
from knowledge.rules import load_release
from knowledge.vector_index import VectorIndex
from knowledge.vector_index import load_or_build as load_or_build_vectors

log = logging.getLogger(__name__)

STAGES = ("exact", "bm25", "graph", "vector")
REQUIRED_STAGES = frozenset({"exact", "bm25"})

_RULE_NUMBER = re.compile(r"(?<![\d.])(\d{3}\.\d+[a-z]?)\b", re.IGNORECASE)
_RULE_WORD = re.compile(r"\b(?:rules?|cr|section)\s+(\d{3})\b", re.IGNORECASE)
_NAME_EDGES = "\"'“”‘’()[]{}.,;:!?"
_MAX_NAME_WORDS = 8


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """Weights of the fused ranking. Chosen on quiz-dev.jsonl with a coarse grid (see docs/BENCHMARKS.md)."""

    exact: float = 10.0
    """Large: a rule the user named outranks anything found by similarity."""
    bm25: float = 1.0
    vector: float = 1.0
    graph: float = 0.3
    rrf_k: float = 5.0
    """Small k: the top few ranks of each list matter much more than rank 30."""
    depth: int = 50
    """How many candidates BM25 and the vector index each contribute."""
    family: float = 1.0
    """A parent rule scores at least ``family`` times its best sub-rule."""
    term_min_idf: float = 3.0
    """Glossary/keyword terms less specific than this (e.g. "opponent") do not expand."""
    term_rules: int = 3
    """How many of a term's defining rules (heading first) it contributes."""
    glossary_bridge: float = 0.6
    """Weight of the rules cited by the glossary entries nearest the query vector (a term -> rule hop that
    finds "leaves the game" rules for "is eliminated" style questions). 0 disables it."""
    glossary_depth: int = 5
    card_rules: float = 2.0
    """Weight of the defining rules of the keywords of a card named in the query (ranked near the card)."""


@dataclass(slots=True)
class SearchOutcome:
    results: list[RetrievalResult]
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False


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
    def build(
        cls, bm25: BM25Index, doc: RulesDocument | None, graph=None, min_idf: float = 3.0
    ) -> TermMatcher:
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


def normalize_query(query: str) -> str:
    return " ".join(query.lower().split())


class HybridRetriever:
    """Exact + BM25 + graph + vector retrieval over one set of passages. See the module docstring."""

    def __init__(
        self,
        passages: Sequence[Passage],
        vector_index: VectorIndex | None,
        embedder: Embedder | None,
        graph=None,
        card_db=None,
        rulebook=None,
        cache: TTLCache | None = None,
        tracker: LatencyTracker | None = None,
        budget_ms: float = 20.0,
        weights: FusionWeights | None = None,
        texts: Sequence[str] | None = None,
        probe_interval_s: float = 5.0,
    ) -> None:
        self.passages = list(passages)
        self.vector_index = vector_index
        self.embedder = embedder
        self.graph = graph
        self.card_db = card_db
        self.rulebook = rulebook
        self.doc: RulesDocument | None = rulebook.doc if rulebook is not None else None
        self.cache = cache if cache is not None else TTLCache(2048, 3600.0)
        self.tracker = tracker if tracker is not None else LatencyTracker(budget_ms=budget_ms)
        self.budget_ms = budget_ms
        self.weights = weights or FusionWeights()
        self.probe_interval_s = probe_interval_s
        has_vectors = vector_index is not None and embedder is not None
        self.stages = [s for s in STAGES if s != "vector" or has_vectors]
        """The stages this retriever has (no ``vector`` without an index and an embedder)."""
        self._last_probe = dict.fromkeys(STAGES, time.monotonic())
        self._by_key = {p.key: p for p in self.passages}
        self._order = {p.key: i for i, p in enumerate(self.passages)}
        self.bm25 = BM25Index(
            self.passages, texts if texts is not None else index_texts(self.passages, self.doc)
        )
        self.terms = TermMatcher.build(self.bm25, self.doc, graph, self.weights.term_min_idf)
        self._rulings: dict[str, list[str]] = {}
        for p in self.passages:
            if p.citation.kind == "ruling":
                self._rulings.setdefault(card_key(p.citation.id), []).append(p.key)
        self._skips = dict.fromkeys(STAGES, 0)
        self._skips_lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 8, kinds: Iterable[str] | None = None) -> list[RetrievalResult]:
        return self.search_detailed(query, k, kinds).results

    def search_detailed(self, query: str, k: int = 8, kinds: Iterable[str] | None = None) -> SearchOutcome:
        kind_set = frozenset(kinds) if kinds else None
        key = (normalize_query(query), k, kind_set)
        start = time.perf_counter()
        cached = self.cache.get(key)
        if cached is not None:
            self.tracker.record_request((time.perf_counter() - start) * 1000.0)
            return SearchOutcome(list(cached), cached=True)
        outcome = SearchOutcome(results=[])
        with self.tracker.request():
            lists: dict[str, list[tuple[str, float]]] = {}
            for stage in self.stages:
                elapsed = (time.perf_counter() - start) * 1000.0
                if stage not in REQUIRED_STAGES and not self._should_run(stage, elapsed):
                    outcome.stages_skipped.append(stage)
                    continue
                t0 = time.perf_counter()
                try:
                    with self.tracker.stage(stage):
                        found = self._run_stage(stage, query, kind_set)
                except Exception:
                    if stage in REQUIRED_STAGES:
                        raise
                    # An optional stage failing (model or FAISS error) degrades the answer, not the request.
                    log.exception("retrieval stage %r failed; answering without it", stage)
                    outcome.stages_skipped.append(stage)
                    continue
                outcome.timings_ms[stage] = (time.perf_counter() - t0) * 1000.0
                outcome.stages_run.append(stage)
                for name, ranked in found.items():
                    lists.setdefault(name, []).extend(ranked)
            with self.tracker.stage("fuse"):
                outcome.results = self._fuse(lists, k, kind_set)
        outcome.timings_ms["total"] = (time.perf_counter() - start) * 1000.0
        if not outcome.stages_skipped:
            self.cache.set(key, tuple(outcome.results))
        return outcome

    def stats(self) -> dict:
        with self._skips_lock:
            skips = dict(self._skips)
        return {
            "cache": self.cache.stats().to_json(),
            "latency": self.tracker.snapshot(),
            "skipped_stages": skips,
        }

    # -- stages ------------------------------------------------------------------------------------

    def _should_run(self, stage: str, elapsed_ms: float) -> bool:
        expected = self.tracker.expected_ms(stage) or 0.0
        if elapsed_ms + expected <= self.budget_ms:
            return True
        now = time.monotonic()
        with self._skips_lock:
            probe = elapsed_ms < self.budget_ms and now - self._last_probe[stage] >= self.probe_interval_s
            if probe:
                self._last_probe[stage] = now
            else:
                self._skips[stage] += 1
        return probe

    def _run_stage(
        self, stage: str, query: str, kinds: frozenset[str] | None
    ) -> dict[str, list[tuple[str, float]]]:
        depth = self.weights.depth
        if stage == "exact":
            return self._exact(query, kinds)
        if stage == "bm25":
            return {"bm25": [(h.passage.key, h.score) for h in self.bm25.search(query, depth, kinds)]}
        if stage == "graph":
            return {"graph": self._graph_terms(query, kinds)}
        if stage == "vector":
            vector = self.embedder.encode([query])[0]  # type: ignore[union-attr]
            hits = self.vector_index.search(vector, depth, kinds)  # type: ignore[union-attr]
            found = {"vector": [(h.passage.key, h.score) for h in hits if h.passage.key in self._by_key]}
            if self.weights.glossary_bridge > 0 and self.doc is not None:
                found["bridge"] = self._glossary_bridge(vector, kinds)
            return found
        raise ValueError(stage)

    def _allowed(self, key: str, kinds: frozenset[str] | None) -> bool:
        passage = self._by_key.get(key)
        return passage is not None and (kinds is None or passage.citation.kind in kinds)

    def _exact(self, query: str, kinds: frozenset[str] | None) -> dict[str, list[tuple[str, float]]]:
        exact: list[str] = []
        graph: list[str] = []
        for number in self._rule_numbers(query):
            exact.append(rule_key(number))
            exact.extend(rule_key(r.number) for r in self._descendants(number))
        for name in self._card_names(query):
            exact.append(card_key(name))
            exact.extend(self._rulings.get(card_key(name), []))
            if self.graph is not None:
                try:
                    numbers = self.graph.rules_for_card(name)
                except KnowledgeError:
                    numbers = []
                # The defining rule of each keyword the card has ("702.12 Indestructible"), not sub-rules.
                graph.extend(rule_key(n) for n in numbers if not n[-1].isalpha())
        return {
            "exact": [(key, 1.0) for key in dict.fromkeys(exact) if self._allowed(key, kinds)],
            "card_rules": [(key, 1.0) for key in dict.fromkeys(graph) if self._allowed(key, kinds)],
        }

    def _rule_numbers(self, query: str) -> list[str]:
        found = [m.lower() for m in _RULE_NUMBER.findall(query)] + _RULE_WORD.findall(query)
        out = []
        for number in dict.fromkeys(found):
            if rule_key(number) in self._by_key or (self.doc is not None and number in self.doc.rules):
                out.append(number)
        return out

    def _descendants(self, number: str) -> list:
        if self.rulebook is None:
            return []
        try:
            return self.rulebook.subrules(number)
        except KnowledgeError:
            return []

    def _card_names(self, query: str) -> list[str]:
        """Cards named in ``[[...]]`` (resolved forgivingly) or written out in full in the text."""
        if self.card_db is None:
            return []
        names: list[str] = []
        for raw in extract_bracket_names(query):
            try:
                names.append(self.card_db.resolve(raw).name)
            except KnowledgeError:
                continue
        words = query.replace("[[", " ").replace("]]", " ").split()
        for n in range(min(_MAX_NAME_WORDS, len(words)), 0, -1):
            for i in range(len(words) - n + 1):
                phrase = " ".join(words[i : i + n]).strip(_NAME_EDGES)
                # One-word names ("Ponder", "Fire") only when capitalised mid-sentence: "ponder this" is not a card.
                if n == 1 and (i == 0 or not phrase[:1].isupper() or len(phrase) < 4):
                    continue
                card = self.card_db.get(phrase)
                if card is not None:
                    names.append(card.name)
        return list(dict.fromkeys(names))

    def _graph_terms(self, query: str, kinds: frozenset[str] | None) -> list[tuple[str, float]]:
        out: dict[str, float] = {}
        for _, weight, rules in self.terms.find(query):
            for number in rules[: self.weights.term_rules]:
                key = rule_key(number)
                if self._allowed(key, kinds) and key not in out:
                    out[key] = weight
        return sorted(out.items(), key=lambda item: -item[1])

    def _glossary_bridge(self, vector, kinds: frozenset[str] | None) -> list[tuple[str, float]]:
        """Rules cited by the glossary entries closest to the query, in the entries' order."""
        out: dict[str, float] = {}
        for hit in self.vector_index.search(vector, self.weights.glossary_depth, ["glossary"]):  # type: ignore[union-attr]
            entry = self.doc.glossary.get(hit.passage.citation.id)  # type: ignore[union-attr]
            for number in entry.references if entry is not None else ():
                key = rule_key(number)
                if key not in out and self._allowed(key, kinds):
                    out[key] = hit.score
        return list(out.items())

    # -- fusion ------------------------------------------------------------------------------------

    def _fuse(self, lists: dict[str, list[tuple[str, float]]], k: int, kinds: frozenset[str] | None) -> list:
        w = self.weights
        weights = {
            "exact": w.exact,
            "bm25": w.bm25,
            "vector": w.vector,
            "graph": w.graph,
            "bridge": w.glossary_bridge,
            "card_rules": w.card_rules,
        }
        # A glossary hop and a card's keyword rules are graph edges (term / card -> defining rule).
        labels = {"bridge": "graph", "card_rules": "graph"}
        scores: dict[str, float] = {}
        # Score without the exact stage: what a sub-rule passes up to its parent, so "rule 704.5k" puts
        # 704.5k itself first, not its parent.
        similar: dict[str, float] = {}
        sources: dict[str, set[str]] = {}
        for name, ranked in lists.items():
            seen: set[str] = set()
            rank = 0
            for key, _ in ranked:
                if key in seen:
                    continue
                seen.add(key)
                gain = weights[name] / (w.rrf_k + rank)
                scores[key] = scores.get(key, 0.0) + gain
                if name != "exact":
                    similar[key] = similar.get(key, 0.0) + gain
                sources.setdefault(key, set()).add(labels.get(name, name))
                rank += 1
        if w.family > 0:
            for key, score in list(similar.items()):
                parent = self._parent_key(key)
                if (
                    parent is not None
                    and self._allowed(parent, kinds)
                    and scores.get(parent, 0.0) < w.family * score
                ):
                    scores[parent] = w.family * score
                    sources.setdefault(parent, set()).update(sources[key])
        ranked_keys = sorted(scores, key=lambda key: (-scores[key], self._order.get(key, 1 << 30)))
        return [
            RetrievalResult(self._by_key[key], scores[key], frozenset(sources[key]))
            for key in itertools.islice(ranked_keys, k)
        ]

    def _parent_key(self, key: str) -> str | None:
        if not key.startswith("rule:"):
            return None
        number = key[5:]
        stripped = number.rstrip("abcdefghijklmnopqrstuvwxyz")
        if stripped == number:
            return None  # rules' parents are chapters, which are headings, not passages
        parent = rule_key(stripped)
        return parent if parent in self._by_key else None


# ------------------------------------------------------------------------------------------- building

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


def load_or_build(
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
        embedder = get_embedder(settings.knowledge.embedding_model)
    passages = build_passages(doc, cards)
    texts = index_texts(passages, doc)
    vectors, rebuilt = load_or_build_vectors(
        vector_index_dir(settings),
        passages,
        texts,
        embedder,
        doc.effective_date,
        progress=progress,
        force=force,
    )
    return KnowledgeIndex(doc, passages, texts, vectors, rebuilt, round(time.perf_counter() - start, 3))


def build_knowledge_index(settings, progress: bool = True, **parts) -> KnowledgeIndex:
    """Build passages and the vector index from scratch and save them (``hexcore index build``)."""
    return load_or_build(settings, progress=progress, force=True, **parts)


def make_retriever(
    settings, index: KnowledgeIndex, embedder=None, graph=None, card_db=None, rulebook=None
) -> HybridRetriever:
    """A :class:`HybridRetriever` over ``index`` with cache size, TTL and latency budget from settings."""
    from knowledge.rules import RuleBook

    knowledge = settings.knowledge
    return HybridRetriever(
        index.passages,
        index.vectors,
        embedder if embedder is not None else get_embedder(knowledge.embedding_model),
        graph=graph,
        card_db=card_db,
        rulebook=rulebook if rulebook is not None else RuleBook(index.doc),
        cache=TTLCache(knowledge.cache_size, knowledge.cache_ttl_s),
        tracker=LatencyTracker(budget_ms=knowledge.retrieval_budget_ms),
        budget_ms=knowledge.retrieval_budget_ms,
        texts=index.texts,
    )
