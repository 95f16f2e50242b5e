"""Shared fixtures: the real data in ../shared/data (or HEXCORE_DATA_DIR) and a throwaway state dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from hexcore.settings import EngineSettings, KnowledgeSettings, PathSettings, Settings

REAL_ENGINE_RELEASE = "2026-01-16"
"""The rules release every real-engine test serves (its index is built once per session)."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = PathSettings().data_dir
    if not (path / "rules").is_dir():
        pytest.skip(f"rules data not found in {path}; set HEXCORE_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def rules_dir(data_dir: Path) -> Path:
    return data_dir / "rules"


@pytest.fixture(scope="session")
def cards_dir(data_dir: Path) -> Path:
    return data_dir / "cards"


@pytest.fixture(scope="session")
def latest_rules_path(rules_dir: Path) -> Path:
    return rules_dir / "2026-01-16.txt"


@pytest.fixture(scope="session")
def real_engine_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state dir for every test that runs the real engine: its search index is built once per session.

    HEXCORE_TEST_STATE_DIR keeps it across sessions (development; building it takes minutes on 2 cores).
    """
    override = os.environ.get("HEXCORE_TEST_STATE_DIR")
    path = Path(override) if override else tmp_path_factory.getbasetemp() / "hexcore-real-engine-state"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def real_engine_settings(real_engine_state_dir: Path, data_dir: Path) -> Callable[..., Settings]:
    """Settings for a real engine: ``make(context_tokens=300, engine=..., state_dir=..., bot=...)``; the state
    dir defaults to the shared one.

    The small context budget keeps prompts (and so each test's prefill) short on 2 cores.
    """

    def make(
        *,
        context_tokens: int = 300,
        engine: EngineSettings | None = None,
        state_dir: Path | None = None,
        **sections: object,
    ) -> Settings:
        return Settings(
            paths=PathSettings(
                data_dir=data_dir,
                state_dir=state_dir or real_engine_state_dir,
                rules_release=REAL_ENGINE_RELEASE,
                model_cache=PathSettings().model_cache_dir,
            ),
            knowledge=KnowledgeSettings(context_tokens=context_tokens),
            engine=engine or EngineSettings(),
            **sections,
        )

    return make


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path) -> Settings:
    """Settings pointing at the real data and a fresh state dir under tmp_path."""
    return Settings(paths=PathSettings(data_dir=data_dir, state_dir=tmp_path / "state"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.reliability import summary

    line = summary()
    if line:
        terminalreporter.write_line(line)
