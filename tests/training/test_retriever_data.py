"""Retriever training pairs come from the rules, cards and feedback, and split by rule family."""

from __future__ import annotations

import pytest

from training.retriever_data import build_pairs, counts_by_source, family, feedback_pairs, split_pairs


@pytest.fixture(scope="module")
def rules_doc(latest_rules_path):
    from knowledge.rules import load_rules

    return load_rules(latest_rules_path)


@pytest.fixture(scope="module")
def card_list(cards_dir):
    from knowledge.cards import load_card_dir

    return load_card_dir(cards_dir)


@pytest.fixture(scope="module")
def knowledge_graph(rules_doc, card_list):
    from knowledge.graph import KnowledgeGraph

    return KnowledgeGraph.build(rules_doc, card_list)


def test_pairs_from_every_source_point_at_rule_passages(rules_doc, card_list, knowledge_graph):
    pairs = build_pairs(rules_doc, card_list, knowledge_graph)
    counts = counts_by_source(pairs)
    assert {"example", "glossary", "subrule", "xref", "card"} <= set(counts)
    assert all(rules_doc.rules[p.rule].kind in ("rule", "subrule") for p in pairs)  # never a chapter
    assert len({(p.query, p.rule) for p in pairs}) == len(pairs)
    example = next(p for p in pairs if p.source == "example")
    assert example.query in " ".join(rules_doc.rules[example.rule].full_text().split())


def test_glossary_chapter_references_land_on_the_chapter_opening_rule(rules_doc):
    pairs = [
        p for p in build_pairs(rules_doc) if p.source == "glossary" and p.query.startswith("What is Copy?")
    ]
    assert pairs and pairs[0].rule == "707.1"


def test_only_helpful_feedback_becomes_pairs(rules_doc):
    rows = [
        {
            "question": "Does trample damage carry over to the player?",
            "citations": ["CR 702.19b"],
            "score": 2,
        },
        {"question": "Some question that was voted down here", "citations": ["CR 702.19c"], "score": -1},
        {"question": "A question citing a rule that does not exist", "citations": ["CR 999.9"], "score": 1},
    ]
    pairs = feedback_pairs(rows, rules_doc)
    assert [(p.rule, p.source) for p in pairs] == [("702.19b", "feedback")]


def test_the_split_never_puts_a_family_on_both_sides(rules_doc, card_list, knowledge_graph):
    train, val = split_pairs(build_pairs(rules_doc, card_list, knowledge_graph), 0.2, ("example", "glossary"))
    assert val and train
    assert not {family(p.rule) for p in train} & {family(p.rule) for p in val}
    assert {p.source for p in val} <= {"example", "glossary"}
