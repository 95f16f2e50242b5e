"""The generator's KV cache and the attention that reads it (CPU decoding).

Two things transformers does slowly on CPU are replaced: the KV cache is preallocated and written in place
(``DynamicCache`` copies the whole cache on every token), and attention for a single query is two matmuls and
a softmax (the CPU SDPA kernel is several times slower for one query). Keys are kept in float32 on CPU so a
decode step need not convert them; many-query attention (prefill) calls SDPA with native GQA.

Layout: every row's tokens start at column 0 of the batch buffers; shorter rows have unused (zero, masked)
columns on the *right*. A decode step writes each row's new key/value at that row's own position. With the
valid keys at the same columns as when the row runs alone, and the padding contributing exact zeros at the
end of each reduction, a row's result does not depend on the other rows (left padding shifts the keys, and
the reductions then round differently in bfloat16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

if TYPE_CHECKING:
    from transformers import PretrainedConfig


class Cursor:
    """Where the current forward pass writes: per-row columns (decode) or append (prefill)."""

    __slots__ = ("positions", "rows", "width")

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None
        """Decode: the column of each row's new token. None: append after the current length."""
        self.rows: torch.Tensor | None = None
        self.width = 0
        """Decode: columns the attention reads (the longest row, new token included)."""


class GrowLayer(DynamicLayer):
    """One layer's keys/values: views into a preallocated buffer that ``update`` writes in place.

    ``DynamicLayer`` concatenates (copies the whole cache) on every token; this writes only the new one.
    """

    def __init__(self, cursor: Cursor, capacity: int = 0, key_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self._cursor, self._capacity, self._key_dtype = cursor, capacity, key_dtype
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._len = 0  # columns in use (prefill: the row's length; decode: the longest row's)

    @property
    def length(self) -> int:
        """Columns in use: ``keys``/``values`` are the buffers' first ``length`` columns."""
        return self._len

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Use ``keys``/``values`` (batch, heads, capacity, dim) as the buffers, ``length`` columns in use."""
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._kbuf, self._vbuf, self._len = keys, values, length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def adopt_rows(self, sources: Sequence[GrowLayer], capacity: int, length: int) -> None:
        """New buffers of ``capacity`` columns holding the rows of ``sources`` in order (each row's columns
        from 0, zeros after its own length), ``length`` columns in use."""
        ref = sources[0].keys
        shape = (sum(s.keys.shape[0] for s in sources), ref.shape[1], capacity, ref.shape[3])
        keys, values = ref.new_zeros(shape), sources[0].values.new_zeros(shape)
        r = 0
        for source in sources:
            n = source.keys.shape[0]
            keys[r : r + n, :, : source.length] = source.keys
            values[r : r + n, :, : source.length] = source.values
            r += n
        self.adopt(keys, values, length)

    def keep_rows(self, index: torch.Tensor, length: int) -> None:
        """Keep only the rows ``index`` (in that order), with their buffers' capacity; ``length`` in use."""
        self.adopt(self._kbuf.index_select(0, index), self._vbuf.index_select(0, index), length)

    def row(self, i: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of row ``i``'s first ``length`` keys and values (copy them before keeping them)."""
        return self._kbuf[i : i + 1, :, :length], self._vbuf[i : i + 1, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cursor = self._cursor
        end = self._len + key_states.shape[2] if cursor.positions is None else cursor.width
        if self._kbuf is None or end > self._kbuf.shape[2]:
            capacity = max(end, self._capacity, self._kbuf.shape[2] * 3 // 2 if self._kbuf is not None else 0)
            shape = (*key_states.shape[:2], capacity, key_states.shape[3])
            key_dtype = self._kbuf.dtype if self._kbuf is not None else self._key_dtype or key_states.dtype
            keys, values = key_states.new_zeros(shape, dtype=key_dtype), value_states.new_zeros(shape)
            if self._kbuf is not None:  # out of room (rare: capacity is planned per job)
                keys[:, :, : self._len], values[:, :, : self._len] = self.keys, self.values
            self.adopt(keys, values, self._len)
        if cursor.positions is None:
            self._kbuf[:, :, self._len : end] = key_states
            self._vbuf[:, :, self._len : end] = value_states
        else:
            self._kbuf[cursor.rows, :, cursor.positions] = key_states[:, :, 0].to(self._kbuf.dtype)
            self._vbuf[cursor.rows, :, cursor.positions] = value_states[:, :, 0]
        self.adopt(self._kbuf, self._vbuf, end)
        return self.keys, self.values

    def crop(self, tokens_to_remove: int) -> None:
        if self._kbuf is not None:
            self.adopt(self._kbuf, self._vbuf, max(0, self._len - abs(tokens_to_remove)))


class GrowCache(Cache):
    """The model-facing cache of a batch (or of one job's prefill).

    Prefill appends after ``length``; before a decode step, ``decode_at`` says where each row's new
    token goes. ``stack``, ``keep_rows`` and ``row_tensors`` let a batch gain, drop and hand out rows.
    """

    layers: list[GrowLayer]

    def __init__(self, n_layers: int, capacity: int = 0, key_dtype: torch.dtype | None = None) -> None:
        self.cursor = Cursor()
        super().__init__(layers=[GrowLayer(self.cursor, capacity, key_dtype) for _ in range(n_layers)])

    @classmethod
    def stack(cls, caches: Sequence[GrowCache], capacity: int, length: int) -> GrowCache:
        """A cache holding every row of ``caches`` in order, with room for ``capacity`` columns."""
        cache = cls(len(caches[0].layers))
        for li, layer in enumerate(cache.layers):
            layer.adopt_rows([source.layers[li] for source in caches], capacity, length)
        return cache

    def keep_rows(self, rows: Sequence[int], length: int) -> None:
        """Drop every row not in ``rows``; ``length`` columns stay in use (the longest row left)."""
        index = torch.tensor(list(rows), device=self.layers[0].keys.device)
        for layer in self.layers:
            layer.keep_rows(index, length)

    def row_tensors(self, i: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, views of row ``i``'s first ``length`` keys and values (copy them to keep them)."""
        return [layer.row(i, length) for layer in self.layers]

    def decode_at(self, positions: Sequence[int], device: torch.device) -> torch.Tensor:
        """Point the next forward pass (one token per row) at column ``positions[i]`` of row i; it reads
        the columns up to the longest row's. Returns the positions as a tensor."""
        cursor = self.cursor
        cursor.positions = torch.tensor(list(positions), device=device)
        cursor.rows = torch.arange(len(positions), device=device)
        cursor.width = max(positions) + 1
        return cursor.positions

    @classmethod
    def from_prefix(
        cls, prefix: DynamicCache, capacity: int, key_dtype: torch.dtype | None = None
    ) -> GrowCache:
        """A one-row cache holding a copy of a session's prefix, with room for ``capacity`` tokens."""
        cache = cls(len(prefix.layers), capacity, key_dtype)
        for layer, source in zip(cache.layers, prefix.layers, strict=True):
            length = source.keys.shape[2]
            shape = (*source.keys.shape[:2], max(capacity, length), source.keys.shape[3])
            keys = source.keys.new_zeros(shape, dtype=key_dtype or source.keys.dtype)
            values = source.values.new_zeros(shape)
            keys[:, :, :length], values[:, :, :length] = source.keys, source.values
            layer.adopt(keys, values, length)
        return cache

    @property
    def length(self) -> int:
        """Columns in use (prefill: the row's tokens; decode: the longest row's)."""
        return self.layers[0].length


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for one query per row in plain matmuls, for many in SDPA (see ``prefill_attention``).

    PyTorch's CPU SDPA kernel is tuned for long queries: for a single one it is several times slower than
    two matmuls and a softmax. Scores and softmax are float32, as inside SDPA.
    """
    unmasked_offset = attention_mask is None and query.shape[2] not in (1, key.shape[2])
    if (
        dropout
        or unmasked_offset
        or kwargs.get("output_attentions")
        or kwargs.get("position_bias") is not None
    ):
        key = key.to(query.dtype)  # the cache may keep keys in float32 (see below)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[2] != 1:
        return prefill_attention(module, query, key, value, attention_mask, scaling), None
    batch, q_heads, _, dim = query.shape
    kv_heads = key.shape[1]
    # Group the query heads that share a key/value head (GQA) instead of repeating the keys.
    q = query.reshape(batch, kv_heads, q_heads // kv_heads, dim).float()
    # Keys are kept in float32 by the generator's cache (converted once when written, not every step).
    scores = torch.matmul(q, key.transpose(-1, -2).float())
    scores.mul_(scaling if scaling is not None else dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask.reshape(batch, 1, 1, -1)
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv_heads, groups, dim)
    return out.reshape(batch, 1, q_heads, dim), None


def prefill_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """SDPA for many queries, with the key/value heads shared natively (``enable_gqa``).

    transformers' SDPA path repeats the keys and values once per query group when a mask is given (a
    follow-up turn's prefill over a reused session always has one): three copies of the whole history per
    layer, ~8% of such a turn. The kernel and its arithmetic are the same either way (identical outputs).
    """
    key = key.to(query.dtype)  # the generator's cache keeps keys in float32 for decoding
    causal = attention_mask is None and getattr(module, "is_causal", True)
    if attention_mask is not None and attention_mask.shape[-1] != key.shape[2]:
        attention_mask = attention_mask[..., : key.shape[2]]
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        scale=scaling,
        is_causal=causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous()


ATTENTION_NAME = "hexcore_decode"
AttentionInterface.register(ATTENTION_NAME, decode_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # masks are built as for SDPA


@contextlib.contextmanager
def attention_implementation(config: PretrainedConfig, name: str | None) -> Iterator[None]:
    """Use attention ``name`` inside the block only: the model object may be shared (tests, training)."""
    previous = config._attn_implementation
    if name is None or previous not in ("sdpa", "eager", None):  # e.g. flash-attention: leave it alone
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
