"""The knowledge commands through click's CliRunner, on the real data, a real index and a local HTTP server."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hexcore.cli import main
from hexcore.settings import KnowledgeSettings, PathSettings, Settings, get_settings
from knowledge.cli import read_only_reason
from tests.knowledge.embedding_seed import seed_embedding_cache
from tests.knowledge.http_fixtures import RULES_TXT, FixtureServer


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state dir for the module, so the index is built once (by the first search) and then reused."""
    return tmp_path_factory.mktemp("cli-state")


@pytest.fixture(scope="module")
def cli_settings(data_dir: Path, state_dir: Path) -> Settings:
    return Settings(paths=PathSettings(data_dir=data_dir, state_dir=state_dir))


def invoke(settings: Settings, *args: str):
    return CliRunner().invoke(main, list(args), obj=settings, catch_exceptions=False)


# --------------------------------------------------------------------------------------------- rule


def test_rule_prints_rule_with_subrules_and_release(cli_settings: Settings):
    result = invoke(cli_settings, "rule", "702.19b")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Comprehensive Rules 702.19b (effective 2026-01-16)")
    assert (
        "702.19b The controller of an attacking creature with trample first assigns damage" in result.output
    )
    assert "Example: A 6/6 green creature with trample" in result.output


def test_rule_heading_lists_all_subrules(cli_settings: Settings):
    result = invoke(cli_settings, "rule", "CR 702.19")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == "702.19. Trample"
    assert [line.split()[0] for line in lines if line.startswith("702.19")][1:4] == [
        "702.19a",
        "702.19b",
        "702.19c",
    ]


def test_rule_lookup_does_not_build_the_index(cli_settings: Settings, tmp_path: Path):
    fresh = Settings(paths=PathSettings(data_dir=cli_settings.paths.data_dir, state_dir=tmp_path / "state"))
    assert invoke(fresh, "rule", "100.1").exit_code == 0
    assert invoke(fresh, "card", "Tarmogoyf").exit_code == 0
    assert not (tmp_path / "state").exists()  # no graph, no vectors: nothing was built or saved


def test_unknown_rule_names_the_nearest_and_exits_1(cli_settings: Settings):
    result = CliRunner().invoke(main, ["rule", "702.19z"], obj=cli_settings)
    assert result.exit_code == 1
    assert "No rule 702.19z" in result.output
    assert "702.19g" in result.output  # a sibling that exists
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------------- card


def test_card_by_nickname_prints_oracle_text(cli_settings: Settings):
    result = invoke(cli_settings, "card", "jace tms")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Jace, the Mind Sculptor {2}{U}{U}")
    assert "0: Draw three cards, then put two cards from your hand on top of your library" in result.output
    assert "Loyalty: 3" in result.output


def test_card_prints_every_face(cli_settings: Settings):
    result = invoke(cli_settings, "card", "fire", "//", "ice")
    assert result.exit_code == 0, result.output
    assert "Fire // Ice (split)" in result.output
    assert "Fire deals 2 damage divided as you choose" in result.output
    assert "Tap target permanent." in result.output


def test_unknown_card_suggests_and_exits_1(cli_settings: Settings):
    result = CliRunner().invoke(main, ["card", "jace teh mnd"], obj=cli_settings)
    assert result.exit_code == 1
    assert "No card named 'jace teh mnd'" in result.output
    assert "Jace, the Mind Sculptor" in result.output


# ------------------------------------------------------------------------------------- missing data


def test_missing_rules_data_is_one_line(tmp_path: Path):
    settings = Settings(paths=PathSettings(data_dir=tmp_path / "empty", state_dir=tmp_path / "state"))
    result = CliRunner().invoke(main, ["rule", "100.1"], obj=settings)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "No Comprehensive Rules data" in lines[0]
    assert "hexcore data update" in lines[0] and "HEXCORE_DATA_DIR" in lines[0]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path):
    monkeypatch.setenv("HEXCORE_DATA_DIR", str(tmp_path / "nothing-here"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["rule", "100.1"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert str(tmp_path / "nothing-here") in result.output


# ---------------------------------------------------------------------------------------- data update


def _update_settings(server: FixtureServer, data_dir: Path, state_dir: Path) -> Settings:
    return Settings(
        paths=PathSettings(data_dir=data_dir, state_dir=state_dir),
        knowledge=KnowledgeSettings(
            rules_page_url=server.url("/en/rules.html"), scryfall_bulk_url=server.url("/bulk-data")
        ),
    )


def test_data_update_downloads_into_the_data_dir(site: FixtureServer, tmp_path: Path):  # noqa: F811
    data_dir = tmp_path / "data"
    result = invoke(_update_settings(site, data_dir, tmp_path / "state"), "data", "update")
    assert result.exit_code == 0, result.output
    assert "Rules 2026-01-16" in result.output
    assert "hexcore index build" in result.output
    assert (data_dir / "rules/2026-01-16.txt").is_file()
    assert site.count(RULES_TXT) == 1
    # and the rest of Hexcore reads what it wrote
    shown = invoke(_update_settings(site, data_dir, tmp_path / "state"), "card", "Ixidron")
    assert shown.exit_code == 0 and "5 rulings" in shown.output


def test_data_update_to_another_dir_says_how_to_use_it(site: FixtureServer, tmp_path: Path):  # noqa: F811
    settings = _update_settings(site, tmp_path / "configured", tmp_path / "state")
    other = tmp_path / "other"
    result = invoke(settings, "data", "update", "--data-dir", str(other))
    assert result.exit_code == 0, result.output
    assert (other / "rules/2026-01-16.txt").is_file()
    assert f"HEXCORE_DATA_DIR={other}" in result.output
    assert not (tmp_path / "configured").exists()


def test_data_update_failure_keeps_previous_data(site: FixtureServer, tmp_path: Path):  # noqa: F811
    data_dir = tmp_path / "data"
    (data_dir / "rules").mkdir(parents=True)
    (data_dir / "rules/2025-11-14.txt").write_bytes(b"previous release")
    site.behave("/bulk/rulings-20260101.json", status=404)
    result = CliRunner().invoke(
        main, ["data", "update"], obj=_update_settings(site, data_dir, tmp_path / "s")
    )
    assert result.exit_code == 1
    assert "404" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in data_dir.rglob("*") if p.is_file()) == ["2025-11-14.txt"]
    assert (data_dir / "rules/2025-11-14.txt").read_bytes() == b"previous release"


def test_data_update_refuses_a_read_only_data_dir(site: FixtureServer, tmp_path: Path):  # noqa: F811
    data_dir = tmp_path / "shared-data"
    (data_dir / "rules").mkdir(parents=True)
    (data_dir / "rules").chmod(0o555)  # marked read-only, as ../shared/data is (root could still write)
    try:
        result = CliRunner().invoke(
            main, ["data", "update"], obj=_update_settings(site, data_dir, tmp_path / "s")
        )
    finally:
        (data_dir / "rules").chmod(0o755)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "read-only" in lines[0] and "HEXCORE_DATA_DIR" in lines[0]
    assert site.requests == []  # refused before any download
    assert list((data_dir / "rules").iterdir()) == []


def test_read_only_reason(tmp_path: Path, data_dir: Path):
    assert read_only_reason(tmp_path / "new" / "data") is None  # would be created
    assert read_only_reason(tmp_path) is None
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert "read-only" in (read_only_reason(locked) or "")
        assert "read-only" in (read_only_reason(locked / "sub") or "")  # can't create it there
    finally:
        locked.chmod(0o755)
    if not os.stat(data_dir).st_mode & 0o222:  # the shared data folder, where it is marked read-only
        assert read_only_reason(data_dir) is not None


# ------------------------------------------------------------------------------ search, eval, index
# On the session index of tests/knowledge/conftest.py (``index_settings``), built at most once per session.


@pytest.fixture(scope="module")
def search_settings(index_settings: Settings) -> Settings:
    seed_embedding_cache(index_settings.paths.state_dir)
    return index_settings


@pytest.mark.slow
def test_search_json_ranks_trample_rules_first(search_settings: Settings):
    result = invoke(search_settings, "search", "how does trample work", "--json", "--k", "5")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 5
    assert [row["id"] for row in rows[:2]] == ["702.19", "702.19a"]
    first = rows[0]
    assert set(first) >= {"key", "kind", "id", "release", "score", "sources", "text"}
    assert (first["key"], first["kind"], first["release"], first["text"]) == (
        "rule:702.19",
        "rule",
        "2026-01-16",
        "Trample",
    )
    assert first["score"] >= rows[1]["score"] >= rows[-1]["score"]
    assert "bm25" in first["sources"]


@pytest.mark.slow
def test_search_text_output_cites_each_passage(search_settings: Settings):
    result = invoke(search_settings, "search", "[[jace tms]]", "--kind", "card", "--k", "2")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1. Card: Jace, the Mind Sculptor  score")
    assert "+2: Look at the top card of target player's library." in result.output
    rules = invoke(search_settings, "search", "what", "is", "first", "strike", "--k", "3")
    assert "CR 702.7" in rules.output and "(2026-01-16)" in rules.output


def _write_qa(path: Path) -> Path:
    rows = [
        {"id": "t1", "difficulty": "easy", "question": "How does trample work?", "rule_refs": ["702.19b"]},
        {"id": "t2", "stratum": "definition", "question": "What does flying do?", "gold_cr_rules": ["702.9"]},
        {"id": "t3", "difficulty": "easy", "question": "How does trample work?", "rule_refs": ["100.1"]},
        {"id": "t4", "difficulty": "policy", "question": "Is a judge call a penalty?", "rule_refs": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_eval_retrieval_reports_recall(search_settings: Settings, tmp_path: Path):
    qa = _write_qa(tmp_path / "qa.jsonl")
    result = invoke(search_settings, "eval", "retrieval", "--qa", str(qa), "--k", "5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["k"], report["total"], report["scored"], report["hits"]) == (5, 4, 3, 2)
    assert report["recall"] == pytest.approx(2 / 3)
    easy = report["by_difficulty"]["easy"]
    assert {key: easy[key] for key in ("recall", "hits", "scored")} == {"recall": 0.5, "hits": 1, "scored": 2}
    assert easy["recall@5"] == 0.5 and 0 < easy["mrr"] <= 0.5  # added beside the original keys
    assert 0 < report["mrr"] <= report["recall"] and report["recall_at"]["5"] == pytest.approx(2 / 3)
    assert report["by_difficulty"]["definition"]["hits"] == 1  # the multihop schema (gold_cr_rules, stratum)
    assert report["skipped"] == ["t4"]
    by_id = {r["id"]: r for r in report["results"]}
    assert by_id["t1"]["hit"] and by_id["t1"]["matched"].startswith("702.19")
    assert not by_id["t3"]["hit"] and len(by_id["t3"]["retrieved"]) == 5

    text = invoke(search_settings, "eval", "retrieval", "--qa", str(qa), "--k", "5")
    assert text.output.startswith("recall@5: 0.667 (2/3 questions, qa.jsonl)")
    assert "  easy: 0.500 (1/2)" in text.output
    assert "[t3] gold 100.1" in text.output
    assert "recall@1 " in text.output and "MRR " in text.output


def test_eval_retrieval_missing_file_is_one_line(cli_settings: Settings, tmp_path: Path):
    settings = Settings(paths=PathSettings(data_dir=cli_settings.paths.data_dir, state_dir=tmp_path / "s"))
    result = CliRunner().invoke(
        main, ["eval", "retrieval", "--qa", str(tmp_path / "nope.jsonl")], obj=settings
    )
    assert result.exit_code == 1
    assert "nope.jsonl not found" in result.output
    assert not (tmp_path / "s").exists()  # failed before loading (let alone building) anything


@pytest.mark.slow
def test_index_build_and_stats(search_settings: Settings, tmp_path: Path):
    state = tmp_path / "state"
    shutil.copytree(search_settings.paths.state_dir, state)
    settings = Settings(paths=PathSettings(data_dir=search_settings.paths.data_dir, state_dir=state))
    result = invoke(settings, "index", "build")
    assert result.exit_code == 0, result.output
    assert "Rules release 2026-01-16: 3269 rules, 725 glossary entries; 71 cards" in result.output
    assert f"-> {state / 'index' / 'vectors'}" in result.output
    assert "Embedded 0 texts; 3932 reused from the embedding cache" in result.output
    assert "Timings: " in result.output and "total" in result.output

    stats = invoke(settings, "index", "stats")
    assert stats.exit_code == 0, stats.output
    data = json.loads(stats.output)
    assert data["events"] == ["index: loaded", "graph: loaded"]
    assert data["index"]["passage_counts"] == {"rule": 3114, "glossary": 725, "card": 71, "ruling": 22}


def test_index_stats_without_an_index_says_to_build(cli_settings: Settings, tmp_path: Path):
    settings = Settings(paths=PathSettings(data_dir=cli_settings.paths.data_dir, state_dir=tmp_path / "s"))
    result = CliRunner().invoke(main, ["index", "stats"], obj=settings)
    assert result.exit_code == 1
    assert "hexcore index build" in result.output
