"""Shared by the adapter tests: a tiny 'trained' adapter in a store, logits and names through a registry.

Their fixtures (``loaded``, ``store``, ``registry``, ``base_logits``) are in tests/engine/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model

from engine.adapter_store import AdapterStore, AdapterVersion
from engine.adapters import AdapterRegistry
from engine.api import Expert
from engine.model_loader import LoadedModel

PROMPT = torch.tensor([[1, 504, 3000, 77, 12, 9000, 41, 5]])


def save_adapter(
    factory: Callable[..., LoadedModel],
    store: AdapterStore,
    expert: Expert,
    seed: int,
    *,
    config: object | None = None,
    base_model: str | None = "tiny-random-llama",
    **model_kwargs: object,
) -> AdapterVersion:
    """A 'trained' adapter (random A and B, so it changes outputs), stored as a new version."""
    torch.manual_seed(seed)
    config = config or LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(factory(**model_kwargs).model, config)
    meta = {"base_model": base_model} if base_model else {}
    return store.save_new(expert, peft_model, meta)


def logits(registry: AdapterRegistry, names: list[str], ids: torch.Tensor = PROMPT) -> torch.Tensor:
    """Logits of ``ids`` once per adapter name (a mixed batch, one row per name)."""
    batch = ids.repeat(len(names), 1)
    with torch.inference_mode():
        return registry.model(input_ids=batch, adapter_names=list(names)).logits


def greedy(
    registry: AdapterRegistry, names: list[str], prompt: torch.Tensor, max_new_tokens: int
) -> torch.Tensor:
    """Greedy ``generate`` of ``prompt`` (one row per adapter name) on the registry's model."""
    with torch.inference_mode():
        return registry.model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            adapter_names=names,
            pad_token_id=registry.loaded.tokenizer.pad_token_id,
        )


def adapter_names(registry: AdapterRegistry) -> dict[Expert, str]:
    """Expert -> internal adapter name of the loaded, not retired, adapters (read from ``stats``)."""
    return {
        Expert(info["expert"]): name
        for name, info in registry.stats()["adapters"].items()
        if not info["retired"]
    }


def adapter_devices(registry: AdapterRegistry, name: str) -> set[torch.device]:
    """Devices holding the tensors of the internal adapter ``name``."""
    assert registry.peft_model is not None
    return {p.device for key, p in registry.peft_model.named_parameters() if name in key.split(".")}
