"""Reliability fixtures: a small built state dir (no model loaded) and the ``hexcore`` command run in-process
on a copy of it, configured through the environment as a user configures it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hexcore.settings import get_settings
from tests.hexcore.state_support import RELEASE, build_state, copy_state, hash_embeddings
from tests.reliability import CASES, EXITS

SETTINGS_PREFIXES = ("HEXCORE_", "DISCORD_TOKEN")

SLOW_LOADS = {
    "engine.cli": "open_engine",
    "evaluation.cli": "open_engine",
    "engine.model_loader": "load_base_model",
    "engine.router": "train_router",
    "bot.cli": "run_bot",
    "knowledge.update": "update_data",
}
"""What loads a language model, trains, or reaches the network: replaced in the fuzz layer by a typed error
(:data:`SENTINEL`), so input that passes every check ends in exit 1 with that message within milliseconds."""
SENTINEL = "fuzz: stopped where a model would load"


@pytest.fixture
def no_slow_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from engine.errors import EngineDead

    def stop(*args: object, **kwargs: object) -> None:
        raise EngineDead(SENTINEL)

    for module, name in SLOW_LOADS.items():
        monkeypatch.setattr(importlib.import_module(module), name, stop)


@pytest.fixture(scope="session")
def built_state(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Graph, FAISS index, embedding cache and adapter pointers, built once per session (seconds)."""
    return build_state(data_dir, tmp_path_factory.mktemp("reliability") / "state")


@dataclass
class Hexcore:
    """``hexcore ARGS`` in-process on ``state`` (a fresh copy of the built state dir per test)."""

    state: Path
    data_dir: Path
    monkeypatch: pytest.MonkeyPatch

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        from hexcore.cli import main

        CASES["CLI runs"] += 1
        with self.monkeypatch.context() as mp:
            for name, value in (env or {}).items():
                mp.setenv(name, value)
            get_settings.cache_clear()
            try:
                result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=True)
            finally:
                get_settings.cache_clear()
        EXITS[result.exit_code] += 1
        if SENTINEL in result.output:
            EXITS["stopped at a model load"] += 1
        return result


@pytest.fixture
def hexcore(
    built_state: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Hexcore]:
    import os

    for name in list(os.environ):
        if name.startswith(SETTINGS_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no hexcore.env / bot.env from the working directory
    state = copy_state(built_state, tmp_path / "state")
    monkeypatch.setenv("HEXCORE_STATE_DIR", str(state))
    monkeypatch.setenv("HEXCORE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("HEXCORE_RULES_RELEASE", RELEASE)
    with hash_embeddings(monkeypatch):
        yield Hexcore(state, data_dir, monkeypatch)
    get_settings.cache_clear()


def assert_clean(result: Result, codes: tuple[int, ...] = (0, 1, 2)) -> None:
    """The invariants every run keeps: no traceback, exit code 0, 1 (failed run) or 2 (bad input), and a
    failure says why in an ``error:`` line (click's own usage errors in its ``Error:`` form)."""
    output = result.output  # stdout and stderr as a terminal shows them
    assert "Traceback" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in codes, (result.exit_code, output)
    assert "unexpected failure" not in output, output  # the safety net caught it: a handler is missing
    assert "Aborted!" not in output, output
    if result.exit_code != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines, "a failure must say why"
        assert any(line.startswith(("error:", "Error:")) for line in lines), result.stderr
