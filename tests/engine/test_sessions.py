"""SessionStore: prefix reuse, private copies, LRU under a memory budget, TTL, stats, threads; and on the
real model, several conversation turns with reuse give exactly the tokens of recomputing from scratch."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import DynamicCache

from engine.generation import Generator
from engine.model_loader import LoadedModel, load_base_model
from engine.prompts import build_messages, next_history
from engine.sessions import SessionStore, cache_from_tensors, cache_nbytes, common_prefix_length
from hexcore.settings import EngineSettings

LAYERS, HEADS, DIM = 3, 2, 4
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # keys + values, float32


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_cache(n_tokens: int, seed: int = 0) -> DynamicCache:
    """A cache whose value at position p encodes (seed, layer, p), so prefixes are recognisable."""
    pairs = []
    for layer in range(LAYERS):
        base = torch.arange(n_tokens, dtype=torch.float32).view(1, 1, n_tokens, 1)
        keys = (base + 1000 * layer + 100_000 * seed).expand(1, HEADS, n_tokens, DIM).clone()
        pairs.append((keys, -keys))
    return cache_from_tensors(pairs)


def store(budget_tokens: int = 10_000, **kwargs: object) -> SessionStore:
    kwargs.setdefault("ttl_s", 60.0)
    kwargs.setdefault("max_sessions", 100)
    return SessionStore(memory_budget_bytes=budget_tokens * BYTES_PER_TOKEN, **kwargs)  # type: ignore[arg-type]


def test_prepare_returns_a_private_copy_of_the_longest_common_prefix() -> None:
    s = store()
    ids = list(range(10, 30))
    s.store("chan", ids, make_cache(20))
    follow_up = ids[:15] + [999, 998]
    cache, reused = s.prepare("chan", follow_up)
    assert reused == 15 and cache.get_seq_length() == 15
    assert torch.equal(cache.layers[2].keys, make_cache(20).layers[2].keys[:, :, :15])
    # The copy is the caller's: growing or overwriting it leaves the stored session intact.
    cache.layers[0].keys.fill_(-1)
    cache.update(torch.zeros(1, HEADS, 2, DIM), torch.zeros(1, HEADS, 2, DIM), layer_idx=0)
    again, reused_again = s.prepare("chan", ids + [5])
    assert reused_again == 20 and torch.equal(again.layers[0].keys, make_cache(20).layers[0].keys)
    assert s.stats().hits == 2 and s.stats().reused_tokens == 35


def test_at_least_one_token_is_left_to_prefill() -> None:
    s = store()
    ids = [1, 2, 3, 4, 5]
    s.store("chan", ids, make_cache(5))
    cache, reused = s.prepare("chan", ids)  # the very same prompt again
    assert reused == 4 and cache.get_seq_length() == 4
    assert s.prepare("chan", ids[:1]) == (None, 0)  # nothing to reuse once one token must stay


def test_misses_unknown_session_diverging_prompt_and_other_adapter() -> None:
    s = store()
    s.store("chan", [1, 2, 3], make_cache(3), tag="reason")
    assert s.prepare("other", [1, 2, 3, 4], tag="reason") == (None, 0)
    assert s.prepare("chan", [9, 2, 3, 4], tag="reason") == (None, 0)
    assert "chan" in s
    # A cache computed through another adapter is wrong for this one: a miss, and the stale entry goes.
    assert s.prepare("chan", [1, 2, 3, 4], tag="explain") == (None, 0)
    assert "chan" not in s
    assert s.stats().misses == 3 and s.stats().hits == 0


def test_bytes_accounting_matches_tensor_sizes() -> None:
    s = store()
    s.store("a", list(range(7)), make_cache(7))
    s.store("b", list(range(12)), make_cache(12))
    assert s.bytes == s.stats().bytes == 19 * BYTES_PER_TOKEN == cache_nbytes(make_cache(19))
    # Storing compacts: a view into a larger buffer is not kept (it would pin the whole buffer).
    big = make_cache(50)
    view = cache_from_tensors([(layer.keys[..., :5, :], layer.values[..., :5, :]) for layer in big.layers])
    s.store("c", list(range(5)), view)
    assert s.bytes == 24 * BYTES_PER_TOKEN
    kept = s._entries["c"].cache.layers[0].keys
    assert kept.untyped_storage().nbytes() == 5 * HEADS * DIM * 4
    s.store("a", list(range(3)), make_cache(3))  # replacing a session replaces its bytes
    s.end("b")
    assert s.bytes == 8 * BYTES_PER_TOKEN and len(s) == 2


def test_lru_eviction_under_a_small_budget() -> None:
    s = store(budget_tokens=25)
    for name in "abc":
        s.store(name, list(range(10)), make_cache(10))  # 30 tokens > 25: "a" goes
    assert s.session_ids() == ["b", "c"] and s.stats().evictions == 1
    s.prepare("b", list(range(5)))  # touching "b" makes "c" the least recently used
    s.store("d", list(range(10)), make_cache(10))
    assert s.session_ids() == ["b", "d"] and s.stats().evictions == 2
    assert s.bytes <= s.memory_budget_bytes
    assert not s.store("huge", list(range(26)), make_cache(26))  # larger than the whole budget
    assert "huge" not in s and s.session_ids() == ["b", "d"]


def test_session_count_cap() -> None:
    s = store(max_sessions=2)
    for name in "abc":
        s.store(name, [1, 2], make_cache(2))
    assert s.session_ids() == ["b", "c"] and s.stats().evictions == 1


def test_ttl_expiry_with_an_injected_clock() -> None:
    clock = FakeClock()
    s = store(ttl_s=30.0, clock=clock)
    s.store("old", [1, 2, 3], make_cache(3))
    clock.now += 20
    s.store("new", [1, 2, 3], make_cache(3))
    clock.now += 15  # "old" idle 35 s, "new" 15 s
    assert s.prepare("old", [1, 2, 3, 4]) == (None, 0)
    assert s.stats().expirations == 1 and s.session_ids() == ["new"]
    assert s.prepare("new", [1, 2, 3, 4])[1] == 3  # use refreshes it
    clock.now += 29
    assert s.expire() == 0
    clock.now += 2
    assert s.expire() == 1 and len(s) == 0 and s.bytes == 0


def test_end_drop_tag_and_clear() -> None:
    s = store()
    s.store("a", [1, 2], make_cache(2), tag="reason")
    s.store("b", [1, 2], make_cache(2), tag="explain")
    s.store("c", [1, 2], make_cache(2), tag="reason")
    assert s.drop_tag("reason") == 2 and s.session_ids() == ["b"]
    assert s.end("b") and not s.end("b")
    s.store("d", [1], make_cache(1))
    s.clear()
    assert len(s) == 0 and s.bytes == 0


def test_store_checks_the_cache_matches_the_ids() -> None:
    with pytest.raises(ValueError, match="positions"):
        store().store("a", [1, 2, 3], make_cache(2))
    with pytest.raises(ValueError):
        SessionStore(memory_budget_bytes=0, ttl_s=1, max_sessions=1)


def test_from_settings() -> None:
    s = SessionStore.from_settings(EngineSettings(session_memory_mb=2, session_ttl_s=5, max_sessions=3))
    assert (s.memory_budget_bytes, s.ttl_s, s.max_sessions) == (2 * 1024 * 1024, 5.0, 3)


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2]) == 2


def test_concurrent_use_keeps_the_accounting_consistent() -> None:
    s = store(budget_tokens=60, max_sessions=5)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(200):
                sid = f"s{(k * 7 + i) % 9}"
                n = 3 + (i % 8)
                s.store(sid, list(range(n)), make_cache(n, seed=k))
                cache, reused = s.prepare(sid, list(range(n)) + [99])
                if cache is not None:
                    assert cache.get_seq_length() == reused
                if i % 13 == 0:
                    s.end(sid)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = s.stats()
    assert stats.count <= 5 and stats.bytes <= s.memory_budget_bytes
    held = 0
    for sid in s.session_ids():
        cache, reused = s.prepare(sid, list(range(20)))
        held += reused * BYTES_PER_TOKEN  # every stored entry holds ids 0..n-1, n <= 10 < 20
    assert held == s.bytes


# ---- the real model: several turns, reuse == recompute ----


@pytest.fixture(scope="module")
def fp32_model() -> LoadedModel:
    """A float32 copy of the real model: exact equality of two computation orders needs float32 (in
    bfloat16, prefilling a history in one pass or a token at a time rounds differently)."""
    return load_base_model(EngineSettings(model="embedded", dtype="float32"))


TURNS = [
    (
        "What does trample do?",
        "702.19b If an attacking creature with trample is blocked, excess damage goes to the player.",
    ),
    (
        "And if it also has deathtouch?",
        "702.2c Any nonzero amount of damage from a source with deathtouch is lethal damage.",
    ),
    (
        "What if the blocker is removed?",
        "509.1h A trampler whose blocker is removed assigns all its damage to the player.",
    ),
    ("Summarize that in one sentence.", ""),
]


@pytest.mark.slow
def test_follow_up_turns_with_reuse_equal_recomputing_from_scratch(fp32_model: LoadedModel) -> None:
    sessions = SessionStore(1 << 30, ttl_s=600, max_sessions=4)
    with_session, from_scratch = Generator(fp32_model, sessions=sessions), Generator(fp32_model)
    history: list[dict[str, str]] = []
    reused = []
    for question, context in TURNS:
        messages = build_messages("reason", question, context, history)
        text, ids, stats = with_session.generate(messages, max_new_tokens=40, session_id="thread")
        assert from_scratch.generate(messages, max_new_tokens=40)[1] == ids
        reused.append((stats.reused_tokens, stats.prompt_tokens))
        history = next_history(messages, text)
    assert reused[0][0] == 0
    for (_, previous_prompt), (now_reused, now_prompt) in zip(reused, reused[1:], strict=False):
        assert previous_prompt < now_reused < now_prompt  # the whole previous turn came from the cache
    stats = sessions.stats()
    assert stats.hits == len(TURNS) - 1 and stats.count == 1 and stats.bytes > 0
