"""The per-answer scores: the gold-rule matching relation, None where a score is undefined, keyword overlap
with stems and stopwords, entity folding, and embedding similarity with the real embedder."""

from __future__ import annotations

import pytest

from evaluation.scoring import (
    citation_precision,
    citation_recall,
    entity_recall,
    fold,
    keyword_overlap,
    keywords,
    rule_matches,
    similarities,
    similarity,
)


@pytest.mark.parametrize(
    ("gold", "cited", "matches"),
    [
        ("702.19b", "702.19b", True),  # the gold rule itself
        ("505.6a", "505.6", True),  # the rule whose sub-rule is gold
        ("702.19", "702.19b", True),  # a sub-rule of the gold rule
        ("702.19", "702.19d", True),
        ("702.19c", "702.19b", False),  # a sibling is a different rule
        ("702.19", "702.1", False),  # same leading characters, different rule
        ("702.1", "702.19", False),
        ("702.1", "702.1b", True),
        ("702.19", "702", False),  # a section heading matches every keyword: never counted
        ("702.19b", "702", False),
        ("702.19", "613.4b", False),
        ("505.6a", "505.6b", False),
    ],
)
def test_rule_matching_relation(gold: str, cited: str, matches: bool) -> None:
    assert rule_matches(gold, cited) is matches


def test_citation_recall_counts_gold_rules_matched() -> None:
    assert citation_recall(["505.6a", "117.1a"], ["505.6", "702.19b"]) == 0.5
    assert citation_recall(["702.19"], ["702.19b", "702.19c"]) == 1.0
    assert citation_recall(["702.19"], ["702.1", "702.190"]) == 0.0
    assert citation_recall(["800.4a", "800.4a"], ["800.4a"]) == 1.0  # duplicated gold counts once


def test_citation_precision_counts_citations_that_match() -> None:
    assert citation_precision(["702.19"], ["702.19b", "702.19c", "510.1c", "702.2"]) == 0.5
    assert citation_precision(["505.6a"], ["505.6"]) == 1.0
    assert citation_precision(["702.19b"], ["702.19b", "702.19b", "101.1"]) == 0.5  # duplicates once


def test_undefined_scores_are_none_not_zero_or_one() -> None:
    assert citation_recall([], ["702.19b"]) is None  # no gold rules (tournament-policy questions)
    assert citation_precision([], ["702.19b"]) is None
    assert citation_precision(["702.19b"], []) is None  # cites no rule: nothing to be precise about
    assert citation_recall(["702.19b"], []) == 0.0  # but it did miss the gold rule
    assert entity_recall([], ["Humility"], "Humility wins.") is None
    overlap = keyword_overlap("", "Anything at all")
    assert (overlap.recall, overlap.precision, overlap.f1) == (None, None, None)


def test_keywords_drop_stopwords_and_stem() -> None:
    words = keywords("The attacking creature attacks, and it is blocked by the blockers.")
    assert {"the", "and", "it", "is", "by"}.isdisjoint(words)
    assert "attack" in words and "creatur" in words and "block" in words
    assert keywords("attacking") == keywords("attacks")
    assert "702.19b" in keywords("See rule 702.19b.")  # rule numbers stay whole


def test_keyword_overlap_on_real_sentences() -> None:
    reference = (
        "An attacking creature with trample assigns lethal damage to its blockers first; any excess may "
        "be assigned to the player it is attacking."
    )
    paraphrase = "If a creature with trample attacks, it assigns lethal damage to blockers and the excess to the player."
    unrelated = "Flying means the creature can't be blocked except by creatures with flying or reach."
    good, bad = keyword_overlap(reference, paraphrase), keyword_overlap(reference, unrelated)
    assert good.recall is not None and good.precision is not None and good.f1 is not None
    assert good.recall > 0.6 and good.precision > 0.6
    assert good.f1 == pytest.approx(2 * good.recall * good.precision / (good.recall + good.precision))
    assert bad.f1 is not None and bad.f1 < good.f1 / 2
    # Stopwords do not pad the score: only "creatur" is shared besides them.
    only_stopwords = keyword_overlap(reference, "It is the one and only creature that it has.")
    assert only_stopwords.recall == pytest.approx(1 / len(keywords(reference)))


def test_keyword_overlap_of_an_empty_answer() -> None:
    overlap = keyword_overlap("Untap, upkeep, and draw.", "")
    assert overlap.recall == 0.0 and overlap.precision is None and overlap.f1 == 0.0


def test_entity_folding_and_recall() -> None:
    assert fold("Jace, the Mind Sculptor") == fold("jace the mind sculptor") == "jace the mind sculptor"
    assert fold("Gaea’s Cradle") == fold("Gaea's cradle")
    assert fold("Lim-Dûl's Vault") == "lim duls vault"
    gold = ["Jace, the Mind Sculptor", "Humility", "deathtouch"]
    # Cited as a card (folded), named in the text (folded), not named at all.
    assert entity_recall(gold, ["JACE, THE MIND SCULPTOR"], "Nothing relevant.") == pytest.approx(1 / 3)
    assert entity_recall(gold, [], "jace the mind sculptor and humility") == pytest.approx(2 / 3)
    assert entity_recall(gold, [], "Deathtouch-like damage; Humility.") == pytest.approx(2 / 3)
    # Whole words only: "fame" inside another word does not count.
    assert entity_recall(["Fame"], [], "Infamete is not a card.") == 0.0


@pytest.fixture(scope="module")
def encode():
    from knowledge.embeddings import get_embedder

    return get_embedder().encode


def test_similarity_prefers_a_paraphrase(encode) -> None:
    reference = "Untap, upkeep, and draw."
    paraphrase = "The beginning phase has the untap step, then the upkeep step, then the draw step."
    unrelated = "A creature with lifelink causes its controller to gain that much life when it deals damage."
    assert similarity(encode, paraphrase, reference) > similarity(encode, unrelated, reference) + 0.2
    assert similarity(encode, reference, reference) == pytest.approx(1.0, abs=1e-5)


def test_similarities_batch_in_one_encode_call(encode) -> None:
    calls: list[int] = []

    def counting(texts):
        calls.append(len(texts))
        return encode(texts)

    pairs = [("What is trample?", "Trample lets excess damage through."), ("Flying", "Reach")]
    values = similarities(counting, pairs)
    assert calls == [4]
    assert values == pytest.approx([similarity(encode, *pair) for pair in pairs], abs=1e-5)
    assert similarities(counting, []) == [] and calls == [4]
