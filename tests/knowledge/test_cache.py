"""TTL + LRU cache: eviction order, expiry with an injected clock, counters, thread safety."""

from __future__ import annotations

import threading

import pytest

from knowledge.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_get_set_and_hit_rate() -> None:
    cache: TTLCache[str] = TTLCache(4, 60)
    assert cache.get("a") is None
    cache.set("a", "A")
    assert cache.get("a") == "A"
    assert cache.get("a") == "A"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 1, 1)
    assert stats.hit_rate == pytest.approx(2 / 3)
    assert stats.to_json()["hit_rate"] == pytest.approx(0.6667)


def test_least_recently_used_is_evicted_first() -> None:
    cache: TTLCache[int] = TTLCache(2, 60)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.set("c", 3)
    assert "b" not in cache
    assert cache.get("a") == 1 and cache.get("c") == 3
    assert cache.stats().evictions == 1
    assert len(cache) == 2


def test_entries_expire_after_ttl() -> None:
    clock = Clock()
    cache: TTLCache[int] = TTLCache(8, 10, clock=clock)
    cache.set("a", 1)
    clock.now = 9.9
    assert cache.get("a") == 1
    clock.now = 10.0
    assert cache.get("a") is None
    stats = cache.stats()
    assert stats.expirations == 1 and stats.size == 0 and stats.misses == 1


def test_setting_again_refreshes_ttl() -> None:
    clock = Clock()
    cache: TTLCache[int] = TTLCache(8, 10, clock=clock)
    cache.set("a", 1)
    clock.now = 8
    cache.set("a", 2)
    clock.now = 15
    assert cache.get("a") == 2


def test_full_cache_drops_expired_entries_before_live_ones() -> None:
    clock = Clock()
    cache: TTLCache[int] = TTLCache(2, 10, clock=clock)
    cache.set("old", 1)
    clock.now = 5
    cache.set("live", 2)
    clock.now = 11  # "old" expired, "live" has not
    cache.set("new", 3)
    assert cache.get("live") == 2 and cache.get("new") == 3
    stats = cache.stats()
    assert stats.expirations == 1 and stats.evictions == 0


def test_capacity_zero_disables_caching() -> None:
    cache: TTLCache[int] = TTLCache(0, 10)
    cache.set("a", 1)
    assert cache.get("a") is None and len(cache) == 0


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ValueError):
        TTLCache(-1, 10)
    with pytest.raises(ValueError):
        TTLCache(1, 0)


def test_concurrent_use_keeps_counters_and_capacity_consistent() -> None:
    cache: TTLCache[int] = TTLCache(50, 60)
    per_thread = 2000
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(per_thread):
                key = (seed * 7 + i) % 120
                if cache.get(key) is None:
                    cache.set(key, key)
                assert len(cache) <= 50
        except BaseException as exc:  # surfaced below: an assert in a thread would vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * per_thread
    assert stats.size <= 50 and stats.evictions > 0
