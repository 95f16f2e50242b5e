"""AdapterStore: versions on disk, the atomic serving pointer, rollback, and the initial no-op adapters."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from engine.adapter_store import (
    CONFIG_FILE,
    META_FILE,
    SERVING_FILE,
    WEIGHTS_FILE,
    AdapterStore,
    ensure_initial_adapters,
    loaded_tensor_bytes,
    read_adapter_files,
    sha256_file,
)
from engine.api import Expert
from engine.errors import AdapterError
from engine.model_loader import LoadedModel
from hexcore.settings import Settings


def _peft_dir(loaded: LoadedModel, target: Path, adapter_name: str = "trained") -> Path:
    """A small trained-looking adapter saved by peft the ordinary way."""
    torch.manual_seed(1)
    model = get_peft_model(
        loaded.model,
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        adapter_name=adapter_name,
    )
    model.save_pretrained(target, selected_adapters=[adapter_name])
    return target / adapter_name  # peft nests a non-default adapter name


@pytest.fixture
def store(tmp_path: Path) -> AdapterStore:
    return AdapterStore(tmp_path / "adapters")


@pytest.fixture
def adapter_dir(tiny_model_factory: Callable[..., LoadedModel], tmp_path: Path) -> Path:
    return _peft_dir(tiny_model_factory(), tmp_path / "peft-out")


def _no_scratch(store: AdapterStore) -> bool:
    return not [p for p in store.root.rglob("*") if p.name.startswith(".")]


def test_save_new_numbers_versions_and_writes_meta(store: AdapterStore, adapter_dir: Path) -> None:
    first = store.save_new(Expert.REASON, adapter_dir, {"base_model": "tiny", "metrics": {"f1": 0.5}})
    second = store.save_new("reason", adapter_dir, {"metrics": {"f1": 0.6}})
    assert (first.version, second.version) == ("v0", "v1")
    assert first.path == store.root / "reason" / "v0" == store.path(Expert.REASON, "v0")
    for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
        assert (second.path / name).is_file()
    meta = json.loads((first.path / META_FILE).read_text())
    assert meta["base_model"] == "tiny" and meta["metrics"] == {"f1": 0.5}
    assert meta["version"] == "v0" and meta["expert"] == "reason" and meta["created"]
    assert meta["sha256"] == sha256_file(first.path / WEIGHTS_FILE)
    assert [v.version for v in store.versions(Expert.REASON)] == ["v0", "v1"]
    assert store.versions(Expert.TEACH) == []
    assert store.serving(Expert.REASON) is None  # saving never promotes
    assert _no_scratch(store)


def test_save_new_from_peft_model_flattens_named_adapter(
    store: AdapterStore, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    torch.manual_seed(2)
    model = get_peft_model(
        tiny_model_factory().model,
        LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
        adapter_name="explain_trained",
    )
    saved = store.save_new(Expert.EXPLAIN, model, {"base_model": "tiny"}, adapter_name="explain_trained")
    assert sorted(p.name for p in saved.path.iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, META_FILE, "README.md"]
    )
    weights = load_file(str(saved.weights_path))
    assert weights and all("q_proj.lora_" in key for key in weights)
    assert json.loads((saved.path / CONFIG_FILE).read_text())["r"] == 4


def test_save_new_rejects_incomplete_source_and_leaves_nothing(store: AdapterStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / CONFIG_FILE).write_text("{}")
    with pytest.raises(AdapterError, match=WEIGHTS_FILE):
        store.save_new(Expert.TEACH, empty)
    assert store.versions(Expert.TEACH) == []
    assert _no_scratch(store)


def test_promote_rollback_keep_history(store: AdapterStore, adapter_dir: Path) -> None:
    for _ in range(3):
        store.save_new(Expert.PREDICT, adapter_dir)
    store.promote(Expert.PREDICT, "v0")
    store.promote(Expert.PREDICT, "v2")
    store.promote(Expert.PREDICT, "v2")  # promoting the serving version changes nothing
    assert store.serving(Expert.PREDICT).version == "v2"
    assert store.history(Expert.PREDICT) == ["v0"]
    pointer = json.loads((store.expert_dir(Expert.PREDICT) / SERVING_FILE).read_text())
    assert pointer["serving"] == "v2" and pointer["action"] == "promote"

    back = store.rollback(Expert.PREDICT)
    assert back.version == "v0" and store.serving(Expert.PREDICT).version == "v0"
    assert store.history(Expert.PREDICT) == []
    with pytest.raises(AdapterError, match="no previous version"):
        store.rollback(Expert.PREDICT)
    assert store.serving(Expert.PREDICT).version == "v0"  # a failed rollback leaves the pointer alone
    assert _no_scratch(store)


def test_rollback_skips_versions_whose_files_are_gone(store: AdapterStore, adapter_dir: Path) -> None:
    import shutil

    for _ in range(3):
        store.save_new(Expert.REASON, adapter_dir)
    for version in ("v0", "v1", "v2"):
        store.promote(Expert.REASON, version)
    shutil.rmtree(store.path(Expert.REASON, "v1"))
    assert store.rollback(Expert.REASON).version == "v0"


def test_bad_names_and_unknown_versions_are_typed_errors(store: AdapterStore, adapter_dir: Path) -> None:
    store.save_new(Expert.REASON, adapter_dir)
    with pytest.raises(AdapterError, match="does not exist"):
        store.promote(Expert.REASON, "v7")
    with pytest.raises(AdapterError, match="invalid version"):
        store.path(Expert.REASON, "../../etc")
    with pytest.raises(AdapterError, match="unknown expert"):
        store.versions("wizard")
    assert store.serving(Expert.REASON) is None


def test_corrupt_pointer_is_reported(store: AdapterStore, adapter_dir: Path) -> None:
    store.save_new(Expert.TEACH, adapter_dir)
    store.promote(Expert.TEACH, "v0")
    (store.expert_dir(Expert.TEACH) / SERVING_FILE).write_text('{"serving": "v0", "hist')
    with pytest.raises(AdapterError, match="unreadable"):
        store.serving(Expert.TEACH)


@pytest.mark.parametrize(
    "garbage", ['{"serving": "v0", "hist', "[]", '{"serving": 3}', '{"serving": "v0", "history": "v1"}']
)
def test_promote_repairs_a_corrupt_pointer(store: AdapterStore, adapter_dir: Path, garbage: str) -> None:
    """Issue 14, item 10: a garbage serving.json could not be repaired with `hexcore adapters promote`."""
    store.save_new(Expert.TEACH, adapter_dir)
    pointer = store.expert_dir(Expert.TEACH) / SERVING_FILE
    pointer.write_text(garbage)
    with pytest.raises(AdapterError, match="repair it with `hexcore adapters promote teach VERSION`"):
        store.serving(Expert.TEACH)
    assert store.promote(Expert.TEACH, "v0").version == "v0"
    assert store.serving(Expert.TEACH).version == "v0" and store.history(Expert.TEACH) == []
    assert pointer.with_name("serving.json.damaged").read_text() == garbage  # kept, not deleted


def test_concurrent_writers_get_distinct_versions(store: AdapterStore, adapter_dir: Path) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(3):
                results.append(store.save_new(Expert.RETROSPECT, adapter_dir).version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(12)]
    # a second store on the same directory (another process) continues the numbering
    assert AdapterStore(store.root).save_new(Expert.RETROSPECT, adapter_dir).version == "v12"


def test_from_settings_uses_state_dir(settings: Settings) -> None:
    assert AdapterStore.from_settings(settings).root == settings.paths.state_dir / "adapters"


def test_ensure_initial_adapters_creates_noop_v0_and_leaves_model_unchanged(
    store: AdapterStore, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    loaded = tiny_model_factory()
    ids = torch.tensor([[1, 50, 300, 7000, 12]])
    with torch.no_grad():
        before = loaded.model(ids).logits

    served = ensure_initial_adapters(loaded, store)

    assert set(served) == set(Expert)
    for expert, version in served.items():
        assert version.version == "v0" and store.serving(expert).version == "v0"
        assert version.meta["base_model"] == loaded.name and version.meta["initial"] is True
        config = json.loads((version.path / CONFIG_FILE).read_text())
        assert config["r"] == 8 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
        weights = load_file(str(version.weights_path))
        lora_b = [t for k, t in weights.items() if "lora_B" in k]
        assert lora_b and all(torch.count_nonzero(t) == 0 for t in lora_b)  # no-op until trained
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, before)

    ensure_initial_adapters(loaded, store)  # idempotent
    assert all(len(store.versions(e)) == 1 for e in Expert)


def test_ensure_initial_adapters_only_fills_missing_experts(
    store: AdapterStore, adapter_dir: Path, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    store.save_new(Expert.REASON, adapter_dir)
    store.save_new(Expert.REASON, adapter_dir)
    store.promote(Expert.REASON, "v1")
    served = ensure_initial_adapters(tiny_model_factory(), store)
    assert served[Expert.REASON].version == "v1"
    assert len(store.versions(Expert.REASON)) == 2
    assert all(served[e].version == "v0" for e in Expert if e is not Expert.REASON)


def test_ensure_initial_adapters_refuses_a_wrapped_model(
    store: AdapterStore, tiny_model_factory: Callable[..., LoadedModel]
) -> None:
    loaded = tiny_model_factory()
    get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="plain base model"):
        ensure_initial_adapters(loaded, store)


def test_read_adapter_files_checks_without_a_model(store: AdapterStore, adapter_dir: Path) -> None:
    version = store.save_new(Expert.TEACH, adapter_dir, {"base_model": "tiny"})
    files = read_adapter_files(
        version, max_rank=8, module_names=["model.layers.0.self_attn.q_proj"], base_model="tiny"
    )
    assert files.config.r == 4 and files.config.inference_mode
    assert files.weights and all(".lora_" in key for key in files.weights)
    assert loaded_tensor_bytes(version) == sum(t.numel() * 4 for t in files.weights.values())
    with pytest.raises(AdapterError, match="rank 4 is above the limit of 2"):
        read_adapter_files(version, max_rank=2)
    with pytest.raises(AdapterError, match="trained for base model 'tiny'"):
        read_adapter_files(version, max_rank=8, base_model="other")
    with pytest.raises(AdapterError, match="do not exist in the base model"):
        read_adapter_files(version, max_rank=8, module_names=["model.layers.0.mlp.up_proj"])
