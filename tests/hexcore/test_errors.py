"""The exit-code rule and the one-line failures of hexcore.errors, through the real root group."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from hexcore.errors import HexcoreGroup, UsageProblem, describe_settings_error, env_name
from hexcore.settings import BotSettings, EngineSettings
from knowledge.errors import StaleIndex


def _group(exc: BaseException) -> click.Group:
    @click.group(cls=HexcoreGroup)
    @click.option("-v", "--verbose", count=True)
    def root(verbose: int) -> None:
        pass

    @root.command()
    def boom() -> None:
        raise exc

    return root


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (UsageProblem("the question is empty"), 2, "error: the question is empty"),
        (StaleIndex("The index is out of date. Run `hexcore index build`."), 1, "Run `hexcore index build`"),
        (
            EOFError("Compressed file ended before the end-of-stream marker was reached"),
            1,
            "unexpected failure",
        ),
        (ZeroDivisionError("division by zero"), 1, "Run again with -vv"),
    ],
)
def test_errors_become_one_line_and_the_rule_s_exit_code(exc: BaseException, code: int, text: str) -> None:
    result = CliRunner().invoke(_group(exc), ["boom"])
    assert result.exit_code == code
    assert text in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert "Aborted!" not in result.output  # click's word for an EOFError


def test_very_verbose_shows_the_traceback_of_the_unexpected() -> None:
    result = CliRunner().invoke(_group(ZeroDivisionError("division by zero")), ["-vv", "boom"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_click_usage_errors_keep_their_own_form() -> None:
    result = CliRunner().invoke(_group(click.UsageError("bad")), ["boom"])
    assert result.exit_code == 2 and "Usage:" in result.stderr


def test_settings_errors_name_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXCORE_ENGINE_MAX_NEW_TOKENS", "abc")
    monkeypatch.setenv("HEXCORE_ENGINE_QUEUE_SIZE", "0")
    with pytest.raises(ValidationError) as info:
        EngineSettings(_env_file=None)
    line = describe_settings_error(info.value)
    assert "HEXCORE_ENGINE_MAX_NEW_TOKENS='abc' is invalid" in line
    assert "HEXCORE_ENGINE_QUEUE_SIZE='0' is invalid: Input should be greater than or equal to 1" in line
    assert "max_new_tokens" not in line.replace("MAX_NEW_TOKENS", "")


def test_a_check_across_settings_keeps_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEXCORE_BOT_SHARD_IDS", "0,1")
    with pytest.raises(ValidationError) as info:
        BotSettings(_env_file=None)
    assert "HEXCORE_BOT_SHARD_IDS needs HEXCORE_BOT_SHARD_COUNT" in describe_settings_error(info.value)


def test_env_names() -> None:
    assert env_name("EngineSettings", "queue_size") == "HEXCORE_ENGINE_QUEUE_SIZE"
    assert env_name("PathSettings", "state_dir") == "HEXCORE_STATE_DIR"
    assert env_name(None, "nightly_hour") == "HEXCORE_TRAIN_NIGHTLY_HOUR"
