"""The cross-encoder re-ranker: save/load round trip, re-ordering, pinned exact hits, budget, bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from knowledge.models import Citation, Passage, RetrievalResult
from knowledge.rerank import CrossEncoder, Reranker, load_reranker


@pytest.fixture(scope="module")
def tiny_encoder() -> CrossEncoder:
    from knowledge.embeddings import embedded_model_path

    return CrossEncoder.from_base(embedded_model_path(), layers=1, max_length=32)


def _result(n: int, sources=("bm25",)) -> RetrievalResult:
    passage = Passage(f"rule:{n}", f"text {n}", Citation(str(n), "rule"))
    return RetrievalResult(passage, 1.0 / (n + 1), frozenset(sources))


def test_a_saved_cross_encoder_loads_with_the_same_scores(tiny_encoder: CrossEncoder, tmp_path: Path):
    tiny_encoder.save(tmp_path / "reranker")
    loaded = CrossEncoder.load(tmp_path / "reranker")
    texts = ["A creature with trample deals excess damage.", "The cleanup step discards to hand size."]
    before = tiny_encoder.score("how does trample work", texts)
    assert loaded.score("how does trample work", texts) == pytest.approx(before, abs=1e-5)
    assert loaded.model.encoder.config.num_hidden_layers == 1


class _FixedScores:
    """A stand-in encoder whose scores are fixed by passage text (so the ordering logic is what's tested)."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score(self, query, texts):
        import numpy as np

        return np.array([self.scores.get(t, 0.0) for t in texts], dtype=np.float32)


def test_rerank_reorders_the_head_and_keeps_named_results_first():
    results = [_result(0, ("exact",)), *(_result(n) for n in range(1, 6))]
    reranker = Reranker(_FixedScores({"text 4": 5.0}), depth=4, prior=1.0)  # type: ignore[arg-type]
    out = reranker.rerank("q", results, lambda p: p.text)
    keys = [r.passage.key for r in out]
    assert keys[0] == "rule:0"  # the exact hit stays first
    assert keys[1] == "rule:1"  # depth 4 covers results 0-3: rule:4 is beyond it and keeps its place
    assert keys[-2:] == ["rule:4", "rule:5"]
    reranker = Reranker(_FixedScores({"text 3": 5.0}), depth=6, prior=1.0)  # type: ignore[arg-type]
    keys = [r.passage.key for r in reranker.rerank("q", results, lambda p: p.text)]
    assert (
        keys[:2] == ["rule:0", "rule:3"]
        and "rerank" in reranker.rerank("q", results, lambda p: p.text)[1].sources
    )


def test_with_equal_scores_the_first_stage_order_stands():
    results = [_result(n) for n in range(5)]
    out = Reranker(_FixedScores({}), depth=5).rerank("q", results, lambda p: p.text)  # type: ignore[arg-type]
    assert [r.passage.key for r in out] == [r.passage.key for r in results]


def test_the_budget_check_uses_recent_cost():
    reranker = Reranker(_FixedScores({}), depth=5, budget_ms=10.0)  # type: ignore[arg-type]
    assert reranker.fits(9.0)  # nothing measured yet
    reranker._recent = [8.0, 8.0, 9.0]
    assert not reranker.fits(5.0) and reranker.fits(1.0)


def test_a_damaged_reranker_folder_means_no_reranking(tmp_path: Path, caplog):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "reranker.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        assert load_reranker(folder, depth=5, budget_ms=100, prior=1.0) is None
    assert "without re-ranking" in caplog.text
    assert load_reranker(None, depth=5, budget_ms=100, prior=1.0) is None
