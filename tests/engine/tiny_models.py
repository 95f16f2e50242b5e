"""A tiny random Llama for fast tests (the ``tiny_model_factory`` fixture in tests/engine/conftest.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.model_loader import LoadedModel, greedy_generation_config

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def build_tiny_llama(
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
) -> LoadedModel:
    """A random ``LlamaForCausalLM`` with SmolLM2's vocabulary: same API as the real model, ~3 M params.

    Deterministic for a given seed, and does not disturb the global RNG. Its output is noise; use it to test
    plumbing (adapters, batching, caches), not wording.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    model.generation_config = greedy_generation_config(model.generation_config, tokenizer)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        dtype=dtype,
        name="tiny-random-llama",
        source=f"random:seed={seed}",
    )
