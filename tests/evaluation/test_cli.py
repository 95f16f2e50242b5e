"""``hexcore eval qa``: bad question files fail at once without loading the engine; one real-engine run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import evaluation.cli
from hexcore.cli import main
from hexcore.settings import EngineSettings, PathSettings, Settings

RELEASE = "2026-01-16"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def invoke(settings: Settings, *args: str):
    return CliRunner().invoke(main, ["eval", "qa", *args], obj=settings, catch_exceptions=False)


@pytest.fixture
def engine_loads(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Records every attempt to build the engine (there must be none for a bad file)."""
    calls: list[Settings] = []
    real = evaluation.cli.open_engine

    def spy(settings: Settings, quiet: bool):
        calls.append(settings)
        return real(settings, quiet)

    monkeypatch.setattr(evaluation.cli, "open_engine", spy)
    return calls


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_file_fails_at_once(settings: Settings, tmp_path: Path, engine_loads: list) -> None:
    started = time.perf_counter()
    result = invoke(settings, "--qa", str(tmp_path / "nope.jsonl"))
    line = _one_error_line(result)
    assert line.startswith("error: Question file") and "nope.jsonl not found" in line
    assert engine_loads == [] and time.perf_counter() - started < 5
    assert not (tmp_path / "state").exists()  # nothing was loaded or built


def test_the_default_file_is_the_data_dirs_quiz(tmp_path: Path, engine_loads: list) -> None:
    settings = Settings(paths=PathSettings(data_dir=tmp_path / "data", state_dir=tmp_path / "state"))
    line = _one_error_line(invoke(settings))
    assert str(tmp_path / "data" / "qa" / "quiz-dev.jsonl") in line and engine_loads == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"question": "What is trample?", "rule_refs": ["702.19"]}\n{"question": "oops",\n',
            ":2 is not JSON",
        ),
        ('\n{"question": "Fine?"}\n{"answer": "no question here"}\n', ":3 has no 'question' field"),
        ("\n\n", "has no questions"),
    ],
)
def test_a_malformed_file_names_the_line(
    settings: Settings, tmp_path: Path, engine_loads: list, content: str, message: str
) -> None:
    qa = tmp_path / "bad.jsonl"
    qa.write_text(content, encoding="utf-8")
    started = time.perf_counter()
    line = _one_error_line(invoke(settings, "--qa", str(qa), "--json"))
    assert line.startswith("error: ") and message in line and str(qa) in line
    assert engine_loads == [] and time.perf_counter() - started < 5


QUESTIONS = [
    {
        "id": 1,
        "difficulty": "fundamentals",
        "question": "How does trample work when the creature is blocked?",
        "answer": "The attacker assigns lethal damage to the blockers and the rest to the player.",
        "rule_refs": ["702.19b"],
    },
    {
        "id": "hand-deathtouch-trample",
        "stratum": "interaction_multihop",
        "question": "You attack with a 5/5 that has deathtouch and trample, blocked by a single 4/4. "
        "How much damage can go to the player?",
        "answer": "4. With deathtouch, 1 damage is lethal to the blocker, so 4 can be assigned to the player.",
        "gold_cr_rules": ["702.2c", "702.19e", "510.1c"],
        "gold_entities": ["deathtouch", "trample"],
    },
]


@pytest.mark.slow
def test_eval_qa_on_the_real_engine(real_engine_settings, tmp_path: Path) -> None:
    settings = real_engine_settings(engine=EngineSettings(max_new_tokens=8))
    qa = tmp_path / "two.jsonl"
    qa.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    out, charts = tmp_path / "report" / "qa.json", tmp_path / "charts"
    result = invoke(settings, "--qa", str(qa), "--json", "--plots", str(charts), "--out", str(out))
    assert result.exit_code == 0, result.output

    report = json.loads(result.stdout)  # stdout is the JSON alone
    assert json.loads(out.read_text(encoding="utf-8")) == report
    assert report["questions"] == report["planned"] == 2 and report["interrupted"] is False
    trample, multihop = report["results"]
    assert [trample["id"], multihop["id"]] == ["1", "hand-deathtouch-trample"]
    for r in (trample, multihop):
        assert r["error"] is None and r["answer"] and r["citations"] and r["experts"]
        assert r["latency_s"] > 0 and r["lead"] is not None and isinstance(r["prose_shown"], bool)
    assert 0 < trample["generated_tokens"] <= 8 and trample["calculator"] == 0.0
    # the board-state question is the calculator's: its verdict, no model tokens
    assert multihop["verdict"] == "Your opponent takes 4 damage." and multihop["calculator"] == 1.0
    assert multihop["generated_tokens"] == 0 and report["calculator"]["taken"] == 1
    for r in (trample, multihop):
        assert r["similarity"] is not None and -1 <= r["similarity"] <= 1
        assert r["keyword_f1"] is not None and r["citation_precision"] is not None
    assert trample["citation_recall"] > 0  # retrieval cites the 702.19 family
    assert any(c["id"].startswith("702.19") and c["release"] == RELEASE for c in trample["citations"])
    assert multihop["entity_recall"] is not None
    assert list(report["by_difficulty"]) == ["fundamentals", "interaction_multihop"]
    assert report["summary"]["citation_recall"]["defined"] == 2
    assert report["summary"]["latency_p50_s"] > 0

    for name in ("qa-quality-by-difficulty.png", "qa-latency.png"):
        path = charts / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"chart: {path}" in result.stderr
    assert "[1/2] 1 (fundamentals)" in result.stderr and "[2/2] hand-deathtouch-trample" in result.stderr
