"""engine.export: real peft adapters on the tiny model, stored with AdapterStore, exported for vLLM."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from engine.adapter_store import AdapterStore
from engine.api import Expert
from engine.errors import AdapterError
from engine.export import ExportError, check_adapter, export_adapters, vllm_rank
from engine.model_loader import LoadedModel


def _save_adapter(
    factory: Callable[..., LoadedModel], target: Path, seed: int = 0, hidden: int = 64, **lora: object
) -> Path:
    """A trained-looking LoRA (non-zero B) saved flat into ``target`` as peft writes it."""
    lora.setdefault("r", 4)
    lora.setdefault("target_modules", ["q_proj", "v_proj"])
    model = factory(seed=seed, hidden_size=hidden).model
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **lora))
    peft_model.save_pretrained(target, safe_serialization=True)
    return target


@pytest.fixture(scope="module")
def adapters(
    tiny_model_factory: Callable[..., LoadedModel], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "r4": _save_adapter(tiny_model_factory, root / "r4", seed=1),
        "r12": _save_adapter(
            tiny_model_factory, root / "r12", seed=2, r=12, target_modules=["q_proj", "o_proj"]
        ),
        "dora": _save_adapter(tiny_model_factory, root / "dora", use_dora=True),
        "wide": _save_adapter(tiny_model_factory, root / "wide", hidden=128),
    }


@pytest.fixture
def base_dir(tiny_model_factory: Callable[..., LoadedModel], tmp_path: Path) -> Path:
    """A local base model directory (config.json) for the width check."""
    folder = tmp_path / "base"
    tiny_model_factory().model.config.save_pretrained(folder)
    return folder


@pytest.fixture
def store(tmp_path: Path, adapters: dict) -> AdapterStore:
    store = AdapterStore(tmp_path / "state" / "adapters")
    store.save_new(Expert.REASON, adapters["r12"], {"base_model": "tiny"})  # v0, superseded
    store.promote(
        Expert.REASON, store.save_new(Expert.REASON, adapters["r4"], {"base_model": "tiny"}).version
    )
    store.promote(Expert.EXPLAIN, store.save_new(Expert.EXPLAIN, adapters["r12"]).version)
    store.save_new(Expert.TEACH, adapters["r4"])  # stored but never promoted: not served, not exported
    return store


def test_vllm_rank_rounds_up_to_an_accepted_value() -> None:
    assert [vllm_rank(r) for r in (1, 4, 8, 12, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ValueError):
        vllm_rank(1024)


def test_export_writes_vllm_layout_manifest_and_command(
    store: AdapterStore, base_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    report = export_adapters(store.root, out, base_dir)

    assert set(report.exported) == {"reason", "explain"}
    assert report.exported["reason"].version == "v1"  # the serving version, not the newest or the first
    assert set(report.skipped) == {"teach", "predict", "retrospect"}
    assert "no serving version" in report.skipped["teach"]
    for expert in ("reason", "explain"):
        folder = out / expert
        assert sorted(p.name for p in folder.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(base_dir.resolve())
        assert config["inference_mode"] is True
    assert report.exported["explain"].rank == 12 and report.max_lora_rank == 16

    cmd = report.command
    assert cmd[:4] == ["vllm", "serve", str(base_dir.resolve()), "--enable-lora"]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "16" and cmd[cmd.index("--max-loras") + 1] == "2"
    modules = cmd[cmd.index("--lora-modules") + 1 :]
    assert modules == [f"reason={out.resolve() / 'reason'}", f"explain={out.resolve() / 'explain'}"]
    assert "HEXCORE_ENGINE_BACKEND=remote" in report.summary() and report.command_line in report.summary()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapters"]["reason"]["version"] == "v1"
    assert manifest["adapters"]["reason"]["sha256"] == store.serving(Expert.REASON).meta["sha256"]


def test_exported_adapter_loads_in_peft_with_the_same_weights(
    store: AdapterStore, base_dir: Path, tmp_path: Path, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    out = tmp_path / "export"
    export_adapters(store.root, out, base_dir)
    model = PeftModel.from_pretrained(tiny_model_factory().model, out / "reason")
    original = load_file(store.serving(Expert.REASON).weights_path)
    exported = load_file(out / "reason" / "adapter_model.safetensors")
    assert original.keys() == exported.keys()
    assert all(torch.equal(original[k], exported[k]) for k in original)
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert loaded and any(p.abs().sum() > 0 for p in loaded.values())  # the trained weights, not a fresh init


def test_launch_script_is_relocatable_and_passes_extra_args(
    store: AdapterStore, base_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    export_adapters(store.root, out, base_dir, extra_args=("--tensor-parallel-size", "2"))
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    fake_bin = tmp_path / "bin"  # vLLM needs a GPU: a stand-in prints the arguments it was given
    fake_bin.mkdir()
    (fake_bin / "vllm").write_text(
        "#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    )
    (fake_bin / "vllm").chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "PORT": "8123"}
    result = subprocess.run(
        ["bash", str(moved / "launch.sh"), "--seed", "7"], env=env, capture_output=True, text=True, check=True
    )
    args = json.loads(result.stdout)
    assert args[:2] == ["serve", str(base_dir.resolve())]
    assert args[args.index("--port") + 1] == "8123" and args[args.index("--host") + 1] == "0.0.0.0"
    start = args.index("--lora-modules") + 1
    assert args[start : start + 2] == [f"reason={moved / 'reason'}", f"explain={moved / 'explain'}"]
    assert args[-4:] == ["--tensor-parallel-size", "2", "--seed", "7"]


def test_reexport_replaces_the_previous_export(store: AdapterStore, base_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_adapters(store.root, out, base_dir)
    store.promote(Expert.REASON, "v0")  # the rank-12 adapter
    report = export_adapters(store.root, out, base_dir)
    assert report.exported["reason"].version == "v0"
    assert json.loads((out / "reason" / "adapter_config.json").read_text())["r"] == 12
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_unsupported_or_mismatched_adapters_are_skipped(
    adapters: dict, base_dir: Path, tmp_path: Path
) -> None:
    store = AdapterStore(tmp_path / "adapters")
    store.promote(Expert.REASON, store.save_new(Expert.REASON, adapters["r4"]).version)
    store.promote(Expert.TEACH, store.save_new(Expert.TEACH, adapters["dora"]).version)
    store.promote(Expert.PREDICT, store.save_new(Expert.PREDICT, adapters["wide"]).version)
    report = export_adapters(store.root, tmp_path / "out", base_dir)
    assert set(report.exported) == {"reason"}
    assert "DoRA" in report.skipped["teach"]
    assert "hidden_size is 64" in report.skipped["predict"]
    assert not (tmp_path / "out" / "teach").exists()


def test_hub_id_base_model_is_not_checked_but_warned(store: AdapterStore, tmp_path: Path) -> None:
    report = export_adapters(store.root, tmp_path / "out", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert report.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert any("not a local model directory" in w for w in report.warnings)
    config = json.loads((tmp_path / "out" / "reason" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_nothing_to_export_raises(tmp_path: Path, base_dir: Path) -> None:
    with pytest.raises(ExportError, match="no serving version") as err:
        export_adapters(tmp_path / "empty", tmp_path / "out", base_dir)
    assert isinstance(err.value, AdapterError)


def test_check_adapter_rejects_rank_mismatch_and_full_weights(adapters: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(adapters["r12"], broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    config["r"] = 8  # weights are rank 12
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rank 12 but the config says r=8"):
        check_adapter(broken)
    config.update(r=12, modules_to_save=["lm_head"])
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="modules_to_save"):
        check_adapter(broken)
