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

from knowledge.bm25 import BM25Index
from knowledge.cache import TTLCache
from knowledge.cards import extract_bracket_names
from knowledge.embeddings import Embedder
from knowledge.errors import KnowledgeError
from knowledge.latency import LatencyTracker
from knowledge.models import Passage, RetrievalResult, RulesDocument
from knowledge.passages import card_key, index_texts, rule_key
from knowledge.question import QuestionAnalysis, QuestionAnalyzer, TermMatcher
from knowledge.vector_index import VectorIndex

log = logging.getLogger(__name__)

STAGES = ("exact", "bm25", "graph", "vector")
RERANK = "rerank"
"""The second stage (after fusion): re-ordering by the trained cross-encoder, see :mod:`knowledge.rerank`."""
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
    game_terms: float = 0.5
    """Weight of the rules defining the game terms a question uses in everyday words ("eliminated",
    "in response"; :data:`knowledge.question.GAME_TERMS`)."""
    concepts: float = 0.5
    """Weight of each clause's own BM25 (and, in a re-ranked search, vector) list in a multi-concept
    question, shared among its clauses."""


@dataclass(slots=True)
class SearchOutcome:
    results: list[RetrievalResult]
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    cached: bool = False


@dataclass(slots=True)
class _Context:
    """One search's inputs, shared by its stages."""

    query: str
    kinds: frozenset[str] | None
    deep: bool
    """A re-ranked search: more budget, so the vector stage embeds each concept too."""
    analysis: QuestionAnalysis


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
        reranker=None,
        rerank: bool = False,
        understanding: bool = True,
        deep_budget_ms: float = 150.0,
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
        known = [n for n in self.doc.rules if rule_key(n) in self._by_key] if self.doc is not None else None
        self.analyzer = QuestionAnalyzer(card_db, self.terms, known_rules=known, enabled=understanding)
        self.reranker = reranker
        """A :class:`knowledge.rerank.Reranker` (the cross-encoder), or None."""
        self.rerank_default = rerank
        """Whether a search is *deep* by default: the answer path's second stage (each clause embedded and
        searched too; then the cross-encoder, when there is one) under ``deep_budget_ms``."""
        self.deep_budget_ms = deep_budget_ms
        self._texts = dict(
            zip((p.key for p in self.passages), texts or index_texts(self.passages, self.doc), strict=True)
        )
        self._rulings: dict[str, list[str]] = {}
        for p in self.passages:
            if p.citation.kind == "ruling":
                self._rulings.setdefault(card_key(p.citation.id), []).append(p.key)
        self._skips = dict.fromkeys(STAGES, 0)
        self._skips_lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------------

    def search(
        self, query: str, k: int = 8, kinds: Iterable[str] | None = None, rerank: bool | None = None
    ) -> list[RetrievalResult]:
        return self.search_detailed(query, k, kinds, rerank).results

    def search_detailed(
        self, query: str, k: int = 8, kinds: Iterable[str] | None = None, rerank: bool | None = None
    ) -> SearchOutcome:
        """``rerank``: None = this retriever's default (settings): the deep second stage or not."""
        kind_set = frozenset(kinds) if kinds else None
        deep = self.rerank_default if rerank is None else rerank
        key = (normalize_query(query), k, kind_set, deep)
        start = time.perf_counter()
        cached = self.cache.get(key)
        if cached is not None:
            self.tracker.record_request((time.perf_counter() - start) * 1000.0)
            return SearchOutcome(list(cached), cached=True)
        outcome = SearchOutcome(results=[])
        with self.tracker.request():
            t0 = time.perf_counter()
            with self.tracker.stage("understand"):  # cards, game terms, clauses: string work, < 1 ms
                context = _Context(
                    query, kind_set, deep, self.analyzer.analyze(query, self._card_names(query))
                )
            outcome.timings_ms["understand"] = (time.perf_counter() - t0) * 1000.0
            lists: dict[str, list[tuple[str, float]]] = {}
            for stage in self.stages:
                elapsed = (time.perf_counter() - start) * 1000.0
                if stage not in REQUIRED_STAGES and not self._should_run(stage, elapsed, deep):
                    outcome.stages_skipped.append(stage)
                    continue
                t0 = time.perf_counter()
                try:
                    with self.tracker.stage(stage):
                        found = self._run_stage(stage, context)
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
                crossing = deep and self.reranker is not None
                depth = max(k, self.reranker.depth) if crossing else k  # type: ignore[union-attr]
                outcome.results = self._fuse(lists, depth, kind_set)
            if crossing:
                self._rerank(context, outcome, start)
            outcome.results = outcome.results[:k]
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

    def _rerank(self, context: _Context, outcome: SearchOutcome, start: float) -> None:
        elapsed = (time.perf_counter() - start) * 1000.0
        if not self.reranker.fits(elapsed):  # type: ignore[union-attr]
            outcome.stages_skipped.append(RERANK)
            with self._skips_lock:
                self._skips[RERANK] = self._skips.get(RERANK, 0) + 1
            return
        t0 = time.perf_counter()
        try:
            with self.tracker.stage(RERANK):
                outcome.results = self.reranker.rerank(  # type: ignore[union-attr]
                    context.query, outcome.results, lambda p: self._texts.get(p.key, p.text)
                )
        except Exception:
            log.exception("re-ranking failed; answering with the first-stage order")
            outcome.stages_skipped.append(RERANK)
            return
        outcome.timings_ms[RERANK] = (time.perf_counter() - t0) * 1000.0
        outcome.stages_run.append(RERANK)

    def _budget(self, deep: bool) -> float:
        """First-stage budget: the search budget, or in a re-ranked search what the re-ranker leaves of its
        own (larger) budget."""
        if not deep:
            return self.budget_ms
        rest = self.reranker.expected_ms() if self.reranker is not None else 0.0
        return max(self.budget_ms, self.deep_budget_ms - rest)

    def _should_run(self, stage: str, elapsed_ms: float, deep: bool = False) -> bool:
        expected = self.tracker.expected_ms(stage) or 0.0
        budget = self._budget(deep)
        if elapsed_ms + expected <= budget:
            return True
        now = time.monotonic()
        with self._skips_lock:
            probe = elapsed_ms < budget and now - self._last_probe[stage] >= self.probe_interval_s
            if probe:
                self._last_probe[stage] = now
            else:
                self._skips[stage] += 1
        return probe

    def _run_stage(self, stage: str, ctx: _Context) -> dict[str, list[tuple[str, float]]]:
        depth, kinds = self.weights.depth, ctx.kinds
        if stage == "exact":
            return self._exact(ctx)
        if stage == "bm25":
            found = {"bm25": [(h.passage.key, h.score) for h in self.bm25.search(ctx.query, depth, kinds)]}
            for i, concept in enumerate(ctx.analysis.concepts):
                hits = self.bm25.search(concept, depth, kinds)
                found[f"concept_bm25_{i}"] = [(h.passage.key, h.score) for h in hits]
            return found
        if stage == "graph":
            return {"graph": self._graph_terms(ctx), "terms": self._game_terms(ctx)}
        if stage == "vector":
            # A re-ranked search (the answer path, a larger budget) embeds each clause too, in one batch.
            texts = [ctx.query, *(ctx.analysis.concepts if ctx.deep else ())]
            vectors = self.embedder.encode(texts)  # type: ignore[union-attr]
            found = {}
            for i, vector in enumerate(vectors):
                hits = self.vector_index.search(vector, depth, kinds)  # type: ignore[union-attr]
                name = "vector" if i == 0 else f"concept_vector_{i - 1}"
                found[name] = [(h.passage.key, h.score) for h in hits if h.passage.key in self._by_key]
            if self.weights.glossary_bridge > 0 and self.doc is not None:
                found["bridge"] = self._glossary_bridge(vectors[0], kinds)
            return found
        raise ValueError(stage)

    def _allowed(self, key: str, kinds: frozenset[str] | None) -> bool:
        passage = self._by_key.get(key)
        return passage is not None and (kinds is None or passage.citation.kind in kinds)

    def _exact(self, ctx: _Context) -> dict[str, list[tuple[str, float]]]:
        kinds = ctx.kinds
        exact: list[str] = []
        graph: list[str] = []
        for number in self._rule_numbers(ctx.query):
            exact.append(rule_key(number))
            exact.extend(rule_key(r.number) for r in self._descendants(number))
        for name in ctx.analysis.cards:
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

    def _graph_terms(self, ctx: _Context) -> list[tuple[str, float]]:
        out: dict[str, float] = {}
        for _, weight, rules in ctx.analysis.terms:
            for number in rules[: self.weights.term_rules]:
                key = rule_key(number)
                if self._allowed(key, ctx.kinds) and key not in out:
                    out[key] = weight
        return sorted(out.items(), key=lambda item: -item[1])

    def _game_terms(self, ctx: _Context) -> list[tuple[str, float]]:
        """Rules of the everyday game terms, in the order the question uses them."""
        out: dict[str, float] = {}
        for _, rules in ctx.analysis.game_terms:
            for number in rules:
                key = rule_key(number)
                if self._allowed(key, ctx.kinds):
                    out.setdefault(key, 1.0)
        return list(out.items())

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
            "terms": w.game_terms,
        }
        concept_lists = sum(name.startswith("concept_") for name in lists)
        for name in lists:
            if name.startswith("concept_"):  # the clauses share one weight, per kind of list
                weights[name] = w.concepts / max(1, concept_lists / (2 if "concept_vector_0" in lists else 1))
        # A glossary hop and a card's keyword rules are graph edges (term / card -> defining rule).
        labels = {"bridge": "graph", "card_rules": "graph", "terms": "graph"}
        labels.update({n: ("vector" if "vector" in n else "bm25") for n in lists if n.startswith("concept_")})
        scores: dict[str, float] = {}
        # Score without the exact stage: what a sub-rule passes up to its parent, so "rule 704.5k" puts
        # 704.5k itself first, not its parent.
        similar: dict[str, float] = {}
        sources: dict[str, set[str]] = {}
        for name, ranked in lists.items():
            if weights[name] <= 0:
                continue
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
