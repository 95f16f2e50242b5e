"""The support and relevance thresholds are calibrated on data built from the rules alone."""

from __future__ import annotations

import pytest

from engine.support import SUPPORT_THRESHOLD
from training.relevance_calibration import calibrate_relevance, in_domain_questions, offtopic_questions
from training.support_calibration import (
    TARGET_REJECTION,
    build_cases,
    build_phrase_cases,
    calibrate,
    calibrate_phrases,
)


@pytest.fixture(scope="module")
def rules_doc(latest_rules_path):
    from knowledge.rules import load_rules

    return load_rules(latest_rules_path)


def test_cases_come_from_the_rules_examples(rules_doc) -> None:
    cases = build_cases(rules_doc)
    supported = [c for c in cases if c.supported]
    assert len(supported) > 150 and len(cases) - len(supported) > 100
    for case in cases[:20]:
        rule = rules_doc.rules[case.rule]
        assert case.passage == rule.text
        if case.supported:  # its own example's conclusion
            assert any(case.conclusion in e for e in rule.examples)


def test_the_served_threshold_is_the_calibrated_one(rules_doc) -> None:
    calibration = calibrate(build_cases(rules_doc))
    assert calibration.threshold == SUPPORT_THRESHOLD
    assert calibration.rejected_unsupported >= TARGET_REJECTION
    assert calibration.kept_supported > 0.3  # and it still keeps a good share of faithful conclusions


def test_relevance_calibration_keeps_in_domain_questions(rules_doc) -> None:
    in_domain, offtopic = in_domain_questions(rules_doc, limit=50), offtopic_questions()
    assert len(in_domain) == 50 and len(offtopic) >= 40
    assert not any("Example" in q for q in offtopic)
    # A scorer that knows the rules' words: the threshold keeps 98% of in-domain questions.
    words = {w.lower() for q in in_domain for w in q.split()}
    calibration = calibrate_relevance(
        lambda q: sum(w.lower() in words for w in q.split()) / len(q.split()), in_domain, offtopic
    )
    assert calibration.kept_in_domain >= 0.98 and calibration.rejected_offtopic > 0.5


@pytest.mark.slow
def test_the_served_relevance_threshold_is_the_calibrated_one(real_engine_settings) -> None:
    from engine.pipeline import RELEVANCE_THRESHOLD
    from hexcore.settings import KnowledgeSettings
    from knowledge.base import KnowledgeBase
    from knowledge.embeddings import get_embedder
    from knowledge.lead import LeadSelector

    # Every retrieval stage runs (no latency budget), so a busy machine cannot change the scores.
    settings = real_engine_settings()
    settings.knowledge = KnowledgeSettings(retrieval_budget_ms=60_000, rerank_budget_ms=60_000)
    kb = KnowledgeBase.load(settings)
    selector = LeadSelector(get_embedder().encode)

    def score(question: str) -> float:
        lead = selector.select(question, kb.search(question, k=6))
        return lead.score if lead else 0.0

    in_domain, offtopic = in_domain_questions(kb.doc), offtopic_questions()
    # The served threshold keeps nearly all the rules' questions and turns away some off-topic ones (few since
    # question understanding: see docs/BENCHMARKS.md), and it is what the calibration gives.
    kept = sum(score(q) >= RELEVANCE_THRESHOLD for q in in_domain) / len(in_domain)
    rejected = sum(score(q) < RELEVANCE_THRESHOLD for q in offtopic) / len(offtopic)
    assert kept >= 0.97 and rejected >= 0.1, (kept, rejected)
    assert abs(calibrate_relevance(score, in_domain, offtopic).threshold - RELEVANCE_THRESHOLD) <= 0.05


def test_the_served_phrase_threshold_keeps_restatements_and_rejects_recombinations(rules_doc) -> None:
    from engine.support import PHRASE_THRESHOLD

    kept, rejected = calibrate_phrases(build_phrase_cases(rules_doc))[PHRASE_THRESHOLD]
    assert kept >= 0.99 and rejected >= 0.95
