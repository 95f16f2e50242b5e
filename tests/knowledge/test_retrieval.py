"""Hybrid retrieval over the real index (full 2026-01-16 rules + fixture cards), built once per session."""

from __future__ import annotations

import threading

import pytest

from knowledge.index_build import load_or_build_knowledge_index, make_retriever
from knowledge.retrieval import STAGES, FusionWeights, normalize_query

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hybrid(make_hybrid):
    return make_hybrid()


def ids(results) -> list[str]:
    return [r.passage.citation.id for r in results]


def test_index_holds_every_rule_glossary_entry_and_card(knowledge_index) -> None:
    counts = knowledge_index.vectors.counts()
    assert counts["rule"] == 3114 and counts["glossary"] == 725 and counts["card"] > 30
    assert len(knowledge_index.vectors) == len(knowledge_index.passages)


def test_trample_question_retrieves_the_trample_rules(hybrid) -> None:
    results = hybrid.search("how does trample work", k=5)
    assert any(i.startswith("702.19") for i in ids(results)[:3])
    assert len(results) == 5 and [r.score for r in results] == sorted(
        (r.score for r in results), reverse=True
    )


def test_named_rule_comes_first_exactly(hybrid) -> None:
    results = hybrid.search("what is rule 704.5k", k=5)
    assert results[0].passage.key == "rule:704.5k"
    assert "exact" in results[0].sources
    assert results[0].passage.citation.release == "2026-01-16"


def test_rule_with_subrules_and_chapter_reference(hybrid) -> None:
    results = hybrid.search("702.19", k=4, kinds=["rule"])
    assert ids(results) == ["702.19", "702.19a", "702.19b", "702.19c"]
    chapter = hybrid.search("explain rule 510", k=3, kinds=["rule"])
    assert all(i.startswith("510.") for i in ids(chapter))


def test_card_name_in_text_returns_the_card_and_its_keyword_rule(hybrid) -> None:
    results = hybrid.search("How does Darksteel Citadel work?", k=8)
    assert results[0].passage.key == "card:darksteel citadel" and "exact" in results[0].sources
    by_id = {r.passage.citation.id: r for r in results}
    assert "702.12" in by_id and "graph" in by_id["702.12"].sources  # Indestructible, through the graph


def test_bracketed_nickname_resolves_to_card_and_rulings(hybrid) -> None:
    results = hybrid.search("what does [[goyf]] count?", k=3)
    assert results[0].passage.key == "card:tarmogoyf"
    ixidron = hybrid.search("[[Ixidron]]", k=4)
    assert ixidron[0].passage.key == "card:ixidron"
    assert [r.passage.citation.kind for r in ixidron[1:4]] == ["ruling"] * 3


def test_common_words_are_not_taken_for_one_word_card_names(hybrid) -> None:
    results = hybrid.search("ponder what happens when a creature dies", k=5)
    assert "card:ponder" not in [r.passage.key for r in results if "exact" in r.sources]


def test_kinds_filter(hybrid) -> None:
    results = hybrid.search("trample", k=5, kinds=["glossary"])
    assert results and all(r.passage.citation.kind == "glossary" for r in results)
    assert "Trample" in ids(results)


def test_every_stage_runs_with_a_generous_budget(hybrid) -> None:
    outcome = hybrid.search_detailed(
        "can a creature with deathtouch and trample assign 1 damage to a blocker", k=5
    )
    assert outcome.stages_run == list(STAGES) and outcome.stages_skipped == []
    sources = set().union(*(r.sources for r in outcome.results))
    assert {"vector", "bm25"} <= sources
    assert set(outcome.timings_ms) >= {*STAGES, "total"}


def test_tiny_budget_falls_back_to_exact_and_bm25(make_hybrid) -> None:
    retriever = make_hybrid(budget_ms=1e-6)
    outcome = retriever.search_detailed("what is rule 704.5k about world permanents", k=5)
    assert outcome.stages_run == ["exact", "bm25"]
    assert outcome.stages_skipped == ["graph", "vector"]
    assert outcome.results[0].passage.key == "rule:704.5k"
    assert all(r.sources <= {"exact", "bm25"} for r in outcome.results)
    again = retriever.search_detailed("what is rule 704.5k about world permanents", k=5)
    assert not again.cached  # degraded results are never cached
    assert retriever.stats()["skipped_stages"]["vector"] >= 2


def test_results_are_cached_by_normalised_query(make_hybrid) -> None:
    retriever = make_hybrid()
    first = retriever.search_detailed("How does  TRAMPLE work?", k=5)
    second = retriever.search_detailed("how does trample work?", k=5)
    assert not first.cached and second.cached
    assert second.results == first.results
    assert retriever.search_detailed("how does trample work?", k=5, kinds=["rule"]).cached is False
    stats = retriever.stats()["cache"]
    assert stats["hits"] == 1 and stats["misses"] == 2 and stats["hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert normalize_query("  A  b ") == "a b"


def test_latency_is_tracked_per_stage(make_hybrid) -> None:
    retriever = make_hybrid()
    retriever.search("what does flying do", k=3)
    snapshot = retriever.stats()["latency"]
    for stage in (*STAGES, "total", "fuse"):
        assert snapshot["stages"][stage]["count"] == 1


def test_concurrent_searches_match_sequential_ones(make_hybrid) -> None:
    queries = [
        "how does trample work",
        "what is rule 704.5k",
        "can I respond to a spell with an instant",
        "what happens when a player has 0 life",
        "[[Ixidron]] turns creatures face down",
        "how does the stack resolve",
    ]
    expected = {q: ids(make_hybrid(cache=None).search(q, k=5)) for q in queries}
    shared = make_hybrid()
    errors: list[BaseException] = []
    got: dict[tuple[int, str], list[str]] = {}

    def work(n: int) -> None:
        try:
            for q in queries * 2:
                got[(n, q)] = ids(shared.search(q, k=5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(got[(n, q)] == expected[q] for n in range(4) for q in queries)


def test_family_rollup_lifts_the_parent_of_the_best_subrule(make_hybrid) -> None:
    query = "a permanent with the world supertype that has been on the battlefield for the shortest time"
    plain = ids(make_hybrid(weights=FusionWeights(family=0.0)).search(query, k=8, kinds=["rule"]))
    rolled = ids(make_hybrid().search(query, k=8, kinds=["rule"]))
    child = next(i for i in plain if i[-1].isalpha())  # best sub-rule found by similarity
    parent = child.rstrip("abcdefghijklmnopqrstuvwxyz")
    assert parent in rolled
    assert child not in rolled or rolled.index(parent) < rolled.index(child)


def test_saved_index_is_reused_and_retriever_built_from_settings(
    index_settings, knowledge_index, rules_doc, card_list, retrieval_embedder
) -> None:
    # The session state dir holds the index now (built by whichever test needed it first): reused, not rebuilt.
    again = load_or_build_knowledge_index(
        index_settings, doc=rules_doc, cards=card_list, embedder=retrieval_embedder, progress=False
    )
    assert not again.rebuilt and again.vectors.digest == knowledge_index.vectors.digest
    retriever = make_retriever(index_settings, again, embedder=retrieval_embedder)
    assert retriever.cache.capacity == index_settings.knowledge.cache_size
    assert retriever.budget_ms == index_settings.knowledge.retrieval_budget_ms
    assert retriever.search("what is rule 704.5k", k=1)[0].passage.key == "rule:704.5k"


class BrokenEmbedder:
    """Fault injection: an embedder whose model fails at query time (as after a CUDA or OOM error)."""

    dim = 384
    model_id = "broken"

    def encode(self, texts, batch_size=64, progress=False):
        raise RuntimeError("model failed")


def test_failing_optional_stage_degrades_instead_of_failing(knowledge_index, rule_book, caplog) -> None:
    from knowledge.retrieval import HybridRetriever

    retriever = HybridRetriever(
        knowledge_index.passages,
        knowledge_index.vectors,
        BrokenEmbedder(),
        rulebook=rule_book,
        budget_ms=1e6,
        texts=knowledge_index.texts,
    )
    outcome = retriever.search_detailed("how does trample work", k=5)
    assert "vector" in outcome.stages_skipped and "vector" not in outcome.stages_run
    assert any(r.passage.citation.id.startswith("702.19") for r in outcome.results)
    assert "retrieval stage 'vector' failed" in caplog.text
    assert not retriever.search_detailed("how does trample work", k=5).cached


def test_retriever_without_vectors_runs_lexical_stages_and_caches(
    knowledge_index, rule_book, card_db
) -> None:
    from knowledge.retrieval import HybridRetriever

    retriever = HybridRetriever(
        knowledge_index.passages, None, None, card_db=card_db, rulebook=rule_book, texts=knowledge_index.texts
    )
    assert retriever.stages == ["exact", "bm25", "graph"]
    outcome = retriever.search_detailed("how does trample work", k=5)
    assert outcome.stages_run == ["exact", "bm25", "graph"] and outcome.stages_skipped == []
    assert any(r.passage.citation.id.startswith("702.19") for r in outcome.results)
    assert retriever.search_detailed("how does trample work", k=5).cached


class _PreferText:
    """A stand-in cross-encoder: scores a passage high when it contains ``needle`` (ordering logic only)."""

    def __init__(self, needle: str) -> None:
        self.needle = needle

    def score(self, query, texts):
        import numpy as np

        return np.array([10.0 if self.needle in t else 0.0 for t in texts], dtype=np.float32)


def test_rerank_reorders_the_answer_path_and_search_can_opt_out(make_hybrid) -> None:
    from knowledge.rerank import Reranker

    query = "can a creature with deathtouch and trample assign 1 damage to a blocker"
    plain = make_hybrid(cache=None).search(query, k=8, kinds=["rule"])
    target = plain[5].passage  # something the first stage ranked sixth
    reranker = Reranker(_PreferText(target.text[:60]), depth=8, budget_ms=1e9)  # type: ignore[arg-type]
    retriever = make_hybrid(reranker=reranker, rerank=True)  # as make_retriever builds it for answers
    outcome = retriever.search_detailed(query, k=8, kinds=["rule"])
    assert outcome.results[0].passage.key == target.key
    assert "rerank" in outcome.stages_run and "rerank" in outcome.results[0].sources
    unranked = retriever.search_detailed(query, k=8, kinds=["rule"], rerank=False)
    assert [r.passage.key for r in unranked.results] == [r.passage.key for r in plain]
    assert "rerank" not in unranked.stages_run
    assert (
        make_hybrid(reranker=reranker, rerank=False).search(query, k=1, kinds=["rule"])[0].passage.key
        == plain[0].passage.key
    )


def test_rerank_is_skipped_when_it_would_overrun_its_budget(make_hybrid) -> None:
    from knowledge.rerank import Reranker

    reranker = Reranker(_PreferText("zzz"), depth=8, budget_ms=5.0)  # type: ignore[arg-type]
    reranker._recent = [50.0]  # it has been costing 50 ms
    retriever = make_hybrid(reranker=reranker, rerank=True)
    outcome = retriever.search_detailed("how does trample work", k=5)
    assert "rerank" in outcome.stages_skipped and outcome.results
    assert not retriever.search_detailed("how does trample work", k=5).cached  # degraded: not cached


def test_game_terms_and_clauses_reach_their_defining_rules(make_hybrid) -> None:
    question = (
        "In a four-player game Player A is eliminated while Player B controls a creature "
        "that Player A owns and Player C has the monarch"
    )
    before = make_hybrid(understanding=False).search_detailed(question, k=10, kinds=["rule"])
    after = make_hybrid().search_detailed(question, k=10, kinds=["rule"])
    ids_after = [r.passage.citation.id for r in after.results]
    assert "800.4a" in ids_after  # "eliminated" -> leaving the game
    assert any("graph" in r.sources for r in after.results if r.passage.citation.id == "800.4a")
    assert "understand" in after.timings_ms and "understand" in before.timings_ms
