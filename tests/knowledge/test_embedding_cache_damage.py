"""A damaged embedding cache only costs time: it is moved aside (``<name>.npz.damaged``) and the build goes on.

The cache logic does not depend on the model, so these use the hash encoder of tests/hexcore/state_support.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from hexcore.settings import KnowledgeSettings, PathSettings, Settings
from knowledge.embedding_cache import CachingEmbedder
from tests.hexcore.state_support import ENCODER, hash_embeddings

TEXTS = ["Trample.", "Flying.", "Scry 1."]


def _saved(tmp_path: Path) -> CachingEmbedder:
    cache = CachingEmbedder(ENCODER, tmp_path)
    cache.encode(TEXTS)
    cache.save()
    return cache


def _wrong_shape() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.zeros((2, 32), np.uint8), vectors=np.zeros((2, ENCODER.dim + 1), np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),  # BadZipFile (issue 14, item 2)
        pytest.param(lambda raw: raw[:3000] if len(raw) > 3000 else raw[:40], id="truncated-head"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"PK\x03\x04" + bytes(100), id="zip-garbage"),
        pytest.param(lambda raw: _wrong_shape(), id="wrong-shape"),
    ],
)
def test_a_damaged_cache_is_moved_aside_and_rebuilt(tmp_path: Path, damage) -> None:
    path = _saved(tmp_path).path
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    fresh = CachingEmbedder(ENCODER, tmp_path)
    assert len(fresh) == 0
    assert (tmp_path / f"{path.name}.damaged").read_bytes() == damaged
    fresh.encode(TEXTS[:1])
    fresh.save()
    assert len(CachingEmbedder(ENCODER, tmp_path)) == 1


def test_a_fresh_build_fills_and_saves_the_cache(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty CachingEmbedder is falsy (``__len__``), so ``caching or embedder`` skipped it: a build on a fresh
    state dir embedded everything, reported "Embedded 0 texts" and saved no cache."""
    from knowledge.base import KnowledgeBase

    settings = Settings(
        paths=PathSettings(data_dir=data_dir, state_dir=tmp_path / "state", rules_release="2026-01-16"),
        knowledge=KnowledgeSettings(),
    )
    with hash_embeddings(monkeypatch):
        first = KnowledgeBase.build(settings, progress=False)
        total = sum(first.passages.values())
        assert first.embedded > 0.9 * total  # a few passages share their text: embedded once
        assert first.embedded + first.embeddings_reused == total
        assert (tmp_path / "state" / "index" / "embeddings" / f"{ENCODER.model_id}.npz").is_file()
        second = KnowledgeBase.build(settings, progress=False)
    assert second.embedded == 0 and second.embeddings_reused == sum(second.passages.values())
