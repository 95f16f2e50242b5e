"""``hexcore ask`` and ``hexcore chat`` on the real engine, through CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import format_answer, format_sources
from hexcore.cli import main
from hexcore.settings import PROJECT_ROOT, EngineSettings, PathSettings, Settings
from knowledge.rules import load_release

RELEASE = "2026-01-16"


@pytest.fixture(scope="module")
def cli_settings(real_engine_settings) -> Settings:
    return real_engine_settings(engine=EngineSettings(max_new_tokens=24))


@pytest.fixture(scope="module")
def rules(data_dir: Path):
    return load_release(data_dir / "rules", RELEASE)


def invoke(settings: Settings, *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), obj=settings, input=input, catch_exceptions=False)


@pytest.mark.slow
def test_ask_prints_the_answer_and_quotes_its_rules(cli_settings: Settings, rules) -> None:
    result = invoke(cli_settings, "ask", "How does trample work?", "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("[CR 702.19")  # the deciding rule first...
    assert "Other sources:" in out  # ...then the rest
    plain = out.replace(">>", "").replace("<<", "")  # the answering sentence's marks (bold on a terminal)
    cited = re.findall(rf"^\[CR (702\.19[a-z]?) \({RELEASE}\)", out, re.MULTILINE)
    assert cited, out
    for number in cited:
        assert rules.rules[number].full_text() in plain  # verbatim
    assert "hexcore: Loading" in result.stderr  # progress goes to stderr, never into the answer


@pytest.mark.slow
def test_ask_json_with_a_fixed_expert(cli_settings: Settings, rules) -> None:
    result = invoke(
        cli_settings, "ask", "--expert", "teach", "--json", "-q", "What is trample?", "--max-new-tokens", "8"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["experts"] == ["teach"]
    assert isinstance(data["text"], str) and data["text"]
    assert data["citations"]
    for citation in data["citations"]:
        assert set(citation) >= {"id", "kind", "release", "text"}
        if citation["kind"] == "rule":
            assert citation["release"] == RELEASE
            assert citation["text"] == rules.rules[citation["id"]].full_text()
    assert any(c["id"].startswith("702.19") for c in data["citations"])
    assert result.stderr == ""  # -q: nothing on stderr


@pytest.mark.slow
def test_ask_streams_when_asked(cli_settings: Settings) -> None:
    result = invoke(cli_settings, "ask", "--stream", "-q", "What does flying do?", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    lead, sep, sources = result.stdout.partition("Other sources:")
    assert sep and lead.startswith("[CR 702.9") and sources.strip()  # the lead streamed first, then the rest


@pytest.mark.slow
def test_chat_keeps_a_conversation_and_starts_new_ones(cli_settings: Settings) -> None:
    script = "How does trample work?\nAnd with deathtouch?\n/new\n\n/quit\n"
    result = invoke(cli_settings, "chat", "-q", "--expert", "explain", "--max-new-tokens", "8", input=script)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("Other sources:") == 2  # two answers, each led by its rule
    assert "(new conversation)" in result.stdout
    assert "(explain)" in result.stdout


def test_missing_data_is_one_clear_line(tmp_path: Path) -> None:
    settings = Settings(paths=PathSettings(data_dir=tmp_path / "nothing", state_dir=tmp_path / "state"))
    result = invoke(settings, "ask", "-q", "How does trample work?")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: No Comprehensive Rules data")
        and "hexcore data update" in lines[0]
    )


def test_format_sources_without_passages() -> None:
    from engine.api import Answer
    from engine.pipeline import NOT_FOUND

    assert format_sources(Answer("q", [], NOT_FOUND, [])) == ""
    assert format_answer(Answer("q", [], NOT_FOUND, [])) == NOT_FOUND  # the text already says what to do


@pytest.mark.slow
def test_ask_in_a_real_process(real_engine_state_dir: Path, data_dir: Path, rules) -> None:
    env = {
        **os.environ,
        "HEXCORE_DATA_DIR": str(data_dir),
        "HEXCORE_STATE_DIR": str(real_engine_state_dir),
        "HEXCORE_RULES_RELEASE": RELEASE,
        "HEXCORE_MODEL_CACHE": str(PathSettings().model_cache_dir),
        "HEXCORE_KNOWLEDGE_CONTEXT_TOKENS": "300",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hexcore",
            "ask",
            "--json",
            "-q",
            "--max-new-tokens",
            "8",
            "What is deathtouch?",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert any(c["id"].startswith("702.2") for c in data["citations"]), data["citations"]
