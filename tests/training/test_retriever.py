"""Retriever training on a handful of pairs: the models save, load and are judged; promotion is guarded."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.retriever import (
    RetrieverTrainConfig,
    RuleCorpus,
    cap_pairs,
    decide,
    mrr_dense,
    rerank_metrics,
    train_embedder,
    train_reranker,
)
from training.retriever_data import RetrieverPair


@pytest.fixture(scope="module")
def corpus(latest_rules_path) -> RuleCorpus:
    from knowledge.rules import load_rules

    return RuleCorpus(load_rules(latest_rules_path))


PAIRS = [
    RetrieverPair(
        "A creature with trample is blocked by a smaller creature.", "702.19b", "example", "702.19"
    ),
    RetrieverPair("A creature with deathtouch deals damage to a blocker.", "702.2b", "example", "702.2"),
    RetrieverPair("A player has eight cards in hand at the end of the turn.", "514.1", "example", "514.1"),
    RetrieverPair(
        "Two players both control legendary permanents with one name.", "704.5j", "example", "704.5"
    ),
]


def test_config_rejects_values_that_cannot_train():
    with pytest.raises(ValueError):
        RetrieverTrainConfig(batch_size=1)
    with pytest.raises(ValueError):
        RetrieverTrainConfig(lr=0)


def test_cap_keeps_question_like_sources_first():
    pairs = [
        RetrieverPair(f"sub-rule text {i} long enough", "702.19b", "subrule", "702.19") for i in range(5)
    ]
    capped = cap_pairs([*pairs, *PAIRS], 4, seed=0)
    assert {p.source for p in capped} == {"example"}


def test_a_tiny_embedder_run_saves_a_loadable_model(corpus: RuleCorpus, tmp_path: Path):
    from knowledge.embeddings import Embedder

    config = RetrieverTrainConfig(batch_size=4, max_pairs=4, max_length=32)
    stats = train_embedder(PAIRS, corpus, config, tmp_path / "embedder")
    assert stats["steps"] == 1 and stats["loss_first"] is not None
    embedder = Embedder(str(tmp_path / "embedder"))
    assert embedder.model_id == str(tmp_path / "embedder")
    small = RuleCorpus.__new__(RuleCorpus)  # a 6-rule corpus keeps the check fast
    small.numbers = ["702.19b", "702.2b", "514.1", "704.5j", "100.1", "601.2"]
    small.texts = [corpus.text(n) for n in small.numbers]
    metrics = mrr_dense(lambda texts: embedder.encode(list(texts)), small, PAIRS)
    assert metrics["pairs"] == 4 and 0 < metrics["mrr"] <= 1


def test_a_tiny_reranker_run_saves_a_loadable_model(corpus: RuleCorpus, tmp_path: Path):
    from knowledge.rerank import CrossEncoder

    config = RetrieverTrainConfig(reranker_batch=2, reranker_layers=1, reranker_max_length=48)
    negatives = [["100.1"], ["601.2"], ["702.19b"], ["514.1"]]
    stats = train_reranker(PAIRS, negatives, corpus, config, tmp_path / "reranker")
    assert stats["groups"] == 4 and stats["steps"] == 2
    model = CrossEncoder.load(tmp_path / "reranker")
    candidates = [["100.1", p.rule] for p in PAIRS]
    scored = rerank_metrics(lambda q, ns: model.score(q, [corpus.text(n) for n in ns]), PAIRS, candidates)
    unscored = rerank_metrics(None, PAIRS, candidates)
    assert unscored == {"mrr": 0.5, "recall@1": 0.0, "pairs": 4}  # without a scorer: first-stage order
    assert scored["pairs"] == 4


def test_promotion_needs_a_margin_and_a_finite_score():
    assert decide("embedder", 0.50, 0.40, 0.01, "untrained")[0]
    assert not decide("embedder", 0.405, 0.40, 0.01, "untrained")[0]
    assert not decide("embedder", float("nan"), 0.40, 0.01, "untrained")[0]
