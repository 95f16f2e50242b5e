"""The embedding cache with the real embedded model (a handful of short texts, so it stays quick)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from knowledge.embedding_cache import CachingEmbedder
from knowledge.embeddings import Embedder, get_embedder

TEXTS = [
    "Trample: excess combat damage goes to the player.",
    "Flying: can't be blocked except by fliers.",
    "Scry 1.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder()


def test_embeds_only_new_texts_and_matches_the_model(embedder: Embedder, tmp_path: Path):
    cache = CachingEmbedder(embedder, tmp_path)
    first = cache.encode(TEXTS[:2])
    assert (cache.encoded, cache.reused) == (2, 0)
    both = cache.encode([TEXTS[1], TEXTS[2], TEXTS[1]])
    assert (cache.encoded, cache.reused) == (3, 2)
    assert np.array_equal(both[0], first[1]) and np.array_equal(both[2], first[1])
    direct = embedder.encode(TEXTS)
    assert np.allclose(both[1], direct[2], atol=1e-5)
    assert both.dtype == np.float32 and both.shape == (3, embedder.dim)


def test_saved_vectors_are_reused_by_a_new_instance(embedder: Embedder, tmp_path: Path):
    cache = CachingEmbedder(embedder, tmp_path)
    vectors = cache.encode(TEXTS)
    cache.save()
    again = CachingEmbedder(embedder, tmp_path)
    assert len(again) == 3
    assert np.array_equal(again.encode(list(reversed(TEXTS))), vectors[::-1])
    assert (again.encoded, again.reused) == (0, 3)


class _Renamed:
    """The same model under another id: what a different embedding model looks like to the cache."""

    def __init__(self, embedder: Embedder) -> None:
        self.dim, self.model_id, self.encode = embedder.dim, "other-model", embedder.encode


def test_another_model_never_reuses_vectors(embedder: Embedder, tmp_path: Path):
    cache = CachingEmbedder(embedder, tmp_path)
    cache.encode(TEXTS[:1])
    cache.save()
    other = CachingEmbedder(_Renamed(embedder), tmp_path)
    other.encode(TEXTS[:1])
    assert (len(other), other.encoded) == (1, 1)
    assert other.path != cache.path


def test_unreadable_cache_starts_empty(embedder: Embedder, tmp_path: Path):
    cache = CachingEmbedder(embedder, tmp_path)
    cache.path.write_bytes(b"not an npz file")
    fresh = CachingEmbedder(embedder, tmp_path)
    assert len(fresh) == 0
    fresh.encode(TEXTS[:1])
    fresh.save()
    assert len(CachingEmbedder(embedder, tmp_path)) == 1


def test_over_capacity_keeps_what_the_latest_build_used(embedder: Embedder, tmp_path: Path):
    cache = CachingEmbedder(embedder, tmp_path)
    cache.encode(TEXTS)
    cache.save()
    later = CachingEmbedder(embedder, tmp_path, max_entries=2)
    later.encode([TEXTS[2], "Hexproof."])
    later.save()
    kept = CachingEmbedder(embedder, tmp_path)
    assert len(kept) == 2
    kept.encode([TEXTS[2], "Hexproof."])
    assert kept.encoded == 0
