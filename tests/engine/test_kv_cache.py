"""GrowCache: in-place growth, the decode cursor, rows joining and leaving, and what attention reads."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from engine.kv_cache import ATTENTION_NAME, GrowCache, attention_implementation, decode_attention
from engine.model_loader import LoadedModel
from engine.sessions import cache_from_tensors

HEADS, DIM = 2, 4


def states(rows: int, n: int, start: float = 0.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(rows, heads, n, dim) keys whose value at column c is start + c (so columns are recognisable)."""
    column = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1) + start
    return column.expand(rows, HEADS, n, DIM).to(dtype).clone()


def one_row(length: int, start: float = 0.0, capacity: int = 0) -> GrowCache:
    cache = GrowCache(1, capacity)
    cache.layers[0].update(states(1, length, start), -states(1, length, start))
    return cache


def test_prefill_appends_in_place_within_capacity() -> None:
    cache = GrowCache(2, capacity=8)
    layer = cache.layers[1]
    keys, values = layer.update(states(1, 3), -states(1, 3))
    assert cache.layers[1].length == 3 and keys.shape == (1, HEADS, 3, DIM) and torch.equal(values, -keys)
    storage = keys.untyped_storage().data_ptr()
    keys, _ = layer.update(states(1, 2, start=3), -states(1, 2, start=3))
    assert layer.length == 5 and torch.equal(keys, states(1, 5))
    assert keys.untyped_storage().data_ptr() == storage  # written into the same buffer, not copied
    assert cache.layers[0].length == 0  # each layer is written by its own attention module


def test_out_of_room_grows_and_keeps_what_was_there() -> None:
    layer = GrowCache(1, capacity=4).layers[0]
    layer.update(states(1, 3), -states(1, 3))
    keys, values = layer.update(states(1, 3, start=3), -states(1, 3, start=3))
    assert layer.length == 6 and torch.equal(keys, states(1, 6)) and torch.equal(values, -states(1, 6))


def test_keys_can_be_kept_in_float32_for_a_bfloat16_model() -> None:
    cache = GrowCache(1, capacity=4, key_dtype=torch.float32)
    keys, values = cache.layers[0].update(
        states(1, 2, dtype=torch.bfloat16), states(1, 2, dtype=torch.bfloat16)
    )
    assert keys.dtype == torch.float32 and values.dtype == torch.bfloat16


def test_from_prefix_copies_a_session_with_room_to_grow() -> None:
    prefix = cache_from_tensors([(states(1, 4), -states(1, 4))])
    cache = GrowCache.from_prefix(prefix, capacity=10)
    assert cache.length == 4 and cache.layers[0].keys.untyped_storage().size() >= 10 * HEADS * DIM * 4
    cache.layers[0].keys.fill_(7)
    assert torch.equal(prefix.layers[0].keys, states(1, 4))  # the session itself is untouched


def test_stack_decode_cursor_and_keep_rows() -> None:
    """Rows start at column 0; a decode step writes each row's token at that row's own column."""
    short, long = one_row(3), one_row(5, start=100)
    cache = GrowCache.stack([short, long], capacity=8, length=5)
    layer = cache.layers[0]
    assert cache.length == 5 and layer.keys.shape == (2, HEADS, 5, DIM)
    assert torch.equal(layer.keys[0, :, :3], states(1, 3)[0]) and not layer.keys[0, :, 3:].any()
    assert torch.equal(layer.keys[1], states(1, 5, start=100)[0])

    positions = cache.decode_at([3, 5], torch.device("cpu"))
    assert positions.tolist() == [3, 5] and cache.cursor.width == 6
    new = torch.stack([torch.full((HEADS, 1, DIM), 50.0), torch.full((HEADS, 1, DIM), 500.0)])
    keys, _ = layer.update(new, -new)
    assert keys.shape[2] == 6  # reads up to the longest row, its new token included
    assert torch.equal(keys[0, :, 3], torch.full((HEADS, DIM), 50.0)) and not keys[0, :, 4:].any()
    assert torch.equal(keys[1, :, 5], torch.full((HEADS, DIM), 500.0))

    ((row_keys, row_values),) = cache.row_tensors(1, 6)
    assert row_keys.shape == (1, HEADS, 6, DIM) and torch.equal(row_values, -row_keys)
    cache.keep_rows([1], length=6)
    assert layer.keys.shape == (1, HEADS, 6, DIM) and torch.equal(layer.keys, row_keys)
    assert layer.row(0, 6)[0].untyped_storage().size() >= 8 * HEADS * DIM * 4  # capacity is kept


def test_decode_attention_on_padded_rows_equals_each_row_alone() -> None:
    """The right padding is masked and adds exact zeros: a row's output does not depend on the others."""
    torch.manual_seed(0)
    lengths, q_heads = [3, 7], 4
    query = torch.randn(2, q_heads, 1, DIM)
    keys = torch.zeros(2, HEADS, 7, DIM)
    values = torch.zeros(2, HEADS, 7, DIM)
    for i, n in enumerate(lengths):
        keys[i, :, :n], values[i, :, :n] = torch.randn(HEADS, n, DIM), torch.randn(HEADS, n, DIM)
    mask = (torch.arange(7).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).reshape(2, 1, 1, 7)
    module = torch.nn.Module()
    together, _ = decode_attention(module, query, keys, values, mask)
    for i, n in enumerate(lengths):
        alone, _ = decode_attention(
            module, query[i : i + 1], keys[i : i + 1, :, :n], values[i : i + 1, :, :n], None
        )
        assert torch.equal(together[i : i + 1], alone)


def test_a_tiny_model_through_grow_cache_equals_a_dynamic_cache(tiny_model: LoadedModel) -> None:
    """Prefill (appending) and decode steps (one row alone, then two rows of different lengths with the
    cursor) give the logits transformers gives with its own cache."""
    model = tiny_model.model
    layers = model.config.num_hidden_layers
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 1000, (1, n), generator=gen) for n in (5, 8)]
    nexts = [torch.tensor([[11]]), torch.tensor([[12]])]
    with torch.inference_mode():
        reference = []
        for prompt, token in zip(prompts, nexts, strict=True):
            dynamic = DynamicCache()
            first = model(input_ids=prompt, past_key_values=dynamic, use_cache=True).logits
            step = model(input_ids=token, past_key_values=dynamic, use_cache=True).logits
            reference.append((first, step))
        with attention_implementation(model.config, ATTENTION_NAME):
            caches = [GrowCache(layers, capacity=16) for _ in prompts]
            for (first, step), prompt, token, cache in zip(reference, prompts, nexts, caches, strict=True):
                torch.testing.assert_close(model(input_ids=prompt, past_key_values=cache).logits, first)
                alone = GrowCache.from_prefix(cache_from_tensors(cache.row_tensors(0, cache.length)), 16)
                torch.testing.assert_close(model(input_ids=token, past_key_values=alone).logits, step)
            batch = GrowCache.stack(caches, capacity=16, length=8)
            positions = batch.decode_at([5, 8], torch.device("cpu"))
            mask = (torch.arange(9).unsqueeze(0) <= positions.unsqueeze(1)).reshape(2, 1, 1, 9)
            logits = model(
                input_ids=torch.cat(nexts),
                position_ids=positions.unsqueeze(1),
                attention_mask=mask,
                past_key_values=batch,
            ).logits
    for i, (_, step) in enumerate(reference):
        torch.testing.assert_close(logits[i : i + 1], step)


# ---- the generator's attention: many queries (prefill) ----


class _Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 3


@pytest.mark.parametrize("past", [0, 37])
def test_prefill_attention_equals_transformers_sdpa(past: int) -> None:
    """Native GQA in SDPA gives exactly what transformers' repeat-the-keys path gives: with a mask over a
    reused prefix (a follow-up turn) and without one (a fresh prompt, causal)."""
    torch.manual_seed(0)
    new, heads, kv_heads, dim = 11, 9, 3, 16
    query = torch.randn(1, heads, new, dim, dtype=torch.bfloat16)
    # The cache keeps keys in float32 and hands out views of a longer buffer.
    keys = torch.randn(1, kv_heads, past + new + 5, dim)[:, :, : past + new]
    values = torch.randn(1, kv_heads, past + new + 5, dim, dtype=torch.bfloat16)[:, :, : past + new]
    mask = None
    if past:
        mask = torch.ones(new, past + new, dtype=torch.bool).tril(past)[None, None]
    module = _Attention()
    ours, _ = decode_attention(module, query, keys, values, mask, scaling=dim**-0.5)
    theirs, _ = sdpa_attention_forward(module, query, keys.to(query.dtype), values, mask, scaling=dim**-0.5)
    assert ours.shape == (1, new, heads, dim)
    assert torch.equal(ours, theirs)
    if past:  # the mask matters: without it the new tokens would see each other's future
        unmasked = sdpa_attention_forward(
            module, query, keys.to(query.dtype), values, torch.ones_like(mask), scaling=dim**-0.5
        )[0]
        assert not torch.equal(ours, unmasked)
