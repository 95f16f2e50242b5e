"""The KnowledgeBase facade on the real data: loading, lookups, the saved graph and the saved index."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hexcore.settings import KnowledgeSettings, PathSettings, Settings
from knowledge.base import GRAPH_FILE, KnowledgeBase
from knowledge.errors import DataMissing, StaleIndex, UnknownCard, UnknownRule
from knowledge.graph import KnowledgeGraph
from knowledge.models import Passage
from knowledge.vector_index import read_manifest
from tests.knowledge.embedding_seed import seed_embedding_cache

OLD_RELEASE = "2025-11-14"


def settings_for(data_dir: Path, state_dir: Path, release: str | None = None) -> Settings:
    return Settings(paths=PathSettings(data_dir=data_dir, state_dir=state_dir, rules_release=release))


def edges(graph: KnowledgeGraph) -> list[tuple]:
    return sorted(graph.g.edges(keys=True))


@pytest.fixture
def rules_only(tmp_path: Path, rules_dir: Path) -> Path:
    """A data folder with the real rules (linked, not copied) and no card data."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "rules").symlink_to(rules_dir, target_is_directory=True)
    return folder


# -------------------------------------------------------------------------------------- missing data


def test_no_rules_data_is_data_missing(tmp_path: Path):
    with pytest.raises(DataMissing) as info:
        KnowledgeBase.load(settings_for(tmp_path / "empty", tmp_path / "state"), lazy=True)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "empty" / "rules") in message
    assert "hexcore data update" in message and "HEXCORE_DATA_DIR" in message


def test_unknown_release_is_data_missing(tmp_path: Path, data_dir: Path):
    with pytest.raises(DataMissing, match="1999-01-01"):
        KnowledgeBase.load(settings_for(data_dir, tmp_path / "state", "1999-01-01"), lazy=True)


def test_works_without_card_data(rules_only: Path, tmp_path: Path):
    kb = KnowledgeBase.load(settings_for(rules_only, tmp_path / "state"), lazy=True)
    assert len(kb.cards) == 0
    assert kb.autocomplete_cards("tarm") == []
    with pytest.raises(UnknownCard):
        kb.card("Tarmogoyf")
    rule, _, release = kb.rule("702.19b")
    assert "trample" in rule.text and release == "2026-01-16"
    assert kb.graph.stats()["nodes:keyword"] > 100


# ------------------------------------------------------------------------------------------- lookups


@pytest.fixture(scope="module")
def lazy_kb(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return KnowledgeBase.load(settings_for(data_dir, tmp_path_factory.mktemp("lazy-state")), lazy=True)


def test_rule_returns_rule_subrules_and_release(lazy_kb: KnowledgeBase):
    rule, subrules, release = lazy_kb.rule("cr 702.19")
    assert (rule.number, rule.text, release) == ("702.19", "Trample", "2026-01-16")
    assert [r.number for r in subrules][:3] == ["702.19a", "702.19b", "702.19c"]
    assert all(r.number.startswith("702.19") for r in subrules)
    with pytest.raises(UnknownRule) as info:
        lazy_kb.rule("702.19z")
    assert "702.19g" in info.value.nearest


def test_card_and_autocomplete(lazy_kb: KnowledgeBase):
    assert lazy_kb.card("jace tms").name == "Jace, the Mind Sculptor"
    assert lazy_kb.autocomplete_cards("tarm", 5) == ["Tarmogoyf"]
    assert lazy_kb.autocomplete_rules("702.19", 3) == ["702.19", "702.19a", "702.19b"]
    assert "Trample" in lazy_kb.autocomplete_rules("tramp", 5)


def test_lookups_load_nothing_heavy(lazy_kb: KnowledgeBase):
    lazy_kb.rule("100.1")
    lazy_kb.card("Tarmogoyf")
    stats = lazy_kb.stats()
    assert stats["release"] == "2026-01-16" and stats["rules"] == len(lazy_kb.book)
    assert stats["graph"] is None and stats.get("index") is None  # neither graph nor index was loaded
    assert not lazy_kb.index_dir.exists()


def test_assemble_keeps_whole_passages_under_budget(lazy_kb: KnowledgeBase):
    rule, subrules, release = lazy_kb.rule("702.19")
    from knowledge.passages import rule_passages

    by_key = {p.key: p for p in rule_passages(lazy_kb.doc)}
    passages: list[Passage] = [by_key[f"rule:{r.number}"] for r in subrules]
    context = lazy_kb.assemble(passages, token_budget=200, count_tokens=lambda s: len(s.split()))
    assert context.passages and len(context.passages) < len(passages)
    assert context.tokens <= 200
    for passage in context.passages:
        assert passage.text in context.text  # never cut
    assert context.text.startswith(f"[CR 702.19a ({release}) | 702.19 Trample]")
    assert "rule:702.19b" in context.skipped  # too long for what was left...
    assert by_key["rule:702.19d"] in context.passages  # ...but a shorter one after it still fits


# --------------------------------------------------------------------------------------------- graph


def test_graph_is_built_saved_then_reused(data_dir: Path, tmp_path: Path):
    settings = settings_for(data_dir, tmp_path / "state")
    first = KnowledgeBase.load(settings, lazy=True)
    assert first.graph.release == "2026-01-16"
    assert first.events == ["graph: built"]
    assert (tmp_path / "state" / "index" / GRAPH_FILE).is_file()
    second = KnowledgeBase.load(settings, lazy=True)
    assert second.graph.stats() == first.graph.stats()
    assert second.events == ["graph: loaded"]
    assert second.graph.rules_for_card("Tarmogoyf") == first.graph.rules_for_card("Tarmogoyf")


def test_graph_moves_to_a_new_release_incrementally(data_dir: Path, tmp_path: Path):
    state = tmp_path / "state"
    old = KnowledgeBase.load(settings_for(data_dir, state, OLD_RELEASE), lazy=True)
    assert old.graph.release != "2026-01-16"
    new = KnowledgeBase.load(settings_for(data_dir, state), lazy=True)
    assert new.graph.release == "2026-01-16"
    assert new.events == [f"graph: updated {old.graph.release} -> 2026-01-16"]
    assert new.graph_update is not None and new.graph_update["rules_changed"]
    fresh = KnowledgeGraph.build(new.doc, new.card_list)
    assert edges(new.graph) == edges(fresh)  # the update equals building afresh
    assert KnowledgeGraph.load(state / "index" / GRAPH_FILE).release == "2026-01-16"  # and it was saved


def test_graph_is_rebuilt_when_card_data_changes(data_dir: Path, cards_dir: Path, tmp_path: Path):
    fewer = tmp_path / "data"
    (fewer / "cards").mkdir(parents=True)
    (fewer / "rules").symlink_to(data_dir / "rules", target_is_directory=True)
    (fewer / "cards" / "tarmogoyf.json").symlink_to(cards_dir / "tarmogoyf.json")
    state = tmp_path / "state"
    KnowledgeBase.load(settings_for(fewer, state), lazy=True).graph  # noqa: B018
    (fewer / "cards" / "ponder.json").symlink_to(cards_dir / "ponder.json")
    again = KnowledgeBase.load(settings_for(fewer, state), lazy=True)
    assert "card:ponder" in again.graph.g
    assert again.events == ["graph: built"]


def test_no_build_without_saved_graph(data_dir: Path, tmp_path: Path):
    kb = KnowledgeBase.load(settings_for(data_dir, tmp_path / "state"), lazy=True, build_if_missing=False)
    with pytest.raises(DataMissing, match="hexcore index build"):
        kb.graph  # noqa: B018
    (tmp_path / "state" / "index").mkdir(parents=True)
    (tmp_path / "state" / "index" / GRAPH_FILE).write_bytes(b"garbage")
    kb = KnowledgeBase.load(settings_for(data_dir, tmp_path / "state"), lazy=True, build_if_missing=False)
    with pytest.raises(StaleIndex, match="hexcore index build"):
        kb.graph  # noqa: B018


def test_unreadable_graph_is_rebuilt(data_dir: Path, tmp_path: Path):
    (tmp_path / "state" / "index").mkdir(parents=True)
    (tmp_path / "state" / "index" / GRAPH_FILE).write_bytes(b"garbage")
    kb = KnowledgeBase.load(settings_for(data_dir, tmp_path / "state"), lazy=True)
    assert kb.graph.release == "2026-01-16"
    assert kb.events == ["graph: built"]
    shutil.rmtree(tmp_path / "state")


# --------------------------------------------------------------------------------------------- index
# These share the session index of tests/knowledge/conftest.py (``index_settings``): whichever test needs it
# first builds it (minutes on a busy CPU), every later load reuses it.


@pytest.fixture(scope="module")
def kb(index_settings: Settings) -> KnowledgeBase:
    """On the session index, with no latency budget: on a busy CPU a 20 ms budget skips the vector stage
    at random, and these tests check what retrieval finds, not how fast (see the latency tests for that)."""
    seed_embedding_cache(index_settings.paths.state_dir)
    return KnowledgeBase.load(unbudgeted(index_settings))


def unbudgeted(settings: Settings) -> Settings:
    return Settings(paths=settings.paths, knowledge=KnowledgeSettings(retrieval_budget_ms=1e9))


@pytest.fixture
def state_copy(kb: KnowledgeBase, index_settings: Settings, tmp_path: Path) -> Path:
    """A copy of the session state (graph, vectors, embedding cache) that a test may change."""
    state = tmp_path / "state"
    shutil.copytree(index_settings.paths.state_dir, state)
    return state


@pytest.mark.slow
def test_search_ranks_the_trample_rules_first(kb: KnowledgeBase):
    results = kb.search("how does trample work", k=5)
    assert [r.passage.citation.id for r in results[:2]] == ["702.19", "702.19a"]
    assert all(
        r.passage.citation.release == "2026-01-16" for r in results if r.passage.citation.kind == "rule"
    )
    only_cards = kb.search("draw three cards then put two back", k=3, kinds=["card"])
    assert "Jace, the Mind Sculptor" in [r.passage.citation.id for r in only_cards]
    assert {r.passage.citation.kind for r in only_cards} == {"card"}


@pytest.mark.slow
def test_second_load_reuses_the_saved_index(kb: KnowledgeBase, index_settings: Settings):
    manifest = read_manifest(kb.vectors_dir)
    again = KnowledgeBase.load(unbudgeted(index_settings))
    assert "index: loaded" in again.events and "graph: loaded" in again.events
    assert again.embedded == 0
    assert read_manifest(again.vectors_dir)["built_at"] == manifest["built_at"]  # not rewritten
    assert again.index.vectors.digest == kb.index.vectors.digest
    query = "can I respond to a spell with an instant"
    assert [r.passage.key for r in again.search(query)] == [r.passage.key for r in kb.search(query)]


@pytest.mark.slow
def test_release_change_rebuilds_the_index_embedding_only_new_texts(
    kb: KnowledgeBase, data_dir: Path, state_copy
):
    old = KnowledgeBase.load(unbudgeted(settings_for(data_dir, state_copy, OLD_RELEASE)))
    assert old.release != kb.release
    assert "index: built" in old.events
    assert f"graph: updated {kb.release} -> {old.release}" in old.events  # the graph moved, not rebuilt
    assert 0 < old.embedded < 100 and old.embeddings_reused > 3000  # only the changed passages
    manifest = read_manifest(state_copy / "index" / "vectors")
    assert manifest["rules_release"] == old.release
    assert manifest["passages_sha256"] != kb.index.vectors.digest
    result = old.search("702.19b trample", k=1)[0]
    assert result.passage.citation.release == old.release


@pytest.mark.slow
def test_build_always_rebuilds_and_reports(kb: KnowledgeBase, data_dir: Path, state_copy):
    before = read_manifest(state_copy / "index" / "vectors")
    report = KnowledgeBase.build(settings_for(data_dir, state_copy), progress=False)
    assert report.release == "2026-01-16" and report.rules == len(kb.book) and report.cards == len(kb.cards)
    assert report.passages == kb.index.vectors.counts()
    assert report.embedded == 0 and report.embeddings_reused == sum(report.passages.values())
    assert report.graph["edges"] == kb.graph.stats()["edges"]
    assert report.graph_path.is_file() and (report.index_path / "manifest.json").is_file()
    after = read_manifest(report.index_path)
    assert after["passages_sha256"] == before["passages_sha256"]
    assert after["build_seconds"] is not None and report.timings_s["total"] >= report.timings_s["index"]
    assert "3114 rule" in report.summary()


@pytest.mark.slow
def test_no_build_mode_uses_the_saved_index_and_refuses_a_stale_one(
    kb: KnowledgeBase, index_settings: Settings, data_dir: Path, state_copy
):
    saved = KnowledgeBase.load(index_settings, build_if_missing=False)
    assert saved.events == ["index: loaded", "graph: loaded"]
    with pytest.raises(StaleIndex, match="hexcore index build"):
        KnowledgeBase.load(settings_for(data_dir, state_copy, OLD_RELEASE), build_if_missing=False)


@pytest.mark.slow
def test_stats_show_index_cache_and_latency(kb: KnowledgeBase):
    kb.search("what is a mulligan")
    kb.search("what is a mulligan")
    stats = kb.stats()
    assert stats["index"]["rules_release"] == "2026-01-16"
    assert stats["index"]["passage_counts"]["rule"] == 3114
    assert stats["retrieval"]["cache"]["hits"] >= 1
    assert stats["retrieval"]["latency"]["stages"]["total"]["count"] >= 2
    assert stats["graph"]["nodes"] > 4000 and stats["cards"] == len(kb.cards) == 71
