"""Per-conversation KV caches, so a follow-up turn prefills only its new tokens.

A session (one per Discord channel or thread id) remembers the token ids the model has already seen
(prompt + generated answer) and a ``DynamicCache`` holding their keys and values. The next turn's prompt
repeats that conversation verbatim and appends the new question, so its longest common token prefix with
the stored ids can be taken from the cache instead of being recomputed: time to first token falls from
"prefill the whole history" to "prefill the new question".

The stored caches are never written to: :meth:`SessionStore.prepare` returns an independent copy of the
reusable prefix, which the caller may extend in place, and :meth:`SessionStore.store` keeps a compact
copy of what it is given. So one session can serve overlapping requests and a failed generation never
corrupts a session.

A KV cache computed through one LoRA adapter is wrong for another (the adapters change the key and
value projections), so every entry carries a ``tag`` (the adapter name) and only a request with the
same tag reuses it. Unbounded per-channel state is a failure mode: the store is capped by a memory
budget and a session count (least recently used first out) and forgets sessions idle for ``ttl_s``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from hexcore.settings import EngineSettings


@dataclass(frozen=True, slots=True)
class SessionStats:
    hits: int
    """``prepare`` calls that reused at least one cached token."""
    misses: int
    reused_tokens: int
    """Prefill tokens saved, summed over hits."""
    evictions: int
    """Sessions dropped to stay within the memory budget or the session count."""
    expirations: int
    """Sessions dropped after ``ttl_s`` without use."""
    bytes: int
    """Memory held by the cached key/value tensors."""
    count: int
    budget_bytes: int


@dataclass(slots=True)
class _Entry:
    ids: tuple[int, ...]
    cache: DynamicCache
    tag: str | None
    nbytes: int
    last_used: float


def cache_nbytes(cache: DynamicCache) -> int:
    """Bytes held by a cache's key and value tensors."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def cache_length(cache: DynamicCache) -> int:
    return cache.get_seq_length() if cache.layers else 0


def copy_cache_prefix(cache: DynamicCache, length: int) -> DynamicCache:
    """A new cache holding a compact, independent copy of the first ``length`` positions of ``cache``."""
    layers = []
    for layer in cache.layers:
        if not layer.is_initialized:
            raise ValueError("cannot copy a cache with uninitialised layers")
        # clone(): the copy must own compact storage, never a view that pins (or aliases) a larger buffer.
        layers.append((layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone()))
    return cache_from_tensors(layers)


def cache_from_tensors(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A ``DynamicCache`` whose layers hold the given (keys, values) tensors themselves, not copies.

    (``DynamicCache(ddp_cache_data=...)`` would copy every tensor once more through ``update``.)
    """
    cache = DynamicCache()
    for keys, values in pairs:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def _is_reusable(cache: DynamicCache) -> bool:
    """Only plain full-attention layers can be cropped to an arbitrary prefix (no sliding windows)."""
    return bool(cache.layers) and all(
        type(layer) is DynamicLayer or (isinstance(layer, DynamicLayer) and not layer.is_sliding)
        for layer in cache.layers
    )


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class SessionStore:
    """Thread-safe LRU of conversation KV caches under a memory budget, with idle expiry.

    ``prepare`` before a turn (returns a private cache to extend, or None), ``store`` after it.
    """

    def __init__(
        self,
        memory_budget_bytes: int,
        ttl_s: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if memory_budget_bytes <= 0 or ttl_s <= 0 or max_sessions < 1:
            raise ValueError("memory_budget_bytes and ttl_s must be positive, max_sessions at least 1")
        self.memory_budget_bytes = int(memory_budget_bytes)
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently used first. A plain OrderedDict, not cachetools: two limits at once (bytes and
        # count), an idle TTL renewed by every use and counted evictions would each need a subclass there.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._reused = self._evictions = self._expirations = 0

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> SessionStore:
        return cls(
            memory_budget_bytes=int(settings.session_memory_mb * 1024 * 1024),
            ttl_s=settings.session_ttl_s,
            max_sessions=settings.max_sessions,
        )

    # ---- the two calls around a turn ----

    def prepare(
        self, session_id: str, new_input_ids: Sequence[int], tag: str | None = None
    ) -> tuple[DynamicCache | None, int]:
        """``(cache, n_reused)``: a private copy of the cached longest common prefix, or ``(None, 0)``.

        At least one input token is always left to prefill (the model needs the last token's logits),
        so ``n_reused <= len(new_input_ids) - 1``. The returned cache holds exactly ``n_reused``
        positions; the caller feeds ``new_input_ids[n_reused:]``. A tag mismatch (different adapter)
        is a miss and drops the stale entry.
        """
        with self._lock:
            self._expire_locked()
            entry = self._entries.get(session_id)
            if entry is not None and entry.tag != tag:
                self._drop_locked(session_id)
                entry = None
            n = 0
            if entry is not None:
                n = min(common_prefix_length(entry.ids, new_input_ids), len(new_input_ids) - 1)
                entry.last_used = self._clock()
                self._entries.move_to_end(session_id)
            if n <= 0:
                self._misses += 1
                return None, 0
            self._hits += 1
            self._reused += n
            cache = entry.cache
        # Outside the lock: stored caches are immutable, and copying a long history takes milliseconds.
        return copy_cache_prefix(cache, n), n

    def store(self, session_id: str, ids: Sequence[int], cache: DynamicCache, tag: str | None = None) -> bool:
        """Remember ``cache`` (covering exactly ``ids``) for ``session_id``, replacing what was there.

        The store keeps its own compact copy, so the caller may keep using ``cache``. Returns False
        (and forgets the session) when the cache alone exceeds the memory budget or cannot be reused.
        """
        length = cache_length(cache)
        if length != len(ids):
            raise ValueError(f"cache holds {length} positions but {len(ids)} ids were given")
        if not _is_reusable(cache) or length == 0:
            self.end(session_id)
            return False
        compact = copy_cache_prefix(cache, length)
        nbytes = cache_nbytes(compact)
        with self._lock:
            self._drop_locked(session_id)
            if nbytes > self.memory_budget_bytes:
                return False
            self._entries[session_id] = _Entry(tuple(ids), compact, tag, nbytes, self._clock())
            self._bytes += nbytes
            self._evict_locked()
        return True

    # ---- housekeeping ----

    def end(self, session_id: str) -> bool:
        """Forget a session (the user ended the conversation or the thread closed)."""
        with self._lock:
            return self._drop_locked(session_id)

    def drop_tag(self, tag: str | None) -> int:
        """Forget every session computed with ``tag``: call it when that adapter's weights change."""
        with self._lock:
            stale = [sid for sid, entry in self._entries.items() if entry.tag == tag]
            for sid in stale:
                self._drop_locked(sid)
            return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def expire(self) -> int:
        """Drop sessions idle for longer than ``ttl_s`` (also done on every ``prepare``); returns how many."""
        with self._lock:
            return self._expire_locked()

    def stats(self) -> SessionStats:
        with self._lock:
            return SessionStats(
                hits=self._hits,
                misses=self._misses,
                reused_tokens=self._reused,
                evictions=self._evictions,
                expirations=self._expirations,
                bytes=self._bytes,
                count=len(self._entries),
                budget_bytes=self.memory_budget_bytes,
            )

    def session_ids(self) -> list[str]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    # ---- internals (lock held) ----

    def _drop_locked(self, session_id: str) -> bool:
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return False
        self._bytes -= entry.nbytes
        return True

    def _evict_locked(self) -> None:
        while self._entries and (
            self._bytes > self.memory_budget_bytes or len(self._entries) > self.max_sessions
        ):
            oldest = next(iter(self._entries))
            self._drop_locked(oldest)
            self._evictions += 1

    def _expire_locked(self) -> int:
        deadline = self._clock() - self.ttl_s
        stale = [sid for sid, entry in self._entries.items() if entry.last_used < deadline]
        for sid in stale:
            self._drop_locked(sid)
        self._expirations += len(stale)
        return len(stale)
