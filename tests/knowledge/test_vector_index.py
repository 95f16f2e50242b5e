"""FAISS vector index: kinds, persistence with a manifest, stale detection, search during add."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from knowledge.errors import StaleIndex
from knowledge.models import Citation, Passage
from knowledge.passages import passages_digest, rule_passages
from knowledge.vector_index import FORMAT_VERSION, MANIFEST, VectorIndex, load_or_build_vector_index

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_passages(n: int, kind: str = "rule", start: int = 0) -> list[Passage]:
    return [
        Passage(f"{kind}:{i}", f"text {i}", Citation(str(i), kind, "2026-01-16"))
        for i in range(start, start + n)
    ]  # type: ignore[arg-type]


@pytest.fixture
def small() -> tuple[VectorIndex, list[Passage], np.ndarray]:
    rng = np.random.default_rng(0)
    passages = make_passages(30) + make_passages(10, "glossary")
    vectors = unit(rng, 40)
    index = VectorIndex(DIM, "test-model", "2026-01-16")
    index.add(passages, vectors)
    index.digest = passages_digest(passages)
    return index, passages, vectors


def test_search_all_and_by_kind(small) -> None:
    index, passages, vectors = small
    hits = index.search(vectors[3], k=5)
    assert hits[0].passage == passages[3] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    glossary = index.search(vectors[35], k=3, kinds=["glossary"])
    assert glossary[0].passage == passages[35]
    assert all(h.passage.citation.kind == "glossary" for h in glossary)
    assert index.search(vectors[0], k=5, kinds=["card"]) == []
    assert len(index.search(vectors[0], k=100)) == 40
    assert len(index) == 40 and index.counts() == {"rule": 30, "glossary": 10, "card": 0, "ruling": 0}


def test_add_rejects_wrong_shapes(small) -> None:
    index, passages, _ = small
    with pytest.raises(ValueError):
        index.add(passages[:2], np.zeros((3, DIM), dtype=np.float32))


def test_save_load_round_trip(small, tmp_path: Path) -> None:
    index, passages, vectors = small
    index.built_at = "2026-01-20T00:00:00+00:00"
    target = index.save(tmp_path / "vectors")
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["embedding_model"] == "test-model" and manifest["rules_release"] == "2026-01-16"
    assert manifest["passage_counts"]["rule"] == 30 and manifest["passages_sha256"] == index.digest
    assert manifest["built_at"] == "2026-01-20T00:00:00+00:00"
    loaded = VectorIndex.load(target, model_id="test-model", release="2026-01-16", digest=index.digest)
    for i in (0, 17, 39):
        assert [h.passage for h in loaded.search(vectors[i], 5)] == [
            h.passage for h in index.search(vectors[i], 5)
        ]
    assert loaded.passages == index.passages
    assert [p.name for p in tmp_path.iterdir()] == ["vectors"]  # no temp folders left behind


def test_save_replaces_previous_index(small, tmp_path: Path) -> None:
    index, _, _ = small
    index.save(tmp_path / "vectors")
    other = VectorIndex(DIM, "test-model", "2026-01-16")
    other.add(make_passages(2), unit(np.random.default_rng(1), 2))
    other.save(tmp_path / "vectors")
    assert len(VectorIndex.load(tmp_path / "vectors")) == 2
    assert not (tmp_path / "vectors" / "glossary.faiss").exists()


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"model_id": "other-model"}, "embedding model"),
        ({"release": "2025-11-14"}, "rules release"),
        ({"digest": "0" * 64}, "passages changed"),
    ],
)
def test_stale_manifest_is_detected(small, tmp_path: Path, expect: dict, message: str) -> None:
    index, _, _ = small
    index.save(tmp_path / "vectors")
    with pytest.raises(StaleIndex, match=message):
        VectorIndex.load(tmp_path / "vectors", **expect)


def test_old_format_missing_and_corrupt_indexes_are_stale(small, tmp_path: Path) -> None:
    index, _, _ = small
    with pytest.raises(StaleIndex, match="No saved index"):
        VectorIndex.load(tmp_path / "nothing")
    target = index.save(tmp_path / "vectors")
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(StaleIndex, match="format"):
        VectorIndex.load(target)
    (target / MANIFEST).write_text(json.dumps(manifest))
    (target / "rule.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(StaleIndex):
        VectorIndex.load(target)
    aside = tmp_path / "vectors.damaged"  # a damaged index is moved aside whole, not overwritten
    assert not target.exists() and (aside / "rule.faiss").read_bytes() == b"not a faiss index"
    target = index.save(tmp_path / "vectors")
    (target / MANIFEST).write_text("{broken")
    with pytest.raises(StaleIndex, match="unreadable"):
        VectorIndex.load(target)
    assert (aside / MANIFEST).read_text() == "{broken"  # the older damaged copy was replaced


def test_search_during_add_from_another_thread() -> None:
    """Searches run lock-free against snapshots while a writer keeps adding batches."""
    rng = np.random.default_rng(2)
    index = VectorIndex(DIM, "test-model", None)
    index.add(make_passages(100), unit(rng, 100))
    batches = [(make_passages(50, start=100 + 50 * b), unit(rng, 50)) for b in range(40)]
    queries = unit(rng, 64)
    errors: list[BaseException] = []
    sizes: list[int] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for passages, vectors in batches:
                index.add(passages, vectors)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    searches = 0
    while not done.is_set() or searches < 50:
        hits = index.search(queries[searches % 64], k=10, kinds=["rule"])
        assert len(hits) == 10
        assert len({h.passage.key for h in hits}) == 10
        sizes.append(len(index))
        searches += 1
    thread.join()
    assert not errors
    assert len(index) == 100 + 40 * 50
    assert sizes == sorted(sizes)  # never saw a shrinking or half-swapped index


def test_load_or_build_vector_index_reuses_matching_index_and_rebuilds_stale(
    tmp_path: Path, rules_doc, retrieval_embedder
) -> None:
    passages = rule_passages(rules_doc)[:12]
    texts = [p.text for p in passages]
    index, rebuilt = load_or_build_vector_index(
        tmp_path / "v", passages, texts, retrieval_embedder, "2026-01-16", progress=False
    )
    assert rebuilt and len(index) == 12 and index.dim == retrieval_embedder.dim
    again, rebuilt = load_or_build_vector_index(
        tmp_path / "v", passages, texts, retrieval_embedder, "2026-01-16", progress=False
    )
    assert not rebuilt and again.digest == index.digest
    hit = again.search(retrieval_embedder.encode_one(texts[5]), k=1)[0]
    assert hit.passage.key == passages[5].key
    changed = [*passages[:-1], replace(passages[-1], text="changed")]
    _, rebuilt = load_or_build_vector_index(
        tmp_path / "v", changed, [*texts[:-1], "changed"], retrieval_embedder, "2026-01-16", progress=False
    )
    assert rebuilt
    _, rebuilt = load_or_build_vector_index(
        tmp_path / "v", passages, texts, retrieval_embedder, "2025-11-14", progress=False
    )
    assert rebuilt
    assert VectorIndex.load(tmp_path / "v").release == "2025-11-14"
