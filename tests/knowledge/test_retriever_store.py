"""Retriever versions: save, promote, roll back; missing or damaged files fall back to the untrained model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from knowledge.retriever_store import RetrieverStore, RetrieverStoreError


def _model_dir(root: Path, payload: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "weights.bin").write_text(payload)
    (root / "config.json").write_text(json.dumps({"payload": payload}))
    return root


def test_versions_promote_and_roll_back(tmp_path: Path):
    store = RetrieverStore(tmp_path / "retrievers")
    assert store.serving("embedder") is None and store.serving_dir("embedder") is None
    v1 = store.save_new("embedder", _model_dir(tmp_path / "a", "one"), {"metrics": {"mrr": 0.3}})
    v2 = store.save_new("embedder", _model_dir(tmp_path / "b", "two"))
    assert (v1, v2) == ("v1", "v2") and store.versions("embedder") == ["v1", "v2"]
    assert store.serving("embedder") is None  # saving never promotes
    store.promote("embedder", v1)
    store.promote("embedder", v2)
    assert (store.serving_dir("embedder") / "weights.bin").read_text() == "two"
    assert store.meta("embedder", v1)["metrics"] == {"mrr": 0.3}
    assert store.rollback("embedder") == "v1"
    assert store.rollback("embedder") is None  # back to the untrained model
    with pytest.raises(RetrieverStoreError):
        store.rollback("embedder")
    with pytest.raises(RetrieverStoreError):
        store.promote("embedder", "v9")
    with pytest.raises(RetrieverStoreError):
        store.versions("ranker")


def test_a_damaged_or_missing_version_is_not_served(tmp_path: Path, caplog):
    store = RetrieverStore(tmp_path / "retrievers")
    store.promote("reranker", store.save_new("reranker", _model_dir(tmp_path / "a", "one")))
    (store.role_dir("reranker") / "v1" / "weights.bin").write_text("truncated")
    with caplog.at_level(logging.WARNING):
        assert RetrieverStore(store.root).serving_dir("reranker") is None
    assert "missing or damaged" in caplog.text
    store.promote("reranker", store.save_new("reranker", _model_dir(tmp_path / "b", "two")))
    (store.role_dir("reranker") / "v2" / "config.json").unlink()
    assert RetrieverStore(store.root).serving_dir("reranker") is None


def test_an_unreadable_pointer_means_no_trained_model(tmp_path: Path):
    store = RetrieverStore(tmp_path / "retrievers")
    store.role_dir("embedder").mkdir(parents=True)
    (store.role_dir("embedder") / "serving.json").write_text("{not json")
    assert store.serving_dir("embedder") is None


def test_retrieval_falls_back_to_the_untrained_embedder(tmp_path: Path, caplog):
    from hexcore.settings import KnowledgeSettings, PathSettings, Settings
    from knowledge.retriever_models import retrieval_embedder, serving_reranker

    settings = Settings(
        paths=PathSettings(state_dir=tmp_path), knowledge=KnowledgeSettings(cross_encoder=True)
    )
    store = RetrieverStore.from_settings(settings)
    store.promote("embedder", store.save_new("embedder", _model_dir(tmp_path / "bad", "not a model")))
    store.promote("reranker", store.save_new("reranker", _model_dir(tmp_path / "bad2", "not a model")))
    with caplog.at_level(logging.WARNING):
        embedder = retrieval_embedder(settings)  # files intact but not a model: loading fails
        reranker = serving_reranker(settings)
    assert embedder.model_id == "all-MiniLM-L6-v2"
    assert reranker is None
    assert "untrained" in caplog.text and "without re-ranking" in caplog.text


def test_the_cross_encoder_is_off_unless_asked_for(tmp_path: Path):
    from hexcore.settings import KnowledgeSettings, PathSettings, Settings
    from knowledge.retriever_models import serving_reranker

    settings = Settings(paths=PathSettings(state_dir=tmp_path), knowledge=KnowledgeSettings())
    store = RetrieverStore.from_settings(settings)
    store.promote("reranker", store.save_new("reranker", _model_dir(tmp_path / "m", "x")))
    assert serving_reranker(settings) is None  # default: no cross-encoder even with one promoted
