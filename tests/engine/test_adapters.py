"""AdapterRegistry: serving, validation by loading and hot swap, on a tiny real Llama.

The device LRU is tested in test_adapter_residency.py, per-thread routing in test_peft_routing.py.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable, Iterator

import pytest
import torch
from peft import IA3Config, LoraConfig

from engine.adapter_store import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    AdapterStore,
    AdapterVersion,
    ensure_initial_adapters,
)
from engine.adapters import BASE_ADAPTER, AdapterRegistry
from engine.api import Expert
from engine.errors import AdapterError
from engine.model_loader import LoadedModel
from tests.engine.adapter_helpers import PROMPT, greedy, logits, save_adapter


def test_initial_adapters_serve_base_outputs(
    registry: AdapterRegistry, store: AdapterStore, loaded: LoadedModel, base_logits: torch.Tensor
) -> None:
    ensure_initial_adapters(loaded, store)
    assert registry.register_serving() == {}
    assert registry.serving_versions() == {e.value: "v0" for e in Expert}
    with registry.use(list(Expert)) as names:
        assert len(set(names)) == 5 and BASE_ADAPTER not in names
        out = logits(registry, names)
    for row in out:
        torch.testing.assert_close(row, base_logits)


def test_mixed_batch_equals_single_adapter_runs(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory, base_logits: torch.Tensor
) -> None:
    for i, expert in enumerate((Expert.REASON, Expert.EXPLAIN)):
        store.promote(expert, save_adapter(tiny_model_factory, store, expert, seed=10 + i).version)
        registry.register(expert)
    with registry.use([Expert.REASON, Expert.EXPLAIN, None]) as names:
        assert names[2] == BASE_ADAPTER
        mixed = logits(registry, names)
        singles = [logits(registry, [name])[0] for name in names]
    for row, single in zip(mixed, singles, strict=True):
        torch.testing.assert_close(row, single, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[2], base_logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed[0], base_logits, atol=1e-3)  # a trained adapter changes the output
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)
    # a call without adapter_names computes the base model (no adapter is left active in the layers)
    with torch.inference_mode():
        torch.testing.assert_close(registry.model(input_ids=PROMPT).logits[0], base_logits)


# --- validation: every failure is an AdapterError and the other adapters keep working -----------------------


def _break_missing_dir(v: AdapterVersion) -> None:
    shutil.rmtree(v.path)


def _break_missing_weights(v: AdapterVersion) -> None:
    (v.path / WEIGHTS_FILE).unlink()


def _break_missing_config(v: AdapterVersion) -> None:
    (v.path / CONFIG_FILE).unlink()


def _break_config_json(v: AdapterVersion) -> None:
    (v.path / CONFIG_FILE).write_text('{"peft_type": "LORA", "r": ')


def _drop_checksum(v: AdapterVersion) -> None:
    meta = json.loads((v.path / META_FILE).read_text())
    del meta["sha256"]
    (v.path / META_FILE).write_text(json.dumps(meta))


def _break_weights_garbage(v: AdapterVersion) -> None:
    (v.path / WEIGHTS_FILE).write_bytes(b"\x00\x01not a safetensors file" * 10)
    _drop_checksum(v)  # as if copied in by hand: only loading can tell


def _break_weights_truncated(v: AdapterVersion) -> None:
    data = (v.path / WEIGHTS_FILE).read_bytes()
    (v.path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    _drop_checksum(v)


def _break_checksum(v: AdapterVersion) -> None:
    data = bytearray((v.path / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (v.path / WEIGHTS_FILE).write_bytes(bytes(data))


def _edit_config(**changes: object) -> Callable[[AdapterVersion], None]:
    def edit(v: AdapterVersion) -> None:
        config = json.loads((v.path / CONFIG_FILE).read_text())
        config.update(changes)
        (v.path / CONFIG_FILE).write_text(json.dumps(config))

    return edit


def _edit_meta(**changes: object) -> Callable[[AdapterVersion], None]:
    def edit(v: AdapterVersion) -> None:
        meta = json.loads((v.path / META_FILE).read_text())
        meta.update(changes)
        (v.path / META_FILE).write_text(json.dumps(meta))

    return edit


def _nan_weights(v: AdapterVersion) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(v.weights_path))
    first = sorted(weights)[0]
    weights[first][0, 0] = float("nan")
    save_file(weights, str(v.weights_path))
    _drop_checksum(v)


BROKEN = {
    "missing directory": (_break_missing_dir, {}, "does not exist"),
    "missing weights": (_break_missing_weights, {}, f"lacks {WEIGHTS_FILE}"),
    "missing config": (_break_missing_config, {}, f"lacks {CONFIG_FILE}"),
    "config not json": (_break_config_json, {}, "not valid JSON"),
    "garbage weights": (_break_weights_garbage, {}, "corrupt or unreadable"),
    "truncated weights": (_break_weights_truncated, {}, "corrupt or unreadable"),
    "checksum mismatch": (_break_checksum, {}, "checksum"),
    "rank above limit": (lambda v: None, {"config": LoraConfig(r=32, target_modules=["q_proj"])}, "rank 32"),
    "absent target modules": (
        _edit_config(target_modules=["wqkv_proj"]),
        {},
        "do not exist in the base model",
    ),
    "weights for untargeted modules": (_edit_config(target_modules=["q_proj"]), {}, "does not target"),
    "base model mismatch": (_edit_meta(base_model="Llama-3-70B"), {}, "trained for base model"),
    "wrong shapes": (lambda v: None, {"hidden_size": 128}, "shapes do not match"),
    "non-finite weights": (_nan_weights, {}, "non-finite"),
    "dora": (lambda v: None, {"config": LoraConfig(r=4, target_modules=["q_proj"], use_dora=True)}, "DoRA"),
    "modules to save": (
        lambda v: None,
        {"config": LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])},
        "modules_to_save",
    ),
    "not lora": (
        lambda v: None,
        {"config": IA3Config(target_modules=["q_proj"], feedforward_modules=[])},
        "only LoRA",
    ),
}


@pytest.fixture(scope="module")
def serving_one(tiny_model_factory, tmp_path_factory) -> Iterator[tuple[AdapterRegistry, torch.Tensor]]:
    """A registry serving one good adapter (reason), shared by the failure cases, and its output."""
    store = AdapterStore(tmp_path_factory.mktemp("shared") / "adapters")
    registry = AdapterRegistry(tiny_model_factory(), store, capacity_on_device=5, max_rank=16)
    registry.register(Expert.REASON, save_adapter(tiny_model_factory, store, Expert.REASON, seed=1).version)
    with registry.use([Expert.REASON]) as names:
        before = logits(registry, names)
    yield registry, before
    registry.close()


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_adapter_is_rejected_and_others_keep_working(
    case: str, serving_one: tuple[AdapterRegistry, torch.Tensor], tiny_model_factory
) -> None:
    registry, before = serving_one
    store = registry.store
    breaker, kwargs, message = BROKEN[case]
    adapters_before = set(registry.peft_model.peft_config)
    failures_before = registry.stats()["load_failures"]

    bad = save_adapter(tiny_model_factory, store, Expert.EXPLAIN, seed=2, **kwargs)
    store.promote(Expert.EXPLAIN, bad.version)
    breaker(bad)
    with pytest.raises(AdapterError, match=message) as info:
        registry.register(Expert.EXPLAIN)  # the store's serving version
    assert info.value.expert == Expert.EXPLAIN.value
    assert bad.version in info.value.reason

    # nothing of the bad adapter is left, and the good one gives exactly the same output
    assert set(registry.peft_model.peft_config) == adapters_before
    assert registry.serving_versions() == {"reason": "v0"}
    assert registry.stats()["load_failures"] == failures_before + 1
    with registry.use([Expert.REASON]) as names:
        torch.testing.assert_close(logits(registry, names), before, rtol=0, atol=0)
    with pytest.raises(AdapterError, match="no adapter is registered"), registry.use([Expert.EXPLAIN]):
        pass


def test_one_registry_per_model_and_close_restores_it(
    loaded: LoadedModel, store: AdapterStore, tiny_model_factory, base_logits: torch.Tensor
) -> None:
    first = AdapterRegistry(loaded, store, capacity_on_device=2)
    first.register(Expert.REASON, save_adapter(tiny_model_factory, store, Expert.REASON, seed=11).version)
    with pytest.raises(ValueError, match="close"):
        AdapterRegistry(loaded, store, capacity_on_device=2)
    assert first.model is first.peft_model and first.model_generation == 1
    first.close()
    assert first.model is loaded.model and first.model_generation == 2
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    assert "forward" not in loaded.model.__dict__
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(input_ids=PROMPT).logits[0], base_logits, rtol=0, atol=0)
    store.promote(Expert.REASON, "v0")
    second = AdapterRegistry(loaded, store, capacity_on_device=2)
    assert second.register(Expert.REASON).version == "v0"
    second.close()


def test_first_adapter_failing_leaves_the_plain_model(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory, loaded: LoadedModel, base_logits
) -> None:
    bad = save_adapter(tiny_model_factory, store, Expert.TEACH, seed=4, hidden_size=128)
    with pytest.raises(AdapterError, match="shapes do not match"):
        registry.register(Expert.TEACH, bad.version)
    assert registry.peft_model is None and registry.model is loaded.model
    assert not any("lora" in name for name, _ in loaded.model.named_modules())
    assert registry.model_generation == 2  # wrapped for the trial, unwrapped again
    with pytest.raises(AdapterError, match="no adapter is registered"), registry.use([Expert.TEACH]):
        pass
    good = save_adapter(tiny_model_factory, store, Expert.TEACH, seed=5)
    registry.register(Expert.TEACH, good.version)  # the registry recovers
    assert registry.serving_versions() == {"teach": good.version}
    assert registry.model is registry.peft_model and registry.model_generation == 3


# --- hot swap ----------------------------------------------------------------------------------------------


def test_swap_waits_for_holders_then_deletes_old(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory
) -> None:
    old = save_adapter(tiny_model_factory, store, Expert.REASON, seed=7)
    new = save_adapter(tiny_model_factory, store, Expert.REASON, seed=8)
    registry.register(Expert.REASON, old.version)
    with registry.use([Expert.REASON]) as held:
        old_out = logits(registry, held)
        registry.register(Expert.REASON, new.version)
        assert registry.serving_versions() == {"reason": new.version}
        # the running request keeps its adapter until it leaves
        assert held[0] in registry.peft_model.peft_config
        torch.testing.assert_close(logits(registry, held), old_out, rtol=0, atol=0)
        with registry.use([Expert.REASON]) as fresh:
            assert fresh != held
            new_out = logits(registry, fresh)
        assert registry.stats()["adapters"][held[0]]["retired"]
    assert held[0] not in registry.peft_model.peft_config
    assert not torch.allclose(new_out, old_out, atol=1e-3)
    assert registry.stats()["swaps"] == 1 and len(registry.stats()["adapters"]) == 1


def test_swap_to_broken_version_keeps_serving_the_old(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory
) -> None:
    good = save_adapter(tiny_model_factory, store, Expert.TEACH, seed=9)
    bad = save_adapter(
        tiny_model_factory, store, Expert.TEACH, seed=10, config=LoraConfig(r=64, target_modules=["q_proj"])
    )
    registry.register(Expert.TEACH, good.version)
    with registry.use([Expert.TEACH]) as held:
        before = logits(registry, held)
    with pytest.raises(AdapterError, match="rank 64 is above the limit of 16"):
        registry.register(Expert.TEACH, bad.version)
    assert registry.serving_versions() == {"teach": good.version}
    with registry.use([Expert.TEACH]) as held:
        torch.testing.assert_close(logits(registry, held), before, rtol=0, atol=0)
    assert registry.register(Expert.TEACH, good.version) == good  # same version again: a no-op
    assert registry.stats()["loads"] == 1


def test_serving_continues_during_swap(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory, loaded: LoadedModel
) -> None:
    versions = [save_adapter(tiny_model_factory, store, Expert.PREDICT, seed=30 + i) for i in range(3)]
    registry.register(Expert.PREDICT, versions[0].version)
    prompt = PROMPT.repeat(2, 1)
    outputs: list[tuple[str, torch.Tensor]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                with registry.use([Expert.PREDICT, None]) as names:
                    version = registry.stats()["adapters"][names[0]]["version"]
                    tokens = greedy(registry, names, prompt, 6)
                outputs.append((version, tokens))
        except BaseException as exc:
            errors.append(exc)

    def wait_for(count: int) -> None:
        for _ in range(6000):
            if len(outputs) >= count or errors:
                return
            threading.Event().wait(0.01)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        wait_for(2)
        registry.register(Expert.PREDICT, versions[1].version)  # while the thread is generating
        wait_for(4)
        registry.register(Expert.PREDICT, versions[2].version)
        wait_for(6)
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors
    assert not thread.is_alive()

    # each generation used exactly one version: compare with a fresh run of that version afterwards
    reference = {}
    for version in versions:
        registry.register(Expert.PREDICT, version.version)
        with registry.use([Expert.PREDICT, None]) as names:
            reference[version.version] = greedy(registry, names, prompt, 6)
    assert len({tuple(t[0].tolist()) for t in reference.values()}) == 3  # the versions differ
    seen = {version for version, _ in outputs}
    assert versions[-1].version in seen and len(seen) >= 2
    for version, tokens in outputs:
        assert torch.equal(tokens, reference[version])
    assert len(registry.stats()["adapters"]) == 1  # every retired adapter was deleted
