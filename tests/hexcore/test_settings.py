"""Settings come from the environment, validated, with one clear message per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hexcore.settings import (
    BotSettings,
    DiscordSecrets,
    EngineSettings,
    PathSettings,
    Settings,
    default_data_dir,
)


def test_data_dir_defaults_to_shared_data_beside_the_project():
    expected = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if expected.is_dir():
        assert default_data_dir() == expected
        assert PathSettings().data_dir == expected.resolve()


def test_environment_overrides_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HEXCORE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HEXCORE_STATE_DIR", str(tmp_path / "state"))
    paths = PathSettings()
    assert paths.data_dir == tmp_path / "data" and paths.rules_dir == tmp_path / "data" / "rules"
    assert paths.index_dir == tmp_path / "state" / "index"
    assert paths.model_cache_dir == tmp_path / "state" / "models" / "smollm2-135m-instruct"


def test_invalid_values_are_rejected(monkeypatch):
    monkeypatch.setenv("HEXCORE_ENGINE_QUEUE_SIZE", "0")
    with pytest.raises(ValidationError, match="queue_size"):
        EngineSettings()


def test_missing_token_is_a_validation_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no bot.env here
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="discord_token"):
        DiscordSecrets()
    monkeypatch.setenv("DISCORD_TOKEN", "abc")
    assert DiscordSecrets().discord_token.get_secret_value() == "abc"


def test_token_from_bot_env_file(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    (tmp_path / "bot.env").write_text("DISCORD_TOKEN=from-file\nHEXCORE_BOT_COOLDOWN_S=2\n")
    assert DiscordSecrets().discord_token.get_secret_value() == "from-file"
    assert BotSettings().cooldown_s == 2


@pytest.mark.parametrize("raw", ["0,1", "[0,1]", " 0, 1 "])
def test_shard_ids_accept_comma_and_json_lists(monkeypatch, raw):
    monkeypatch.setenv("HEXCORE_BOT_SHARD_COUNT", "4")
    monkeypatch.setenv("HEXCORE_BOT_SHARD_IDS", raw)
    bot = BotSettings()
    assert bot.shard_ids == [0, 1] and bot.is_primary


@pytest.mark.parametrize(
    ("count", "ids", "message"),
    [
        (None, "0,1", "needs HEXCORE_BOT_SHARD_COUNT"),
        ("2", "1,1", "duplicates"),
        ("2", "1,2", r"outside 0\.\.1"),
    ],
)
def test_bad_shard_settings_are_one_clear_error(monkeypatch, count, ids, message):
    if count:
        monkeypatch.setenv("HEXCORE_BOT_SHARD_COUNT", count)
    monkeypatch.setenv("HEXCORE_BOT_SHARD_IDS", ids)
    with pytest.raises(ValidationError, match=message):
        BotSettings()


def test_only_the_process_with_shard_zero_is_primary_by_default():
    assert BotSettings().is_primary  # one process runs every shard
    assert not BotSettings(shard_count=4, shard_ids=[2, 3]).is_primary
    assert BotSettings(shard_count=4, shard_ids=[2, 3], primary=True).is_primary


@pytest.mark.parametrize(
    ("raw", "value"), [("auto", "auto"), ("ON", "on"), ("true", "on"), ("0", "off"), (" off ", "off")]
)
def test_admit_mid_batch_reads_on_off_and_auto(monkeypatch, raw, value):
    monkeypatch.setenv("HEXCORE_ENGINE_ADMIT_MID_BATCH", raw)
    assert EngineSettings().admit_mid_batch == value


def test_quantization_and_admission_typos_name_the_variable(monkeypatch):
    monkeypatch.setenv("HEXCORE_ENGINE_ADMIT_MID_BATCH", "sometimes")
    with pytest.raises(ValidationError, match="HEXCORE_ENGINE_ADMIT_MID_BATCH must be auto, on or off"):
        EngineSettings()
    monkeypatch.delenv("HEXCORE_ENGINE_ADMIT_MID_BATCH")
    monkeypatch.setenv("HEXCORE_ENGINE_QUANTIZATION", "int3")
    with pytest.raises(ValidationError, match="HEXCORE_ENGINE_QUANTIZATION must be one of"):
        EngineSettings()


def test_a_misspelt_keyword_raises_instead_of_being_ignored():
    with pytest.raises(TypeError, match="pathz"):
        Settings(pathz=PathSettings())  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="EngineSettings has no setting 'max_new_tokenz'"):
        EngineSettings(max_new_tokenz=3)


def test_unrelated_environment_variables_are_still_ignored(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEXCORE_NO_SUCH_SETTING", "1")  # HEXCORE_ is also the paths section's prefix
    monkeypatch.setenv("HEXCORE_ENGINE_NO_SUCH_SETTING", "1")
    (tmp_path / "hexcore.env").write_text("HEXCORE_ENGINE_MAX_NEW_TOKENS=7\nHEXCORE_BOT_NOPE=1\n")
    settings = Settings()
    assert settings.engine.max_new_tokens == 7 and settings.paths.state_dir.is_absolute()
