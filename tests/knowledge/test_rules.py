"""The Comprehensive Rules parser and RuleBook lookups, on the real releases in ../shared/data/rules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from knowledge.errors import DataMissing, RulesParseError, UnknownRule
from knowledge.models import RulesDocument
from knowledge.rules import (
    RuleBook,
    format_rule,
    list_releases,
    load_release,
    load_rules,
    normalize_number,
    parse_rules,
    rule_sort_key,
)

RELEASES = [
    "2023-10-13",
    "2024-02-06",
    "2024-06-07",
    "2024-08-02",
    "2024-11-08",
    "2025-02-07",
    "2025-04-04",
    "2025-06-06",
    "2025-07-25",
    "2025-09-19",
    "2025-11-14",
    "2026-01-16",
]


@pytest.fixture(scope="session")
def doc(latest_rules_path: Path) -> RulesDocument:
    return load_rules(latest_rules_path)


@pytest.fixture(scope="session")
def book(doc: RulesDocument) -> RuleBook:
    return RuleBook(doc)


# ----------------------------------------------------------------------------------------------- parse


def test_latest_release_counts(doc: RulesDocument) -> None:
    kinds = Counter(rule.kind for rule in doc.rules.values())
    assert kinds == {"section": 9, "chapter": 146, "rule": 1157, "subrule": 1957}
    assert len(doc.glossary) == 725
    assert sum(len(rule.examples) for rule in doc.rules.values()) == 276
    assert doc.effective_date == "2026-01-16"


def test_agrees_with_reference_parse(doc: RulesDocument, rules_dir: Path) -> None:
    """Numbers, kinds, texts and examples match the independent reference parse exactly.

    The reference prints numbers of sections, chapters and rules with a trailing dot ("100.1.") and
    sub-rules without; its Body is a list of paragraphs (joined here with newlines, as we store them)."""
    reference = json.loads((rules_dir / "reference-parse-2026-01-16.json").read_text(encoding="utf-8"))
    kinds = {"Part": "section", "Chapter": "chapter", "Rule": "rule", "SubRule": "subrule"}
    expected = {
        item["Number"].rstrip("."): (kinds[item["Type"]], "\n".join(item["Body"]), item.get("Examples", []))
        for item in reference["Rules"]
    }
    ours = {n: (r.kind, r.text, r.examples) for n, r in doc.rules.items()}
    assert list(ours) == list(expected)  # same numbers, same order
    assert ours == expected
    assert {g["KeyText"]: g["Body"] for g in reference["Glossary"]} == {
        term: entry.text for term, entry in doc.glossary.items()
    }
    assert reference["EffectiveDate"].startswith(doc.effective_date)


@pytest.mark.parametrize("release", RELEASES)
def test_every_release_parses(rules_dir: Path, release: str) -> None:
    doc = load_rules(rules_dir / f"{release}.txt")
    kinds = Counter(rule.kind for rule in doc.rules.values())
    assert kinds["section"] == 9 and kinds["chapter"] >= 140
    assert kinds["rule"] > 1000 and kinds["subrule"] > 1700
    assert len(doc.glossary) > 600
    assert doc.rules["702.19"].text == "Trample"
    assert "Trample" in doc.glossary
    for rule in doc.rules.values():  # the tree is consistent
        assert rule.text.strip()
        if rule.kind != "section":
            assert rule.parent in doc.rules, rule.number
            assert rule.number in doc.rules[rule.parent].children


def test_effective_date_comes_from_header_not_file_name(rules_dir: Path) -> None:
    assert load_rules(rules_dir / "2024-02-06.txt").effective_date == "2024-02-02"  # header has no final dot
    assert load_rules(rules_dir / "2024-08-02.txt").effective_date == "2024-07-30"


def test_line_endings_and_bom(rules_dir: Path, doc: RulesDocument) -> None:
    raw = (rules_dir / "2026-01-16.txt").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\r") > 9000 and raw.count(b"\n") < 100  # bare CR
    text = raw.decode("utf-8-sig")
    as_crlf = text.replace("\r\n", "\r").replace("\r", "\r\n")
    as_lf = "\ufeff" + text.replace("\r\n", "\r").replace("\r", "\n")
    for variant in (as_crlf, as_lf):
        again = parse_rules(variant)
        assert again.rules == doc.rules
        assert again.glossary == doc.glossary


def test_irregular_numbering_is_accepted(doc: RulesDocument) -> None:
    assert doc.rules["606.5"].kind == "rule"  # printed "606.5 If ..." without its dot
    assert doc.rules["606.5"].text.startswith("If the total cost")
    assert doc.rules["119.1d"].kind == "subrule"  # printed "119.1d. In ..." with a dot
    assert doc.rules["119.1d"].text.startswith("In a two-player Brawl game")
    assert doc.rules["901.4"].text.startswith("All plane and phenomenon")  # printed "901.4.All"


def test_table_of_contents_is_skipped(doc: RulesDocument) -> None:
    assert list(doc.rules)[:4] == ["1", "100", "100.1", "100.1a"]
    assert doc.rules["1"].text == "Game Concepts"
    assert doc.rules["1"].children[:3] == ["100", "101", "102"]
    assert doc.rules["100"].children[:2] == ["100.1", "100.2"]


def test_examples_and_continuations(doc: RulesDocument) -> None:
    assert doc.rules["101.2"].examples == [
        "If one effect reads “You may play an additional land this turn” and another reads “You can’t play "
        "lands this turn,” the effect that precludes you from playing lands wins."
    ]
    assert len(doc.rules["702.19b"].examples) == 2
    assert "Example:" not in doc.rules["702.19b"].text
    paragraphs = doc.rules["205.4c"].text.split("\n")  # an indented second paragraph
    assert len(paragraphs) == 2 and paragraphs[1].startswith("Cards printed in sets prior to the Eighth")
    assert doc.rules["702.19b"].full_text().count("\nExample: ") == 2


def test_parent_links(doc: RulesDocument) -> None:
    assert doc.rules["702.19b"].parent == "702.19"
    assert doc.rules["702.19"].parent == "702"
    assert doc.rules["702"].parent == "7"
    assert doc.rules["7"].parent is None
    assert doc.rules["702.19"].children[:4] == ["702.19a", "702.19b", "702.19c", "702.19d"]


def test_glossary(doc: RulesDocument) -> None:
    ability = doc.glossary["Ability"]
    assert (
        ability.text.splitlines()[0] == "1. Text on an object that explains what that object does or can do."
    )
    assert ability.references == ["113", "6"]
    assert doc.glossary["Trample"].references == ["702.19"]
    assert list(doc.glossary)[0] == "Abandon" and list(doc.glossary)[-1] == "Zone-Change Triggers"
    assert doc.glossary["Casualty"].references == ["702.153"]  # "See 702.153" without the word "rule"


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("100.1b", ["8"]),  # "See section 8"
        ("100.2d", ["108.2a", "717", "901", "904"]),  # "rule 717, “...;” rule 901, ..."
        ("201.3a", ["201.2a", "201.2b"]),  # "rules 201.2a–b"
        ("601.2i", ["601.2a", "601.2b", "601.2c", "601.2d", "601.2e", "601.2f", "601.2g", "601.2h"]),
        ("702.19a", ["510"]),
        ("608.3g", ["702.109", "702.152", "702.185"]),
    ],
)
def test_references(doc: RulesDocument, number: str, expected: list[str]) -> None:
    assert doc.rules[number].references == expected


def test_references_exist_and_are_unique(doc: RulesDocument) -> None:
    for item in [*doc.rules.values(), *doc.glossary.values()]:
        assert len(item.references) == len(set(item.references))
        assert all(ref in doc.rules for ref in item.references)
    assert sum(len(r.references) for r in doc.rules.values()) > 1200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just some text\nwith lines\n",
        '{"Rules": []}',
        "These rules are effective as of January 16, 2026.\n\nHello\n",
        "These rules are effective as of January 16, 2026.\n\n100.1. A rule\n\nGlossary\n\nCredits\n",
    ],
)
def test_not_rules_text_raises(text: str) -> None:
    with pytest.raises(RulesParseError):
        parse_rules(text)


def test_load_rules_errors(tmp_path: Path) -> None:
    binary = tmp_path / "2026-01-16.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(RulesParseError, match="2026-01-16.txt"):
        load_rules(binary)
    with pytest.raises(DataMissing, match="hexcore data update"):
        load_rules(tmp_path / "missing.txt")


def test_releases(rules_dir: Path, tmp_path: Path) -> None:
    assert list_releases(rules_dir) == RELEASES  # the reference JSON and metadata are not releases
    assert load_release(rules_dir).effective_date == "2026-01-16"
    assert load_release(rules_dir, "2025-06-06").effective_date == "2025-06-06"
    with pytest.raises(DataMissing, match="hexcore data update"):
        load_release(tmp_path)
    with pytest.raises(DataMissing, match="2019-01-01"):
        load_release(rules_dir, "2019-01-01")


# ---------------------------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    "spelling", ["702.19b", "702.19b.", "CR 702.19b", " 702.19B ", "cr702.19b", "rule 702.19b"]
)
def test_get_accepts_spellings(book: RuleBook, spelling: str) -> None:
    assert book.get(spelling).number == "702.19b"


def test_get_sections_and_chapters(book: RuleBook) -> None:
    assert book.get("7.").text == "Additional Rules"
    assert book.get("702").text == "Keyword Abilities"
    assert book.release == "2026-01-16"


def test_unknown_rule_nearest(book: RuleBook) -> None:
    with pytest.raises(UnknownRule) as info:
        book.get("702.19z")
    assert info.value.number == "702.19z"
    assert 3 <= len(info.value.nearest) <= 5
    assert all(n.startswith("702.19") and n != "702.19" for n in info.value.nearest)
    assert "702.19g" in info.value.nearest  # the closest existing letter
    with pytest.raises(UnknownRule) as info:
        book.get("999.1")
    assert info.value.nearest[-1] == "905.6"  # the last rule of the document
    assert all(book.get(n).kind == "rule" for n in info.value.nearest)
    with pytest.raises(UnknownRule, match="Nearest: 702.185"):
        book.get("702.999")
    with pytest.raises(UnknownRule) as info:
        book.get("teferi")
    assert info.value.nearest == []


def test_subrules(book: RuleBook) -> None:
    assert [r.number for r in book.subrules("702.19")] == book.get("702.19").children
    chapter = book.subrules("702")
    assert chapter[0].number == "702.1" and chapter[1].number == "702.1a"
    assert len(chapter) == len([n for n in book.doc.rules if n.startswith("702.")])
    assert book.subrules("702.19b") == []


def test_glossary_lookup(book: RuleBook) -> None:
    assert book.glossary("trample").term == "Trample"
    assert book.glossary("  DOUBLE-faced card ").term == "Double-Faced Cards"
    assert book.glossary("banding").term.startswith("Banding")  # "Banding, “Bands with Other”"
    assert book.glossary("zone change triggers").term == "Zone-Change Triggers"
    assert book.glossary("not a term") is None


def test_complete(book: RuleBook) -> None:
    assert book.complete("702.19") == ["702.19", *book.get("702.19").children]
    assert len(book.complete("1", limit=25)) == 25
    assert book.complete("tram") == ["Trample", "Trample Over Planeswalkers"]
    assert book.complete("CR 702.19b") == ["702.19b"]
    assert book.complete("zzz") == []


def test_format_rule(book: RuleBook) -> None:
    text = format_rule(book, "CR 702.19")
    lines = text.splitlines()
    assert "702.19" in lines[0] and "2026-01-16" in lines[0]
    assert lines[1] == "702.19. Trample"
    assert lines[2].startswith("702.19a Trample is a static ability")
    assert text.count("Example: ") == sum(len(r.examples) for r in book.subrules("702.19"))
    single = format_rule(book, "702.19b").splitlines()
    assert single[1].startswith("702.19b The controller") and single[2].startswith("Example: A 2/2")


def test_helpers() -> None:
    assert normalize_number(" CR 100.1A. ") == "100.1a"
    order = ["1", "100", "100.1", "100.1a", "100.1z", "100.2", "100.10", "101", "2", "200"]
    assert sorted(reversed(order), key=rule_sort_key) == order
