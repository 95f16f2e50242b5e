"""The lead of an answer: sentence spans, and the deciding rule chosen among retrieval results (real MiniLM)."""

from __future__ import annotations

import pytest

from knowledge.lead import Lead, LeadSelector, is_lead_candidate, split_sentences
from knowledge.models import Citation, Passage, RetrievalResult

TRAMPLE_D = (
    "If an attacking creature with trample or trample over planeswalkers is blocked, but there are no "
    "creatures blocking it when damage is assigned, its damage is assigned to the defending player and/or "
    "planeswalker as though all blocking creatures have been assigned lethal damage."
)
DEATHTOUCH_C = (
    "Any nonzero amount of combat damage assigned to a creature by a source with deathtouch is considered to "
    "be lethal damage for the purposes of determining assignment. This is true even if the creature has "
    "damage marked on it. (See rule 510.1c-d.)"
)


def rule(number: str, text: str, title: str | None = None) -> Passage:
    return Passage(f"rule:{number}", text, Citation(number, "rule", "2026-01-16"), title)


def results(*passages: Passage) -> list[RetrievalResult]:
    return [RetrievalResult(p, 1.0 / (i + 1)) for i, p in enumerate(passages)]


def test_sentences_split_at_sentence_ends_but_not_inside_rule_numbers() -> None:
    spans = split_sentences(DEATHTOUCH_C)
    sentences = [DEATHTOUCH_C[s:e] for s, e in spans]
    assert sentences == [
        "Any nonzero amount of combat damage assigned to a creature by a source with deathtouch is considered "
        "to be lethal damage for the purposes of determining assignment.",
        "This is true even if the creature has damage marked on it.",
        "(See rule 510.1c-d.)",
    ]


def test_examples_and_lines_are_sentences_of_their_own() -> None:
    text = "A rule sentence.\nExample: A 2/2 attacks. It deals 2 damage."
    assert [text[s:e] for s, e in split_sentences(text)] == [
        "A rule sentence.",
        "Example: A 2/2 attacks.",
        "It deals 2 damage.",
    ]


@pytest.mark.parametrize("text", ["", "   ", "Trample"])
def test_headings_and_blanks_are_never_leads(text: str) -> None:
    assert not is_lead_candidate(rule("702.19", text))


def test_cards_and_glossary_are_never_leads_but_rulings_are() -> None:
    long = "x" * 40
    assert not is_lead_candidate(Passage("card:x", long, Citation("X", "card")))
    assert not is_lead_candidate(Passage("glossary:x", long, Citation("X", "glossary", "2026-01-16")))
    assert is_lead_candidate(Passage("ruling:x:1", long, Citation("X", "ruling")))


@pytest.fixture(scope="module")
def selector() -> LeadSelector:
    from knowledge.embeddings import get_embedder

    return LeadSelector(get_embedder().encode)


def test_the_sentence_that_answers_is_picked(selector: LeadSelector) -> None:
    lead = selector.select(
        "Is damage from a deathtouch creature lethal even if the blocker already has damage marked?",
        results(rule("702.2c", DEATHTOUCH_C, "702.2 Deathtouch")),
    )
    assert isinstance(lead, Lead)
    assert lead.sentence == "This is true even if the creature has damage marked on it."
    assert lead.passage.text[lead.start : lead.end] == lead.sentence and 0 < lead.score <= 1


def test_the_heading_is_skipped_and_the_matching_rule_leads(selector: LeadSelector) -> None:
    lead = selector.select(
        "How does trample work when the blocker dies?",
        results(
            rule("702.19", "Trample"),
            rule("702.19d", TRAMPLE_D, "702.19 Trample"),
            rule("702.2c", DEATHTOUCH_C, "702.2 Deathtouch"),
        ),
    )
    assert lead is not None and lead.passage.citation.id == "702.19d"
    assert lead.to_json()["id"] == "702.19d" and lead.to_json()["sentence"] == TRAMPLE_D


def test_a_far_better_sentence_match_overtakes_retrievals_order(selector: LeadSelector) -> None:
    unrelated = rule(
        "104.3a", "A player can concede the game at any time. A player who concedes leaves the game."
    )
    question = "How does trample work when the blocker dies?"
    lead = selector.select(question, results(unrelated, rule("702.19d", TRAMPLE_D, "702.19 Trample")))
    assert lead is not None and lead.passage.citation.id == "702.19d"


def test_no_candidate_no_lead(selector: LeadSelector) -> None:
    assert selector.select("What is trample?", results(rule("702.19", "Trample"))) is None
    assert selector.select("What is trample?", []) is None


def counting_encoder(calls: list[int]):
    """An encoder that records how many texts each call embeds (all get the same vector)."""

    def encode(texts):
        import numpy as np

        calls.append(len(texts))
        return np.ones((len(texts), 4), dtype=np.float32) / 2

    return encode


def test_sentence_embeddings_are_cached_per_passage() -> None:
    calls: list[int] = []
    encode = counting_encoder(calls)
    selector = LeadSelector(encode, cache_size=1)
    passage = rule("702.2c", DEATHTOUCH_C)
    selector.select("q", results(passage))
    selector.select("q", results(passage))
    assert calls == [1, 3, 1]  # question, the passage's 3 sentences, then only the question again
    selector.select("q", results(rule("702.19d", TRAMPLE_D)))
    selector.select("q", results(passage))  # evicted (capacity 1): encoded again
    assert calls[-1] == 3


def test_cache_size_zero_keeps_nothing() -> None:
    calls: list[int] = []
    encode = counting_encoder(calls)
    selector = LeadSelector(encode, cache_size=0)
    passage = rule("702.2c", DEATHTOUCH_C)
    first = selector.select("q", results(passage))
    again = selector.select("q", results(passage))
    assert calls == [1, 3, 1, 3]  # the passage's sentences are encoded each time
    assert first is not None and again is not None and first.sentence == again.sentence
