"""BM25 over the real rules passages: tokenizer, kinds filter, the baseline retriever."""

from __future__ import annotations

import logging

import pytest

from knowledge.bm25 import BM25Index, BM25Retriever, Tokenizer
from knowledge.passages import build_passages, index_texts


@pytest.fixture(scope="module")
def passages(rules_doc, card_list):
    return build_passages(rules_doc, card_list)


@pytest.fixture(scope="module")
def bm25(passages, rules_doc) -> BM25Index:
    return BM25Index(passages, index_texts(passages, rules_doc))


def test_tokenizer_stems_drops_stopwords_and_keeps_rule_numbers() -> None:
    tokens = Tokenizer()("The creatures were blocking; see rule 702.19b’s text")
    assert "block" in tokens and "creatur" in tokens
    assert "the" not in tokens
    assert "702.19b" in tokens


def test_trample_query_finds_trample_rules(bm25: BM25Index) -> None:
    hits = bm25.search("trample excess damage to the player", k=5, kinds=["rule"])
    assert hits and all(h.passage.citation.kind == "rule" for h in hits)
    assert any(h.passage.citation.id.startswith("702.19") for h in hits[:3])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_kind_filter(bm25: BM25Index) -> None:
    hits = bm25.search("trample", k=5, kinds=["glossary"])
    assert "glossary:trample" in [h.passage.key for h in hits[:2]]
    assert all(h.passage.citation.kind == "glossary" for h in hits)


def test_unknown_words_give_no_results(bm25: BM25Index) -> None:
    assert bm25.search("qwzzx blorf", k=5) == []
    assert bm25.idf("qwzzx") == 0.0
    assert bm25.idf("trample") > bm25.idf("player")


def test_baseline_retriever_signature(passages, rules_doc) -> None:
    retriever = BM25Retriever(passages, doc=rules_doc)
    results = retriever.search("how does deathtouch work", k=4, kinds=["rule"])
    assert len(results) == 4
    assert all(r.sources == frozenset({"bm25"}) for r in results)
    assert any(r.passage.citation.id.startswith("702.2") for r in results)


def _bm25s_records(passages, root_level: int) -> list[logging.LogRecord]:
    """Build a small index with the application's root logger at ``root_level``; what bm25s logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.NOTSET)  # accepts anything a logger lets through
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    before = root.level
    root.setLevel(root_level)
    root.addHandler(handler)
    try:
        BM25Index(passages, index_texts(passages))
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
    return [r for r in records if r.name.startswith("bm25s")]


def test_building_an_index_logs_nothing_unless_debug_is_asked_for(passages) -> None:
    """bm25s forces its logger to DEBUG on import; every ``hexcore search`` printed its build message."""
    assert _bm25s_records(passages[:50], logging.WARNING) == []
    assert _bm25s_records(passages[:50], logging.DEBUG)  # still there with hexcore -vv
