"""The CLI: `hexcore adapters list|promote|rollback`, `hexcore validate`, `hexcore train` (errors, router)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.adapter_store import AdapterStore, ensure_initial_adapters
from hexcore.cli import main
from hexcore.settings import get_settings


@pytest.fixture
def env(tmp_path: Path, data_dir: Path, monkeypatch, tiny_model_factory) -> dict:
    """A state dir with explain v0 (served) and v1, and the tiny model saved as the configured base model."""
    model_dir = tmp_path / "tiny-llama"
    loaded = dataclasses.replace(tiny_model_factory(), name=model_dir.name)
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    store = AdapterStore(tmp_path / "state" / "adapters")
    ensure_initial_adapters(loaded, store, ("explain",))
    store.save_new(
        "explain",
        store.get("explain", "v0").path,
        {"base_model": model_dir.name, "metrics": {"candidate_perplexity": 9.5}},
    )
    for key, value in {
        "HEXCORE_STATE_DIR": str(tmp_path / "state"),
        "HEXCORE_DATA_DIR": str(data_dir),
        "HEXCORE_ENGINE_MODEL": str(model_dir),
        "HEXCORE_ENGINE_DTYPE": "float32",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield {"store": store, "tmp": tmp_path}
    get_settings.cache_clear()


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_adapters_list_promote_rollback(env) -> None:
    store = env["store"]
    listed = _invoke("adapters", "list")
    assert (
        listed.exit_code == 0
        and "explain: serving v0" in listed.output
        and "perplexity 9.500" in listed.output
    )
    assert _invoke("adapters", "promote", "explain", "v1").output.strip() == "explain now serves v1"
    assert store.serving("explain").version == "v1"
    data = json.loads(_invoke("adapters", "list", "--json").stdout)
    assert data["explain"]["serving"] == "v1" and [v["version"] for v in data["explain"]["versions"]] == [
        "v0",
        "v1",
    ]
    assert _invoke("adapters", "rollback", "explain").output.strip() == "explain rolled back to v0"
    missing = _invoke("adapters", "promote", "explain", "v9")
    assert (
        missing.exit_code == 1
        and "version v9 does not exist" in missing.output
        and "Traceback" not in missing.output
    )
    nothing = _invoke("adapters", "rollback", "teach")
    assert nothing.exit_code == 1 and "no previous version" in nothing.output


def test_train_argument_errors_are_one_line(env) -> None:
    tmp = env["tmp"]
    assert "say what to train" in _invoke("train").output
    both = _invoke("train", "--expert", "explain", "--router")
    assert both.exit_code == 2 and "use one of" in both.output
    (tmp / "bad.yaml").write_text("lora_rank: 4\n")
    bad = _invoke("train", "--expert", "explain", "--config", str(tmp / "bad.yaml"))
    assert bad.exit_code == 1 and "unknown training setting(s) lora_rank" in bad.output
    (tmp / "empty_run").mkdir()
    resume = _invoke("train", "--resume", str(tmp / "empty_run"))
    assert resume.exit_code == 1 and "no complete checkpoint" in resume.output


def test_validate_an_adapter_directory(env) -> None:
    tmp = env["tmp"]
    (tmp / "small.json").write_text(json.dumps({"max_val_examples": 3, "max_seq_len": 256}))
    adapter = env["store"].get("explain", "v1").path
    result = _invoke(
        "validate", str(adapter), "--expert", "explain", "--config", str(tmp / "small.json"), "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    # v1 is a copy of the no-op v0: same perplexity as the base model, so it would not be promoted
    assert report["candidate_result"]["perplexity"] == pytest.approx(report["base"]["perplexity"], rel=1e-5)
    assert report["serving"] == "v0" and report["decision"]["promote"] is False


def test_train_router(env) -> None:
    result = _invoke("train", "--router")
    assert result.exit_code == 0 and "router trained on" in result.output
    meta = json.loads((env["tmp"] / "state" / "router" / "router.json").read_text())
    assert meta["metrics"]["heldout_size"] > 0 and meta["data_hash"]


def test_adapters_export_writes_vllm_layout_and_launch_command(env) -> None:
    out = env["tmp"] / "export"
    model_dir = env["tmp"] / "tiny-llama"
    result = _invoke("adapters", "export", "--base", str(model_dir), "--out", str(out), "--expert", "explain")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "explain" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model_dir)
    assert (out / "explain" / "adapter_model.safetensors").stat().st_size > 0
    launch = (out / "launch.sh").read_text()
    assert "--enable-lora" in launch and "explain=" in launch and "vllm serve" in launch
    assert not (out / "teach").exists()  # only the experts asked for
    nothing = _invoke("adapters", "export", "--base", str(model_dir), "--out", str(out), "--expert", "teach")
    assert nothing.exit_code == 1 and "Traceback" not in nothing.output
