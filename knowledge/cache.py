"""A thread-safe LRU cache whose entries also expire after a TTL, with hit/miss/eviction/expiry counters.

Retrieval results are cached by normalised query: the same question asked in several channels (or retried)
costs one dictionary lookup. The storage, LRU order and expiry are ``cachetools.TTLCache`` (its ``timer``
is the injectable clock); this module adds the lock and the hit/miss/eviction/expiry counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import cachetools

V = TypeVar("V")

_MISSING = object()


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    """Entries dropped because the cache was full (least recently used first)."""
    expirations: int
    """Entries dropped because they outlived the TTL."""
    size: int
    capacity: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "hit_rate": round(self.hit_rate, 4)}


class _CountingTTLCache(cachetools.TTLCache):
    """cachetools' TTL + LRU cache, counting what it drops: ``popitem`` evicts when full, ``expire`` purges
    (cachetools calls it before every insert, so a full cache drops expired entries before live ones)."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize, ttl, timer=timer)
        self.evictions = self.expirations = 0

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self.evictions += 1
        return item

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        expired = list(super().expire(time))
        self.expirations += len(expired)
        return expired


class TTLCache(Generic[V]):
    """LRU cache of at most ``capacity`` entries, each valid for ``ttl_s`` seconds after it was set.

    ``capacity=0`` disables caching (every ``get`` is a miss, ``set`` stores nothing), which is what
    ``HEXCORE_KNOWLEDGE_CACHE_SIZE=0`` means. ``clock`` is injectable so tests can move time by hand.
    """

    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0")
        if ttl_s <= 0:
            raise ValueError("cache ttl must be > 0")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._data = _CountingTTLCache(capacity, ttl_s, timer=clock)
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            self._data.expire()  # an expired entry is dropped (and counted) rather than left to a later set
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self._misses += 1
                return default
            self._hits += 1
            return value

    def set(self, key: Hashable, value: V) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._data[key] = value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        """Drop every entry (e.g. after the index was rebuilt); counters are kept."""
        with self._lock:
            evictions, expirations = self._data.evictions, self._data.expirations
            self._data.clear()  # pops every entry: neither evictions nor expirations
            self._data.evictions, self._data.expirations = evictions, expirations

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._data.evictions,
                expirations=self._data.expirations,
                size=len(self._data),
                capacity=self.capacity,
            )
