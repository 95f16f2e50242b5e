"""One retriever training run: data -> embedder -> re-ranker -> validation -> promotion -> index rebuild.

What ``hexcore train --retriever`` and the nightly job run. The run folder
(``<state_dir>/training/retriever/<time>/``) keeps the candidates and ``report.json``; the retriever store
changes only when a candidate is promoted, and the vector index is rebuilt (with the new embedder) only
after the embedder was promoted. Ctrl-C or an error before that leaves store and index as they were.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledge.retriever_store import RetrieverStore
from training.retriever import (
    ModelOutcome,
    RetrieverTrainConfig,
    RuleCorpus,
    cap_pairs,
    decide,
    hard_negatives,
    mrr_dense,
    rerank_metrics,
    train_embedder,
    train_reranker,
)
from training.retriever_data import build_pairs, counts_by_source, split_pairs

if TYPE_CHECKING:
    from hexcore.settings import Settings

log = logging.getLogger(__name__)
VAL_SOURCES = ("example", "glossary", "card", "feedback")
CANDIDATES = 8
RERANK_VAL = 100
"""Validation queries the re-ranker is judged on (each scores CANDIDATES passages: the slow part)."""


@dataclass(slots=True)
class RetrieverReport:
    data: dict[str, Any]
    outcomes: list[ModelOutcome] = field(default_factory=list)
    index_rebuilt: bool = False
    seconds: float = 0.0
    run_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "outcomes": [o.to_json() for o in self.outcomes],
            "index_rebuilt": self.index_rebuilt,
            "seconds": self.seconds,
            "run_dir": self.run_dir,
        }


_ENCODERS: dict[tuple[str, int], Any] = {}


def _encoder(model_dir: Path | None, corpus: RuleCorpus):
    """An encode function that embeds the rule corpus once per model (the slow part: ~3,000 passages)."""
    key = (str(model_dir), id(corpus))
    if key not in _ENCODERS:
        _ENCODERS[key] = _new_encoder(model_dir, corpus)
    return _ENCODERS[key]


def _new_encoder(model_dir: Path | None, corpus: RuleCorpus):
    from knowledge.embeddings import EMBEDDED, Embedder

    embedder = Embedder(str(model_dir) if model_dir is not None else EMBEDDED)
    embedder._model.max_seq_length = 128  # validation and mining only; the index keeps the model's length
    docs = None

    def encode(texts):
        nonlocal docs
        if texts is corpus.texts:
            if docs is None:
                docs = embedder.encode(corpus.texts, batch_size=64)
            return docs
        return embedder.encode(list(texts), batch_size=64)

    return encode


def run_retriever_training(
    settings: Settings,
    feedback: Iterable[Mapping[str, Any]] = (),
    config: RetrieverTrainConfig | None = None,
    rebuild_index: bool = True,
    roles: tuple[str, ...] = ("embedder", "reranker"),
) -> RetrieverReport:
    import torch

    from knowledge.base import KnowledgeBase

    config = config or RetrieverTrainConfig()
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    kb = KnowledgeBase.load(settings, lazy=True)
    pairs = build_pairs(kb.doc, kb.card_list, kb.graph, feedback)
    train, val = split_pairs(pairs, 0.15, VAL_SOURCES)
    run_dir = (
        settings.paths.state_dir / "training" / "retriever" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    report = RetrieverReport(
        data={"pairs": len(pairs), "train": counts_by_source(train), "validation": counts_by_source(val)},
        run_dir=str(run_dir),
    )
    store = RetrieverStore.from_settings(settings)
    corpus = RuleCorpus(kb.doc)
    serving_embedder = store.serving_dir("embedder")
    if "embedder" in roles:
        report.outcomes.append(_embedder_round(store, corpus, train, val, config, run_dir, serving_embedder))
    if "reranker" in roles:
        report.outcomes.append(_reranker_round(store, corpus, train, val, config, run_dir))
    promoted_embedder = any(o.role == "embedder" and o.promoted for o in report.outcomes)
    if rebuild_index and promoted_embedder:
        KnowledgeBase.build(settings, progress=False)  # serving switches to the new embedder's index
        report.index_rebuilt = True
    report.seconds = round(time.perf_counter() - start, 1)
    (run_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    return report


def _embedder_round(store, corpus, train, val, config, run_dir: Path, serving: Path | None) -> ModelOutcome:
    baseline_name = f"serving {store.serving('embedder')}" if serving else "untrained MiniLM"
    baseline = mrr_dense(_encoder(serving, corpus), corpus, val)
    stats = train_embedder(train, corpus, config, run_dir / "embedder")
    candidate = mrr_dense(_encoder(run_dir / "embedder", corpus), corpus, val)
    promote, reason = decide("embedder", candidate["mrr"], baseline["mrr"], config.margin, baseline_name)
    outcome = ModelOutcome(
        "embedder", promote, reason, {"train": stats, "baseline": baseline, "candidate": candidate}
    )
    if promote:
        outcome.version = store.save_new("embedder", run_dir / "embedder", {"metrics": outcome.metrics})
        store.promote("embedder", outcome.version)
        _ENCODERS[(str(store.serving_dir("embedder")), id(corpus))] = _encoder(run_dir / "embedder", corpus)
    outcome.serving = store.serving("embedder")
    return outcome


def _reranker_round(store, corpus, train, val, config, run_dir: Path) -> ModelOutcome:
    from knowledge.bm25 import BM25Index
    from knowledge.rerank import CrossEncoder
    from training.retriever_data import family

    encode = _encoder(store.serving_dir("embedder"), corpus)
    bm25 = _RuleBM25(corpus, BM25Index)
    data = cap_pairs(train, config.reranker_groups, config.seed)
    negatives = hard_negatives(data, corpus, encode, bm25.search, config.negatives, config.seed)
    stats = train_reranker(data, negatives, corpus, config, run_dir / "reranker")
    # Validation candidates: the dense first stage's top rules in its own order, the positive appended when
    # the first stage missed it, so the baseline (no re-ranking) is the order users would get.
    val = val[:RERANK_VAL]
    candidates = first_stage(val, corpus, encode, CANDIDATES)
    serving = store.serving_dir("reranker")
    base = CrossEncoder.load(serving) if serving else None

    def scorer(encoder):
        return lambda q, numbers: encoder.score(q, [corpus.text(n) for n in numbers])

    baseline = rerank_metrics(scorer(base) if base else None, val, candidates)
    candidate = rerank_metrics(scorer(CrossEncoder.load(run_dir / "reranker")), val, candidates)
    name = f"serving {store.serving('reranker')}" if base else "no re-ranking"
    promote, reason = decide("reranker", candidate["mrr"], baseline["mrr"], config.margin, name)
    metrics = {
        "train": stats,
        "baseline": baseline,
        "candidate": candidate,
        "families": len({family(p.rule) for p in val}),
    }
    outcome = ModelOutcome("reranker", promote, reason, metrics)
    if promote:
        outcome.version = store.save_new("reranker", run_dir / "reranker", {"metrics": metrics})
        store.promote("reranker", outcome.version)
    outcome.serving = store.serving("reranker")
    return outcome


def first_stage(pairs, corpus: RuleCorpus, encode, depth: int) -> list[list[str]]:
    from training.retriever_data import family

    scores = encode([p.query for p in pairs]) @ encode(corpus.texts).T
    out = []
    for row, pair in zip(scores, pairs, strict=True):
        top = [corpus.numbers[j] for j in np.argsort(-row)[:depth]]
        if not any(n in (pair.rule, family(pair.rule)) for n in top):
            top = [*top[: depth - 1], pair.rule]
        out.append(top)
    return out


class _RuleBM25:
    def __init__(self, corpus: RuleCorpus, index_class) -> None:
        from knowledge.models import Citation, Passage

        self.passages = [
            Passage(key=f"rule:{n}", text=t, citation=Citation(id=n, kind="rule"))
            for n, t in zip(corpus.numbers, corpus.texts, strict=True)
        ]
        self.index = index_class(self.passages, corpus.texts)

    def search(self, query: str, k: int = 15) -> list[str]:
        return [h.passage.citation.id for h in self.index.search(query, k, None)]


def feedback_rows(settings: Settings) -> list[dict]:
    """Voted answers from the bot's feedback database (none when there is no database yet)."""
    import asyncio

    path = settings.bot.database or settings.paths.state_dir / "feedback.sqlite3"
    if not Path(path).is_file():
        return []

    async def read() -> list[dict]:
        from bot.storage import FeedbackStore

        store = await FeedbackStore.open(path)
        try:
            return await store.export_training_examples()
        finally:
            await store.close()

    try:
        return asyncio.run(read())
    except Exception as exc:  # noqa: BLE001 - feedback is optional training signal, never a reason to fail
        log.warning("could not read feedback from %s (%s): training without it", path, exc)
        return []
