"""TrainConfig validation and loading from YAML/JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lora_r", 0, "lora_r must be >= 1"),
        ("lora_r", 128, "adapter registry"),
        ("lora_dropout", 1.0, "lora_dropout"),
        ("learning_rate", 0, "learning_rate"),
        ("precision", "fp8", "precision must be one of"),
        ("val_share", 0.0, "val_share"),
        ("max_steps", 0, "max_steps"),
        ("promotion_margin", 1.5, "promotion_margin"),
        ("target_modules", (), "target_modules"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value})
    with pytest.raises(ConfigError, match=message):  # replace() validates too
        TrainConfig().replace(**{field: value})


def test_yaml_and_json_files(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "training:\n  lora_r: 16\n  target_modules: [q_proj, v_proj]\n  epochs: 2\n"
    )
    config = TrainConfig.from_file(tmp_path / "c.yaml")
    assert config.lora_r == 16 and config.target_modules == ("q_proj", "v_proj") and config.epochs == 2
    (tmp_path / "c.json").write_text(json.dumps(config.to_json()))
    assert TrainConfig.from_file(tmp_path / "c.json") == config
    assert config.replace(max_steps=None, epochs=4).epochs == 4  # None means "not given"


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "typo.yaml").write_text("lora_rank: 8\n")
    with pytest.raises(ConfigError, match="unknown training setting.*lora_rank"):
        TrainConfig.from_file(tmp_path / "typo.yaml")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_file(tmp_path / "broken.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        TrainConfig.from_file(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
