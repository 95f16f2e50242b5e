"""Retrieval benchmark, side by side in one run: BM25, the hybrid as it was, + question understanding,
+ the trained embedder, + re-ranking.

    python bench/bench_retrieval.py --state-dir /tmp/retr/state --json out.json
    python bench/bench_retrieval.py --ablations            # also each new part on its own

For every configuration and question set (quiz-dev, multihop-dev, definitions-dev): recall@1/@5/@10 and MRR
of the first gold rule (or its parent), per difficulty, and latency p50/p99 per stage over the same
searches (unlimited budget, cache off: every stage runs). Then the two production paths with their
budgets: ``hexcore search`` (first stage, 20 ms budget) and the answer path (re-ranked, 150 ms budget).
Finally the misses of the best configuration at rank 1 are sorted into "wrong gold" (the gold is a
701/702 keyword rule whose keyword neither the question nor its answer mentions, or one of the references
docs/BENCHMARKS.md lists as wrong) and the rest, with examples.

Trained models come from the retriever store of ``--state-dir`` (what ``hexcore train --retriever``
promoted) or ``--embedder`` / ``--reranker`` folders. Question files are only read, never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from hexcore.settings import KnowledgeSettings, PathSettings  # noqa: E402
from knowledge.bm25 import BM25Retriever  # noqa: E402
from knowledge.cache import TTLCache  # noqa: E402
from knowledge.card_names import NICKNAMES_FILE, CardDatabase, load_nicknames  # noqa: E402
from knowledge.cards import load_card_dir  # noqa: E402
from knowledge.embedding_cache import CachingEmbedder  # noqa: E402
from knowledge.embeddings import Embedder, get_embedder  # noqa: E402
from knowledge.graph import KnowledgeGraph  # noqa: E402
from knowledge.latency import LatencyTracker  # noqa: E402
from knowledge.passages import build_passages, index_texts  # noqa: E402
from knowledge.recall import evaluate_recall, load_questions  # noqa: E402
from knowledge.rerank import load_reranker  # noqa: E402
from knowledge.retrieval import HybridRetriever  # noqa: E402
from knowledge.retriever_store import RetrieverStore  # noqa: E402
from knowledge.rules import RuleBook, load_release  # noqa: E402
from knowledge.vector_index import build_vector_index  # noqa: E402

SETS = ("quiz-dev", "multihop-dev", "definitions-dev")
KNOWN_WRONG = {
    "702.110": "menace is 702.111",
    "702.33": "flashback is 702.34",
    "701.10": "exile is 406/701.13",
}
"""Gold references docs/BENCHMARKS.md lists as wrong in the 2026-01-16 numbering."""


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "load_avg_1m": round(os.getloadavg()[0], 2)}


def pct(samples: list[float]) -> dict:
    if not samples:
        return {}
    p50, p99 = np.percentile(np.asarray(samples), [50, 99])
    return {"n": len(samples), "p50": round(float(p50), 2), "p99": round(float(p99), 2)}


class Timed:
    """A retriever wrapper that keeps every search's per-stage timings."""

    def __init__(self, retriever, rerank: bool | None = None) -> None:
        self.retriever, self.rerank = retriever, rerank
        self.samples: dict[str, list[float]] = {}

    def search(self, query: str, k: int = 8, kinds=None):
        if not isinstance(self.retriever, HybridRetriever):
            start = time.perf_counter()
            results = self.retriever.search(query, k=k, kinds=kinds)
            self.samples.setdefault("total", []).append((time.perf_counter() - start) * 1000)
            return results
        outcome = self.retriever.search_detailed(query, k=k, kinds=kinds, rerank=self.rerank)
        for stage, ms in outcome.timings_ms.items():
            self.samples.setdefault(stage, []).append(ms)
        return outcome.results


def vectors_for(embedder, passages, texts, release: str, cache_dir: Path):
    caching = CachingEmbedder(embedder, cache_dir)
    start = time.perf_counter()
    index = build_vector_index(passages, texts, caching, release, progress=False)
    caching.save()
    return index, {"seconds": round(time.perf_counter() - start, 1), "embedded": caching.encoded}


def wrong_gold(row: dict, doc) -> str | None:
    """Why a question's gold looks wrong, or None."""
    for gold in row.get("rule_refs") or row.get("gold_cr_rules") or []:
        if gold in KNOWN_WRONG:
            return f"{gold}: {KNOWN_WRONG[gold]}"
        rule = doc.rules.get(gold.rstrip("abcdefghijklmnopqrstuvwxyz"))
        if rule is not None and gold[:3] in ("701", "702") and rule.kind == "rule":
            keyword = rule.text.split("(")[0].strip().lower()
            text = f"{row['question']} {row.get('answer', '')} {row.get('explanation', '')}".lower()
            if keyword and keyword.split()[0][:5] not in text:
                return f"{gold} is {rule.text!r}, which neither the question nor its answer mentions"
    return None


def recall_block(timed: Timed, qa_dir: Path) -> dict:
    out = {}
    for name in SETS:
        path = qa_dir / f"{name}.jsonl"
        if not path.is_file():
            continue
        report = evaluate_recall(timed, path, k=5)
        out[name] = {
            "scored": report.scored,
            **{f"recall@{c}": round(v, 4) for c, v in report.recall_at.items()},
            "mrr": round(report.mrr, 4),
            "by_difficulty": {
                d: {key: round(v, 3) for key, v in g.items() if key.startswith(("recall@", "mrr", "scored"))}
                for d, g in report.by_difficulty.items()
            },
            "ranks": {r.id: r.rank for r in report.results},
        }
    return out


def budgeted_latency(retriever: HybridRetriever, queries: list[str], rerank: bool) -> dict:
    retriever.embedder.encode(queries[:3])  # the first encode pays one-off setup, as KnowledgeBase.warm does
    for q in queries[:10]:  # warm-up: allocator, kernels
        retriever.search(q, rerank=rerank)
    retriever.tracker.reset()  # stage estimates from warm runs only
    totals, degraded = [], 0
    for q in queries:
        outcome = retriever.search_detailed(q, k=8, rerank=rerank)
        totals.append(outcome.timings_ms["total"])
        degraded += bool(outcome.stages_skipped)
    return {**pct(totals), "degraded": round(degraded / len(queries), 3)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=PathSettings().data_dir)
    parser.add_argument("--state-dir", type=Path, default=PathSettings().state_dir)
    parser.add_argument("--release", default="2026-01-16")
    parser.add_argument("--embedder", type=Path, default=None, help="trained embedder folder")
    parser.add_argument("--reranker", type=Path, default=None, help="trained re-ranker folder")
    parser.add_argument("--ablations", action="store_true", help="also each new part on its own")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--latency-only", action="store_true", help="only the production latency paths")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "img")
    return parser.parse_args()


@dataclass
class Parts:
    """What every configuration searches: one release's passages, graph, cards and rule book."""

    passages: list
    texts: list[str]
    graph: KnowledgeGraph
    card_db: CardDatabase
    book: RuleBook

    def hybrid(
        self, embedder, vectors, understanding=True, rr=None, budget=float("inf"), deep_budget=float("inf")
    ):
        if rr is not None:
            rr.budget_ms = deep_budget
        return HybridRetriever(
            self.passages,
            vectors,
            embedder,
            graph=self.graph,
            card_db=self.card_db,
            rulebook=self.book,
            cache=TTLCache(0, 1.0),
            tracker=LatencyTracker(budget_ms=budget, window=100_000),
            budget_ms=budget,
            texts=self.texts,
            reranker=rr,
            understanding=understanding,
            deep_budget_ms=deep_budget,
        )


def build_configs(parts: Parts, base: tuple, trained: tuple | None, reranker, ablations: bool) -> dict:
    """name -> (retriever, rerank flag: True = the answer path's deep second stage)."""
    hybrid = parts.hybrid
    configs = {
        "bm25": (BM25Retriever(parts.passages, parts.texts), None),
        "hybrid (before)": (hybrid(*base, understanding=False), False),
        "+ question understanding": (hybrid(*base), False),
        "+ second stage (per-clause search)": (hybrid(*base), True),
    }
    if trained is not None:
        configs["+ trained embedder, first stage"] = (hybrid(*trained), False)
        configs["+ trained embedder, second stage"] = (hybrid(*trained), True)
    if reranker is not None:
        configs["+ cross-encoder (off by default)"] = (hybrid(*(trained or base), rr=reranker), True)
    if ablations and trained is not None:
        configs["hybrid (before) + trained embedder"] = (hybrid(*trained, False), False)
    return configs


def recall_of_configs(configs: dict, qa_dir: Path) -> dict:
    results = {}
    for name, (retriever, rerank) in configs.items():
        timed = Timed(retriever, rerank)
        started = time.perf_counter()
        block = recall_block(timed, qa_dir)
        block["latency_ms"] = {stage: pct(samples) for stage, samples in timed.samples.items()}
        block["seconds"] = round(time.perf_counter() - started, 1)
        results[name] = block
        quiz = block.get("quiz-dev", {})
        print(
            f"{name:36s} quiz r@1 {quiz.get('recall@1', 0):.3f} r@5 {quiz.get('recall@5', 0):.3f} "
            f"r@10 {quiz.get('recall@10', 0):.3f} MRR {quiz.get('mrr', 0):.3f} | "
            + " | ".join(f"{s} r@5 {block[s]['recall@5']:.3f}" for s in SETS[1:] if s in block)
            + f" | total p50 {block['latency_ms'].get('total', {}).get('p50')} ms",
            flush=True,
        )
    return results


def production_latency(parts: Parts, serving: tuple, reranker, queries: list[str]) -> dict:
    settings = KnowledgeSettings()
    budget, deep = settings.retrieval_budget_ms, settings.rerank_budget_ms
    hybrid = parts.hybrid
    latency = {
        "hexcore search (first stage, 20 ms budget)": budgeted_latency(
            hybrid(*serving, budget=budget), queries, rerank=False
        ),
        "answer path (second stage, 150 ms budget)": budgeted_latency(
            hybrid(*serving, budget=budget, deep_budget=deep), queries, rerank=True
        ),
    }
    if reranker is not None:
        latency["answer path + cross-encoder (150 ms budget)"] = budgeted_latency(
            hybrid(*serving, rr=reranker, budget=budget, deep_budget=deep), queries, True
        )
    return latency


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(2)
    settings = KnowledgeSettings()
    out: dict = {"machine": machine(), "release": args.release, "command": " ".join(["python", *sys.argv])}
    doc = load_release(args.data_dir / "rules", args.release)
    cards = load_card_dir(args.data_dir / "cards")
    card_db = CardDatabase(cards, load_nicknames(args.data_dir / "cards" / NICKNAMES_FILE))
    passages = build_passages(doc, cards)
    texts = index_texts(passages, doc)
    parts = Parts(passages, texts, KnowledgeGraph.build(doc, cards), card_db, RuleBook(doc))
    store = RetrieverStore(args.state_dir / "retrievers")
    embedder_dir = args.embedder or store.serving_dir("embedder")
    reranker_dir = args.reranker or store.serving_dir("reranker")
    out["models"] = {"embedder": str(embedder_dir), "reranker": str(reranker_dir)}
    cache_dir = args.state_dir / "index" / "embeddings"
    base_embedder = get_embedder()
    base_vectors, out["index_base"] = vectors_for(
        base_embedder, passages, texts, doc.effective_date, cache_dir
    )
    base, trained = (base_embedder, base_vectors), None
    if embedder_dir:
        embedder = Embedder(str(embedder_dir))
        vectors, out["index_trained"] = vectors_for(embedder, passages, texts, doc.effective_date, cache_dir)
        trained = (embedder, vectors)
    reranker = load_reranker(
        reranker_dir, settings.rerank_depth, settings.rerank_budget_ms, settings.rerank_prior
    )
    configs = build_configs(parts, base, trained, reranker, args.ablations)
    out["configs"] = {} if args.latency_only else recall_of_configs(configs, args.data_dir / "qa")
    questions = [row["question"] for row in load_questions(args.data_dir / "qa" / "quiz-dev.jsonl")]
    queries = questions[: args.latency_queries]
    out["production_latency_ms"] = production_latency(parts, trained or base, reranker, queries)
    print(json.dumps(out["production_latency_ms"], indent=1), flush=True)
    if not args.latency_only:
        out["misses"] = classify_misses(out["configs"], args.data_dir / "qa", doc)
        print(json.dumps({k: v for k, v in out["misses"].items() if k != "examples"}, indent=1))
        out["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
        if args.plots:
            out["plots"] = write_plots(out, args.plots)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def classify_misses(configs: dict, qa_dir: Path, doc) -> dict:
    name = (
        "+ trained embedder, second stage"
        if "+ trained embedder, second stage" in configs
        else list(configs)[3]
    )
    ranks = configs[name].get("quiz-dev", {}).get("ranks", {})
    rows = {str(r.get("id", i)): r for i, r in enumerate(load_questions(qa_dir / "quiz-dev.jsonl"))}
    misses = [qid for qid, rank in ranks.items() if rank != 1]
    wrong = {qid: why for qid in misses if (why := wrong_gold(rows[qid], doc))}
    return {
        "config": name,
        "misses_at_1": len(misses),
        "misses_at_5": sum(1 for q in misses if not ranks[q] or ranks[q] > 5),
        "wrong_gold": len(wrong),
        "wrong_gold_at_5": sum(1 for q in wrong if not ranks[q] or ranks[q] > 5),
        "examples": [
            {"id": q, "question": rows[q]["question"][:160], "why": why} for q, why in list(wrong.items())[:8]
        ],
    }


def write_plots(out: dict, directory: Path) -> list[str]:
    from evaluation.plots import plot_metrics_by_group

    groups = {}
    for metric in ("recall@1", "recall@5", "recall@10", "mrr"):
        groups[metric] = {
            name: c["quiz-dev"][metric] for name, c in out["configs"].items() if "quiz-dev" in c
        }
    path = plot_metrics_by_group(
        groups,
        list(out["configs"]),
        directory / "retrieval-configs.png",
        "quiz-dev.jsonl: each retrieval configuration",
    )
    return [str(path)]


if __name__ == "__main__":
    main()
