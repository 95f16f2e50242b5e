"""The registry's device LRU (engine.adapter_residency): offload, bring back, in-use adapters stay, bytes."""

from __future__ import annotations

import pytest
import torch

from engine.adapter_store import AdapterStore, loaded_tensor_bytes
from engine.adapters import AdapterRegistry
from engine.api import Expert
from engine.model_loader import LoadedModel
from tests.engine.adapter_helpers import PROMPT, adapter_devices, adapter_names, logits, save_adapter


def prefetch(registry: AdapterRegistry, expert: Expert) -> None:
    """Bring the expert's adapter onto the device as the most recently used (a request with nothing to run)."""
    with registry.use([expert]):
        pass


def test_lru_offloads_least_recently_used_idle_adapters(
    loaded: LoadedModel, store: AdapterStore, tiny_model_factory
) -> None:
    registry = AdapterRegistry(loaded, store, capacity_on_device=2)
    try:
        experts = [Expert.REASON, Expert.EXPLAIN, Expert.TEACH, Expert.PREDICT]
        refs = {}
        for i, expert in enumerate(experts):
            registry.register(expert, save_adapter(tiny_model_factory, store, expert, seed=20 + i).version)
        names = adapter_names(registry)
        stats = registry.stats()
        assert stats["resident"] == [names[Expert.TEACH], names[Expert.PREDICT]]  # the two newest
        assert set(stats["offloaded"]) == {names[Expert.REASON], names[Expert.EXPLAIN]}
        assert stats["evictions"] == 2

        with registry.use([Expert.REASON]) as held:  # miss: brought back, evicts the LRU (teach)
            refs[Expert.REASON] = logits(registry, held)
        stats = registry.stats()
        assert stats["resident"] == [names[Expert.PREDICT], names[Expert.REASON]]
        assert stats["misses"] == 1 and stats["evictions"] == 3

        prefetch(registry, Expert.PREDICT)  # a hit that refreshes predict: reason becomes the LRU
        prefetch(registry, Expert.EXPLAIN)
        assert registry.stats()["resident"] == [names[Expert.PREDICT], names[Expert.EXPLAIN]]
        assert registry.stats()["hits"] == 1

        # adapters in use are never offloaded: capacity is exceeded for the request instead
        with registry.use(experts) as held:
            assert set(registry.stats()["resident"]) == set(held)
            mixed = logits(registry, held)
        torch.testing.assert_close(mixed[0], refs[Expert.REASON][0], rtol=1e-4, atol=1e-4)
        # an adapter offloaded and brought back gives the same output
        prefetch(registry, Expert.TEACH)
        prefetch(registry, Expert.PREDICT)
        assert names[Expert.REASON] in registry.stats()["offloaded"]
        with registry.use([Expert.REASON]) as held:
            torch.testing.assert_close(logits(registry, held), refs[Expert.REASON], rtol=0, atol=0)
        assert adapter_devices(registry, names[Expert.REASON]) == {torch.device("cpu")}
    finally:
        registry.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_moves_tensors_between_gpu_and_cpu(tiny_model_factory, store: AdapterStore) -> None:
    loaded = tiny_model_factory()
    loaded.model.to("cuda")
    loaded.device = torch.device("cuda")
    registry = AdapterRegistry(loaded, store, capacity_on_device=1)
    try:
        registry.register(
            Expert.REASON, save_adapter(tiny_model_factory, store, Expert.REASON, seed=1).version
        )
        with registry.use([Expert.REASON]) as held:
            ref = logits(registry, held, PROMPT.cuda())
        registry.register(Expert.TEACH, save_adapter(tiny_model_factory, store, Expert.TEACH, seed=2).version)
        reason = adapter_names(registry)[Expert.REASON]
        assert {d.type for d in adapter_devices(registry, reason)} == {"cpu"}
        with registry.use([Expert.REASON]) as held:
            assert {d.type for d in adapter_devices(registry, reason)} == {"cuda"}
            torch.testing.assert_close(logits(registry, held, PROMPT.cuda()), ref, rtol=0, atol=0)
    finally:
        registry.close()


def test_loaded_bytes_match_the_estimate_from_the_file(
    registry: AdapterRegistry, store: AdapterStore, tiny_model_factory
):
    version = save_adapter(tiny_model_factory, store, Expert.PREDICT, seed=6)
    store.promote(Expert.PREDICT, version.version)
    from_file = loaded_tensor_bytes(version)
    registry.register(Expert.PREDICT)
    loaded_bytes = registry.stats()["adapters"][adapter_names(registry)[Expert.PREDICT]]["bytes"]
    # tiny llama: 2 layers x (q: 4x64 + 64x4, v: 4x64 + 32x4) float32 params
    assert loaded_bytes == from_file == 2 * (512 + 384) * 4
    assert registry.stats()["bytes_on_device"] == from_file
