"""A thread-safe LRU cache whose entries also expire after a TTL, with hit/miss/eviction/expiry counters.

Retrieval results are cached by normalised query: the same question asked in several channels (or retried)
costs one dictionary lookup. A small ``OrderedDict`` implementation rather than ``cachetools`` because we
need the counters and an injectable clock for tests, and wrapping a ``TTLCache`` for both is no shorter.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

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
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = self._expirations = 0

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            entry = self._data.get(key, _MISSING)
            if entry is _MISSING:
                self._misses += 1
                return default
            expires_at, value = entry  # type: ignore[misc]
            if self._clock() >= expires_at:
                del self._data[key]
                self._expirations += 1
                self._misses += 1
                return default
            self._data.move_to_end(key)
            self._hits += 1
            return value

    def set(self, key: Hashable, value: V) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            now = self._clock()
            if key in self._data:
                self._data.move_to_end(key)
            self._data[key] = (now + self.ttl_s, value)
            if len(self._data) > self.capacity:
                self._purge_expired(now)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
                self._evictions += 1

    def _purge_expired(self, now: float) -> None:
        """Drop expired entries first, so a full cache evicts dead entries before live ones."""
        for key in [k for k, (expires_at, _) in self._data.items() if now >= expires_at]:
            del self._data[key]
            self._expirations += 1

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            entry = self._data.get(key)
            return entry is not None and self._clock() < entry[0]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        """Drop every entry (e.g. after the index was rebuilt); counters are kept."""
        with self._lock:
            self._data.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                expirations=self._expirations,
                size=len(self._data),
                capacity=self.capacity,
            )
