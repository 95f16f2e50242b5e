"""``hexcore bot``: a missing token is one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from bot import cli
from hexcore.settings import PROJECT_ROOT


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no bot.env here
    return tmp_path


def group() -> click.Group:
    @click.group()
    def main() -> None: ...

    @main.group(name="eval")
    def eval_group() -> None: ...

    cli.register(main, eval_group)
    return main


def test_missing_token_is_one_line_and_exit_2(no_token):
    result = CliRunner().invoke(group(), ["bot"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DISCORD_TOKEN" in lines[0] and "bot.env" in lines[0]
    assert "Traceback" not in result.output


def test_blank_token_counts_as_missing(no_token, monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "  ")
    result = CliRunner().invoke(group(), ["bot"])
    assert result.exit_code == 2 and "DISCORD_TOKEN" in result.stderr


def test_token_is_read_from_bot_env(no_token):
    (no_token / "bot.env").write_text("DISCORD_TOKEN=abc.def\n")
    assert cli.read_token() == "abc.def"


def test_real_command_line_without_token(no_token):
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "hexcore", "bot"],
        cwd=no_token,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "DISCORD_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
