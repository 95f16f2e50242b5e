"""The knowledge graph over real rules releases, hand-made cards and the Scryfall fixtures."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import pytest

from knowledge.errors import DataMissing, StaleIndex, UnknownCard, UnknownRule
from knowledge.graph import REL, KnowledgeGraph, NoPath, UnknownEntity
from knowledge.models import Card, CardFace, RulesDocument
from knowledge.rules import load_rules


def make_card(name: str, text: str, keywords: list[str] = (), layout: str = "normal", back: str = "") -> Card:
    faces = [CardFace(name=name.split(" // ")[0], type_line="Creature — Test", oracle_text=text)]
    if back:
        faces.append(CardFace(name=name.split(" // ")[1], type_line="Creature — Test", oracle_text=back))
    return Card(name=name, layout=layout, faces=faces, keywords=list(keywords))


TEST_CARDS = [
    make_card("Test Trampler", "Trample\nWhenever Test Trampler attacks, scry 1.", ["Trample"]),
    make_card(
        "Storm Crow", "Flying (This creature can't be blocked except by creatures with flying or reach.)"
    ),
    make_card(
        "Grazing Walker",
        "Landfall — Whenever a land you control enters, put a +1/+1 counter on target creature.",
    ),
    make_card("Forest Stalker", "Forestwalk", ["Forestwalk"]),
    make_card("Moon Wolf // Night Wolf", "Daybound", ["Daybound"], layout="transform", back="Nightbound"),
    make_card("Job Hunter", "Job select\nEquipped creature has vigilance.", ["Job select"]),
    make_card("Vanilla Bear", ""),
]


def canonical(graph: KnowledgeGraph) -> tuple:
    nodes = sorted((n, sorted(a.items(), key=str)) for n, a in graph.g.nodes(data=True))
    edges = sorted((u, v, k, sorted(d.items())) for u, v, k, d in graph.g.edges(keys=True, data=True))
    return graph.release, nodes, edges


@pytest.fixture(scope="session")
def doc(latest_rules_path: Path) -> RulesDocument:
    return load_rules(latest_rules_path)


@pytest.fixture(scope="session")
def graph(doc: RulesDocument) -> KnowledgeGraph:
    return KnowledgeGraph.build(doc, TEST_CARDS)


def test_node_and_edge_counts(graph: KnowledgeGraph, doc: RulesDocument) -> None:
    stats = graph.stats()
    assert stats["nodes:rule"] == len(doc.rules) == 3269
    assert stats["nodes:term"] == len(doc.glossary) == 725
    assert stats["nodes:keyword"] == (len(doc.rules["701"].children) - 1) + (
        len(doc.rules["702"].children) - 1
    )
    assert stats["nodes:mechanic"] == 57 + 23 + 5  # ability words, chapters 708-730, variants 901-905
    assert stats["nodes:card"] == len(TEST_CARDS)
    assert stats["edges:has_subrule"] == len(doc.rules) - 9  # every rule but the sections has a parent
    assert stats["edges:references"] == sum(len(r.references) for r in doc.rules.values())
    assert graph.release == "2026-01-16"


def test_node_kinds_and_definitions(graph: KnowledgeGraph) -> None:
    assert graph.node("rule:702.19b")["kind"] == "rule"
    assert graph.node("rule:702.19b")["rule_kind"] == "subrule"
    assert graph.node("term:trample")["term"] == "Trample"
    assert graph.node("keyword:trample")["keyword_kind"] == "ability"
    assert graph.node("keyword:scry")["keyword_kind"] == "action"
    assert graph.node("mechanic:landfall")["mechanic_kind"] == "ability word"
    assert graph.node("mechanic:double-faced cards")["rule"] == "712"
    assert "mechanic:taking shortcuts" not in graph.g
    assert graph.neighbours("keyword:trample", rel=REL.DEFINED_BY) == ["rule:702.19"]
    assert graph.neighbours("term:trample", rel=REL.DEFINED_BY) == ["rule:702.19"]
    assert graph.neighbours("mechanic:landfall", rel=REL.DEFINED_BY) == ["rule:207.2c"]
    assert graph.g.has_edge("rule:100.1b", "rule:8", key=REL.REFERENCES)
    assert graph.g.has_edge("rule:702.19", "rule:702.19b", key=REL.HAS_SUBRULE)


def test_card_links(graph: KnowledgeGraph) -> None:
    def links(name: str) -> set[tuple[str, str]]:
        return {(v, k) for _, v, k in graph.g.out_edges(f"card:{name}", keys=True)}

    assert links("test trampler") == {
        ("keyword:trample", REL.HAS_KEYWORD),
        ("keyword:scry", REL.MENTIONS_TERM),
    }
    assert links("storm crow") == {("keyword:flying", REL.HAS_KEYWORD)}  # not its name, not reminder text
    assert links("grazing walker") == {("mechanic:landfall", REL.HAS_MECHANIC)}  # "counter", "target" trivial
    assert links("forest stalker") == {("keyword:landwalk", REL.HAS_KEYWORD)}
    moon = links("moon wolf // night wolf")
    assert ("keyword:daybound and nightbound", REL.HAS_KEYWORD) in moon
    assert ("mechanic:double-faced cards", REL.HAS_MECHANIC) in moon
    assert ("keyword:job select", REL.HAS_KEYWORD) in links("job hunter")
    assert links("vanilla bear") == set()


def test_rules_for_card_and_keyword(graph: KnowledgeGraph, doc: RulesDocument) -> None:
    trample = ["702.19", *doc.rules["702.19"].children]
    assert graph.rules_for_keyword("trample") == trample
    assert graph.rules_for_keyword("Trample") == graph.rules_for_keyword("keyword:trample")
    rules = graph.rules_for_card("test trampler")
    scry = next(n for n in doc.rules["701"].children if doc.rules[n].text == "Scry")
    assert rules == [scry, *doc.rules[scry].children, *trample]
    assert graph.rules_for_card("Night Wolf")[0] == "702.145"  # a face name finds the card
    assert "712" in graph.rules_for_card("Moon Wolf // Night Wolf")
    assert graph.rules_for_keyword("forestwalk")[0] == "702.14"
    assert graph.rules_for_keyword("landfall") == ["207.2c"]
    with pytest.raises(UnknownCard) as info:
        graph.rules_for_card("Test Tramplr")
    assert info.value.suggestions[0] == "Test Trampler"


def test_neighbours(graph: KnowledgeGraph) -> None:
    assert "rule:702.19" in graph.neighbours("702.19b")
    assert graph.neighbours("CR 702.19", rel=REL.HAS_SUBRULE)[0] == "rule:702"
    near = graph.neighbours("trample")
    assert {"rule:702.19", "card:test trampler"} <= set(near)
    two = graph.neighbours("trample", depth=2)
    assert set(near) < set(two) and "term:trample" in two and "rule:702.19a" in two
    assert graph.neighbours("Test Trampler", rel=[REL.HAS_KEYWORD]) == ["keyword:trample"]


def test_path(graph: KnowledgeGraph) -> None:
    assert graph.path("Test Trampler", "702.19b") == [
        "card:test trampler",
        "keyword:trample",
        "rule:702.19",
        "rule:702.19b",
    ]
    assert graph.path("trample", "trample") == ["keyword:trample"]
    with pytest.raises(NoPath, match="Vanilla Bear"):
        graph.path("Vanilla Bear", "702.19b")


def test_unknown_entities(graph: KnowledgeGraph) -> None:
    with pytest.raises(UnknownRule) as rule:
        graph.neighbours("702.19z")
    assert "702.19g" in rule.value.nearest
    with pytest.raises(UnknownEntity) as entity:
        graph.neighbours("trampel")
    assert "Trample" in entity.value.suggestions


def test_keyword_names(graph: KnowledgeGraph) -> None:
    names = graph.keyword_names()
    assert {"Trample", "Scry", "Flying", "Job Select"} <= set(names)
    assert names == sorted(names, key=str.lower)
    assert "Scry" in graph.keyword_names("action") and "Scry" not in graph.keyword_names("ability")


def test_save_load_round_trip(graph: KnowledgeGraph, tmp_path: Path) -> None:
    path = tmp_path / "graph" / "knowledge.json.gz"
    graph.save(path)
    loaded = KnowledgeGraph.load(path)
    assert loaded.release == "2026-01-16"
    assert canonical(loaded) == canonical(graph)
    assert loaded.rules_for_card("test trampler") == graph.rules_for_card("test trampler")
    assert loaded.path("Test Trampler", "702.19b") == graph.path("Test Trampler", "702.19b")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataMissing, match="hexcore index build"):
        KnowledgeGraph.load(tmp_path / "missing.json.gz")
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(StaleIndex):
        KnowledgeGraph.load(bad)
    assert (tmp_path / "bad.json.gz.damaged").read_bytes() == b"not gzip at all"  # moved aside, not deleted


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),  # gzip raises EOFError (issue 14)
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: gzip.compress(b"[1, 2]"), id="json-not-an-object"),
        pytest.param(lambda raw: gzip.compress(b'{"graph": {"format": 1}, "nodes": 3}'), id="wrong-shape"),
        pytest.param(lambda raw: gzip.compress(b"\xff\xfe garbage"), id="not-utf8"),
    ],
)
def test_a_damaged_graph_is_stale_and_kept_aside(tmp_path: Path, damage, rules_doc, card_list) -> None:
    path = tmp_path / "graph.json.gz"
    KnowledgeGraph.build(rules_doc, card_list[:3]).save(path)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(StaleIndex):
        KnowledgeGraph.load(path)
    if path.exists():  # an unreadable-format file stays (rebuilding overwrites it atomically)
        assert path.read_bytes() == damaged
    else:
        assert (tmp_path / "graph.json.gz.damaged").read_bytes() == damaged


def test_save_uses_a_temp_file_of_its_own(tmp_path: Path, rules_doc, card_list) -> None:
    """Two builds on one state dir wrote the same graph.json.gz.tmp; one failed (issue 14, item 4)."""
    path = tmp_path / "graph.json.gz"
    (tmp_path / "graph.json.gz.tmp").write_text("another build's temp file")
    graph = KnowledgeGraph.build(rules_doc, card_list[:3])
    graph.save(path)
    assert KnowledgeGraph.load(path).release == graph.release
    assert (tmp_path / "graph.json.gz.tmp").read_text() == "another build's temp file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_update_rules_equals_fresh_build(rules_dir: Path) -> None:
    april, june = load_rules(rules_dir / "2025-04-04.txt"), load_rules(rules_dir / "2025-06-06.txt")
    graph = KnowledgeGraph.build(april, TEST_CARDS)
    before = copy.deepcopy(graph.g)
    assert "keyword:job select" not in graph.g  # new in June 2025
    assert ("card:job hunter", "keyword:job select") not in graph.g.edges()

    report = graph.update_rules(june)

    assert canonical(graph) == canonical(KnowledgeGraph.build(june, TEST_CARDS))
    assert (len(report["rules_added"]), len(report["rules_removed"]), len(report["rules_changed"])) == (
        69,
        57,
        247,
    )
    assert (report["old_release"], report["new_release"]) == ("2025-04-04", "2025-06-06")
    assert "keyword:job select" in report["vocabulary_added"]
    assert report["cards_relinked"] == ["card:job hunter"]
    # only what the diff names was touched: every node that changed, and an end of every changed edge
    touched = set(report["touched"])
    rule_nodes = {
        f"rule:{n}" for n in report["rules_added"] + report["rules_removed"] + report["rules_changed"]
    }
    assert rule_nodes <= touched
    assert {n for n in touched if n.startswith("rule:")} == rule_nodes
    changed = {n for n in set(before) | set(graph.g) if before.nodes.get(n) != graph.g.nodes.get(n)}
    assert changed <= touched
    old_edges, new_edges = set(before.edges(keys=True)), set(graph.g.edges(keys=True))
    assert all(u in touched or v in touched for u, v, _ in old_edges ^ new_edges)
    assert len(touched) < graph.g.number_of_nodes() / 5


def test_update_after_load_and_back(rules_dir: Path, tmp_path: Path) -> None:
    """A loaded graph updates without the old release at hand; updating backwards works too."""
    new, old = load_rules(rules_dir / "2026-01-16.txt"), load_rules(rules_dir / "2025-11-14.txt")
    KnowledgeGraph.build(new, TEST_CARDS).save(tmp_path / "g.json.gz")
    graph = KnowledgeGraph.load(tmp_path / "g.json.gz")
    report = graph.update_rules(old)
    assert report["new_release"] == "2025-11-14" and report["rules_removed"]
    assert canonical(graph) == canonical(KnowledgeGraph.build(old, TEST_CARDS))
    assert graph.update_rules(old)["touched"] == []  # same release again: nothing to do


def test_with_scryfall_fixtures(doc: RulesDocument, cards_dir: Path) -> None:
    cards_module = pytest.importorskip("knowledge.cards")
    if not hasattr(cards_module, "load_card_dir"):
        pytest.skip("knowledge.cards.load_card_dir not available")
    cards = cards_module.load_card_dir(cards_dir)
    graph = KnowledgeGraph.build(doc, cards)
    assert graph.stats()["nodes:card"] >= 50
    cruiser = {v for _, v in graph.g.out_edges("card:fleetwheel cruiser")}
    assert {"keyword:trample", "keyword:haste", "keyword:crew"} <= cruiser
    assert "mechanic:split cards" in {v for _, v in graph.g.out_edges("card:claim // fame")}
    assert "702.127" in graph.rules_for_card("Claim // Fame")  # aftermath
    assert "728" in graph.rules_for_keyword("subgames")
    assert "term:subgame" in graph.neighbours("Shahrazad")
