"""Passages from the real 2026-01-16 rules and the fixture cards."""

from __future__ import annotations

from dataclasses import replace

from knowledge.models import RulesDocument
from knowledge.passages import (
    build_passages,
    card_passages,
    count_by_kind,
    glossary_passages,
    index_text,
    passages_digest,
    rule_passages,
)


def by_key(passages):
    return {p.key: p for p in passages}


def test_one_passage_per_rule_and_subrule(rules_doc: RulesDocument) -> None:
    passages = rule_passages(rules_doc)
    numbered = [r for r in rules_doc.rules.values() if r.kind in ("rule", "subrule")]
    assert len(passages) == len(numbered) == 1157 + 1957
    assert len({p.key for p in passages}) == len(passages)
    assert "rule:5" not in by_key(passages) and "rule:505" not in by_key(passages)  # headings are titles


def test_subrule_passage_keeps_examples_title_and_release(rules_doc: RulesDocument) -> None:
    p = by_key(rule_passages(rules_doc))["rule:702.19b"]
    assert p.title == "702.19 Trample"
    assert p.citation.id == "702.19b" and p.citation.kind == "rule" and p.citation.release == "2026-01-16"
    assert p.text == rules_doc.rules["702.19b"].full_text()
    assert "\nExample: A 2/2 creature that can block an additional creature" in p.text


def test_titles_name_the_chapter_when_the_parent_is_a_statement(rules_doc: RulesDocument) -> None:
    passages = by_key(rule_passages(rules_doc))
    assert passages["rule:505.6a"].title == "505 Main Phase / 505.6"
    assert passages["rule:505.6"].title == "505 Main Phase"


def test_heading_rule_is_indexed_with_its_subrules(rules_doc: RulesDocument) -> None:
    p = by_key(rule_passages(rules_doc))["rule:702.19"]
    assert p.text == "Trample"  # shown as printed
    indexed = index_text(p, rules_doc)
    assert indexed.startswith("Keyword Abilities: Trample.")
    assert "assigning an attacking creature" in indexed  # from 702.19a/b


def test_subrule_index_text_has_context_but_no_numbers(rules_doc: RulesDocument) -> None:
    p = by_key(rule_passages(rules_doc))["rule:505.6a"]
    assert index_text(p, rules_doc).startswith("Main Phase: The main phase is the only phase")


def test_glossary_passages(rules_doc: RulesDocument) -> None:
    passages = glossary_passages(rules_doc)
    assert len(passages) == 725
    trample = by_key(passages)["glossary:trample"]
    assert trample.citation.kind == "glossary" and trample.citation.id == "Trample"
    assert "702.19" in trample.text


def test_card_and_ruling_passages(card_list) -> None:
    passages = card_passages(card_list)
    cards = [p for p in passages if p.citation.kind == "card"]
    assert len({p.key for p in passages}) == len(passages)
    fire_ice = by_key(passages)["card:fire // ice"]
    assert "Fire" in fire_ice.text and "Ice" in fire_ice.text and "\n----\n" in fire_ice.text
    assert fire_ice.citation.label() == "Fire // Ice"
    rulings = [p for p in passages if p.citation.kind == "ruling"]
    assert rulings, "the fixtures include rulings lists"
    owners = {p.citation.id for p in cards}
    assert all(r.citation.id in owners for r in rulings)


def test_build_passages_counts(rules_doc: RulesDocument, card_list) -> None:
    counts = count_by_kind(build_passages(rules_doc, card_list))
    assert counts["rule"] == 3114 and counts["glossary"] == 725 and counts["card"] > 30


def test_digest_changes_with_any_text(rules_doc: RulesDocument) -> None:
    passages = rule_passages(rules_doc)[:50]
    texts = [p.text for p in passages]
    base = passages_digest(passages, texts)
    assert base == passages_digest(list(passages), list(texts))
    changed = [*passages[:-1], replace(passages[-1], text=passages[-1].text + " ")]
    assert passages_digest(changed, texts) != base
    assert passages_digest(passages, [*texts[:-1], "other"]) != base
