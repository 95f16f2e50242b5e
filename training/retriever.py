"""``hexcore train --retriever``: fine-tune the embedder, train the re-ranker, validate, promote.

Both models start from all-MiniLM-L6-v2 and learn from :mod:`training.retriever_data` pairs (rules,
glossary, cards, rulings, feedback votes; never the evaluation question sets):

* the **embedder** with in-batch negatives (each query's positive rule against the batch's other rules,
  rules of the same family masked out), one epoch;
* the **re-ranker** (:class:`knowledge.rerank.CrossEncoder`) listwise: each query against its positive and
  ``negatives`` hard negatives (the untrained embedder's and BM25's top rules that are not the answer).

Validation is a held-out split of the same pairs (whole rule families held out): MRR of the positive rule
among all rules of the release. A model is promoted only when it beats the serving one (or the untrained
baseline) by ``margin``. Everything is written to a run folder first; the store changes only by
``save_new`` + ``promote`` at the end, and the vector index is rebuilt only after a promotion, so a failed
or interrupted run leaves the serving index as it was.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledge.embeddings import embedded_model_path
from knowledge.models import RulesDocument
from knowledge.passages import index_text, rule_passages
from training.retriever_data import RetrieverPair, family

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RetrieverTrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 3e-5
    max_length: int = 96
    max_pairs: int = 1200
    """Training pairs per model at most (feedback, examples, glossary kept first): the time cap. On this
    2-core CPU under load a forward+backward runs at ~2,000 tokens/s, so pairs x length is the run time."""
    frozen_layers: int = 2
    """The embedder's token embeddings and its first layers stay as trained (less compute, less drift)."""
    reranker_lr: float = 5e-5
    reranker_groups: int = 320
    reranker_batch: int = 8
    negatives: int = 3
    reranker_layers: int = 4
    """Transformer layers the re-ranker keeps of MiniLM's 6: 2/3 of the cost per candidate at serving."""
    reranker_max_length: int = 128
    margin: float = 0.01
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 2 or self.reranker_batch < 1 or self.negatives < 1:
            raise ValueError("batch_size >= 2, reranker_batch >= 1 and negatives >= 1 are required")
        if not 0 < self.lr < 1 or not 0 < self.reranker_lr < 1:
            raise ValueError("learning rates must be in (0, 1)")


@dataclass(slots=True)
class ModelOutcome:
    role: str
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    serving: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_PRIORITY = {"feedback": 0, "example": 1, "glossary": 2, "card": 3, "ruling": 3, "xref": 4, "subrule": 5}


def cap_pairs(pairs: Sequence[RetrieverPair], limit: int, seed: int) -> list[RetrieverPair]:
    """At most ``limit`` pairs: scarce, question-like sources first, a seeded sample of the rest."""
    rng = random.Random(seed)
    ordered = sorted(pairs, key=lambda p: (_PRIORITY.get(p.source, 9), rng.random()))
    out = ordered[:limit]
    rng.shuffle(out)
    return out


class RuleCorpus:
    """Rule passages of a release and their index texts (what the embedder and re-ranker read)."""

    def __init__(self, doc: RulesDocument) -> None:
        passages = rule_passages(doc)
        self.numbers = [p.citation.id for p in passages]
        self.texts = [index_text(p, doc) for p in passages]
        self.position = {n: i for i, n in enumerate(self.numbers)}

    def text(self, number: str) -> str:
        return self.texts[self.position[number]]


def mrr_dense(encode: Callable[[list[str]], np.ndarray], corpus: RuleCorpus, pairs: Sequence[RetrieverPair]):
    """(MRR, recall@1, recall@5) of the positive rule (or its family) among all rules, by cosine."""
    docs = encode(corpus.texts)
    queries = encode([p.query for p in pairs])
    return _ranking_metrics(queries @ docs.T, corpus, pairs)


def _ranking_metrics(scores: np.ndarray, corpus: RuleCorpus, pairs: Sequence[RetrieverPair]) -> dict:
    ranks = []
    for row, pair in zip(scores, pairs, strict=True):
        order = np.argsort(-row)[:100]
        accepted = {pair.rule, family(pair.rule)}
        hit = next((i + 1 for i, j in enumerate(order) if corpus.numbers[j] in accepted), None)
        ranks.append(hit)
    n = max(len(ranks), 1)
    return {
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4),
        "recall@1": round(sum(r == 1 for r in ranks if r) / n, 4),
        "recall@5": round(sum(r <= 5 for r in ranks if r) / n, 4),
        "pairs": len(ranks),
    }


# ----------------------------------------------------------------------------------------------- embedder


def train_embedder(
    pairs: Sequence[RetrieverPair],
    corpus: RuleCorpus,
    config: RetrieverTrainConfig,
    out_dir: Path,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Fine-tune MiniLM with in-batch negatives; saves a sentence-transformers folder to ``out_dir``."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(embedded_model_path()), device="cpu")
    model.max_seq_length = config.max_length
    _freeze(model, config.frozen_layers)
    model.train()
    data = cap_pairs(pairs, config.max_pairs, config.seed)
    batches = [
        data[i : i + config.batch_size] for i in range(0, len(data), config.batch_size)
    ] * config.epochs
    batches = [b for b in batches if len(b) >= 2]

    def loss_of(batch: list[RetrieverPair]) -> torch.Tensor:
        queries = _embed(model, [p.query for p in batch])
        docs = _embed(model, [corpus.text(p.rule) for p in batch])
        scores = queries @ docs.T * 20.0  # scale 20: MultipleNegativesRankingLoss' default
        same = torch.tensor([[family(a.rule) == family(b.rule) for b in batch] for a in batch])
        scores = scores.masked_fill(same & ~torch.eye(len(batch), dtype=torch.bool), -1e4)
        return torch.nn.functional.cross_entropy(scores, torch.arange(len(batch)))

    summary = _optimize("embedder", batches, model.parameters(), config.lr, loss_of, should_stop)
    model.eval()
    model.save(str(out_dir))
    return {"pairs": len(data), **summary}


def _optimize(
    name: str,
    batches: Sequence[Any],
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    loss_of: Callable[[Any], torch.Tensor],
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    """One pass over ``batches``: AdamW with linear warm-up and decay, gradients clipped to norm 1, a log
    line every 10 steps; ``should_stop()`` ends it with ``KeyboardInterrupt`` (a checkpointless run)."""
    import torch

    trained = [p for p in parameters if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr)
    schedule = _warmup_linear(optimizer, len(batches))
    start, losses = time.perf_counter(), []
    for step, batch in enumerate(batches):
        if should_stop():
            raise KeyboardInterrupt
        loss = loss_of(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step(), schedule.step(), optimizer.zero_grad()
        losses.append(loss.item())
        if step % 10 == 0:
            log.info("%s step %d/%d loss %.3f", name, step + 1, len(batches), losses[-1])
    return {
        "steps": len(batches),
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first": _mean(losses[:10]),
        "loss_last": _mean(losses[-10:]),
    }


def _freeze(model, layers: int) -> None:
    """No gradients for the token embeddings and the first ``layers`` transformer layers."""
    bert = model[0].auto_model
    for parameter in bert.embeddings.parameters():
        parameter.requires_grad = False
    for layer in bert.encoder.layer[:layers]:
        for parameter in layer.parameters():
            parameter.requires_grad = False


def _embed(model, texts: list[str]):
    import torch

    features = model.tokenize(texts)
    out = model(features)["sentence_embedding"]
    return torch.nn.functional.normalize(out, dim=-1)


def _warmup_linear(optimizer, total: int):
    import torch

    warm = max(1, total // 10)

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


# ----------------------------------------------------------------------------------------------- re-ranker


def hard_negatives(
    pairs: Sequence[RetrieverPair], corpus: RuleCorpus, encode, bm25_search, count: int, seed: int
) -> list[list[str]]:
    """Per pair, ``count`` rules that look right but are not (dense and BM25 top hits, other family)."""
    rng = random.Random(seed)
    docs = encode(corpus.texts)
    queries = encode([p.query for p in pairs])
    out = []
    for row, pair in zip(queries @ docs.T, pairs, strict=True):
        dense = [corpus.numbers[j] for j in np.argsort(-row)[:15]]
        pool = [n for n in dict.fromkeys(dense + bm25_search(pair.query)) if family(n) != family(pair.rule)]
        top = pool[:8]
        rng.shuffle(top)
        out.append(top[:count])
    return out


def train_reranker(
    pairs: Sequence[RetrieverPair],
    negatives: Sequence[Sequence[str]],
    corpus: RuleCorpus,
    config: RetrieverTrainConfig,
    out_dir: Path,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Listwise training: softmax over (positive, negatives) per query; saves to ``out_dir``."""
    import torch

    from knowledge.rerank import CrossEncoder

    torch.manual_seed(config.seed)
    encoder = CrossEncoder.from_base(
        embedded_model_path(), config.reranker_layers, config.reranker_max_length
    )
    encoder.model.train()
    groups = [(p, list(n)) for p, n in zip(pairs, negatives, strict=True) if n][: config.reranker_groups]
    batches = [groups[i : i + config.reranker_batch] for i in range(0, len(groups), config.reranker_batch)]

    def loss_of(batch: list[tuple[RetrieverPair, list[str]]]) -> torch.Tensor:
        width = 1 + min(len(n) for _, n in batch)
        queries = [p.query for p, n in batch for _ in range(width)]
        texts = [corpus.text(r) for p, n in batch for r in [p.rule, *n[: width - 1]]]
        logits = encoder.logits(queries, texts).view(len(batch), width)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))

    params = encoder.model.parameters()
    summary = _optimize("reranker", batches, params, config.reranker_lr, loss_of, should_stop)
    encoder.model.eval()
    encoder.save(out_dir)
    return {"groups": len(groups), **summary}


def rerank_metrics(score, pairs: Sequence[RetrieverPair], candidates: Sequence[Sequence[str]]) -> dict:
    """MRR of the positive among (first-stage candidates) re-ordered by ``score(query, numbers)``; the
    first-stage order alone when ``score`` is None."""
    ranks = []
    for pair, numbers in zip(pairs, candidates, strict=True):
        order = list(numbers)
        if score is not None and order:
            values = score(pair.query, order)
            final = [float(v) + 1.0 / (1.0 + i) for i, v in enumerate(values)]
            order = [order[i] for i in sorted(range(len(order)), key=lambda i: -final[i])]
        accepted = {pair.rule, family(pair.rule)}
        ranks.append(next((i + 1 for i, n in enumerate(order) if n in accepted), None))
    n = max(len(ranks), 1)
    return {
        "mrr": round(sum(1 / r for r in ranks if r) / n, 4),
        "recall@1": round(sum(r == 1 for r in ranks if r) / n, 4),
        "pairs": len(ranks),
    }


def decide(
    role: str, candidate: float, baseline: float, margin: float, baseline_name: str
) -> tuple[bool, str]:
    if not math.isfinite(candidate):
        return False, f"not promoted: the new {role}'s validation MRR is not finite"
    if candidate >= baseline + margin:
        return True, f"promoted: validation MRR {candidate:.3f} vs {baseline:.3f} ({baseline_name})"
    return False, (
        f"not promoted: validation MRR {candidate:.3f} is not {margin:.3f} above {baseline:.3f} ({baseline_name})"
    )
