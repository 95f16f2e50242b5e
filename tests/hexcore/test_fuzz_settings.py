"""Every settings variable fed junk: the command refuses with exit 2 and one line naming the variable, or
accepts the value; never a pydantic traceback naming a field."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from hexcore.errors import describe_settings_error, env_name
from hexcore.settings import (
    BotSettings,
    DiscordSecrets,
    EngineSettings,
    KnowledgeSettings,
    PathSettings,
    Settings,
    TrainingSettings,
)
from tests.hexcore.conftest import Hexcore, assert_clean
from tests.reliability import CASES

SECTIONS: tuple[type[BaseSettings], ...] = (
    PathSettings,
    KnowledgeSettings,
    EngineSettings,
    BotSettings,
    TrainingSettings,
)
VARIABLES = sorted(env_name(cls.__name__, field) for cls in SECTIONS for field in cls.model_fields)
JUNK = [
    "abc",
    "-1",
    "0",
    "",
    " ",
    "1e999",
    "nan",
    "-inf",
    "[",
    "[1,",
    '{"a": 1}',
    "9" * 5000,
    "~nouser/x",
    "ŧ",
]
EXAMPLES = int(os.environ.get("HEXCORE_FUZZ_EXAMPLES", "12"))


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("HEXCORE_", "DISCORD_TOKEN")):
            monkeypatch.delenv(name)


def test_every_field_has_a_variable() -> None:
    assert "HEXCORE_ENGINE_MAX_NEW_TOKENS" in VARIABLES and "HEXCORE_BOT_SHARD_IDS" in VARIABLES
    assert env_name("DiscordSecrets", "discord_token") == "DISCORD_TOKEN"
    assert len(VARIABLES) == sum(len(cls.model_fields) for cls in SECTIONS)


@settings(
    max_examples=EXAMPLES * 8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    variable=st.sampled_from(VARIABLES),
    value=st.one_of(
        st.sampled_from(JUNK),
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30),
    ),
)
def test_any_value_of_any_variable_is_accepted_or_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, variable: str, value: str
) -> None:
    """The whole settings object, built as every command builds it, from one junk variable."""
    CASES["settings"] += 1
    with monkeypatch.context() as mp:
        _clean_env(mp)
        mp.chdir(tmp_path_factory.getbasetemp())  # no env files
        mp.setenv(variable, value)
        try:
            Settings()
        except (
            ValidationError,
            SettingsError,
        ) as exc:  # anything else fails the test: it would be a traceback
            line = describe_settings_error(exc)
            assert "\n" not in line
            assert variable in line or "HEXCORE_BOT_SHARD" in line, (variable, line)
            assert "fix or unset it" in line


@pytest.mark.parametrize("variable", VARIABLES)
def test_each_variable_with_junk_through_the_cli(hexcore: Hexcore, variable: str) -> None:
    """Every variable with every junk value through a real command (``adapters list`` reads every section and
    loads nothing slow)."""
    for value in JUNK:
        result = hexcore("adapters", "list", env={variable: value})
        assert_clean(result, codes=(0, 1, 2))
        if result.exit_code == 2:
            assert variable in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_bad_discord_token_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.chdir(os.path.dirname(__file__))
    with pytest.raises(ValidationError) as info:
        DiscordSecrets(_env_file=None)
    assert "DISCORD_TOKEN is not set" in describe_settings_error(info.value)
