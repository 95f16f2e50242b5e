"""Throughput and latency of ``LocalEngine`` at 1, 4, 16 and 32 concurrent requests over mixed experts.

Each level runs ``--requests`` questions (default: max(8, 2 x level)) with that many clients asking at once;
each request names one expert, cycling through all five, so batches mix LoRA adapters. Level 1 is the
sequential baseline; the target is 16 concurrent >= 3x its throughput (answers per second).

    python bench/bench_concurrency.py                       # settings from the environment (HEXCORE_*)
    python bench/bench_concurrency.py --levels 1,16 --max-new-tokens 64 --json results.json

Everything runs in-process on the real engine (model, adapters, retrieval); warm-up requests run first so
one-time costs (lazy imports, first kernels) are not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.api import AnswerRequest, Expert  # noqa: E402
from engine.local import LocalEngine  # noqa: E402
from hexcore.settings import EngineSettings, KnowledgeSettings, Settings  # noqa: E402

QUESTIONS = [
    "How does trample work?",
    "What does flying do?",
    "How does deathtouch work with trample?",
    "What happens when a creature with lifelink deals damage?",
    "Can I respond to a spell by casting an instant?",
    "What is the stack?",
    "How does first strike change combat damage?",
    "What does hexproof protect against?",
    "When does a creature with haste get to attack?",
    "How does ward work?",
    "What happens if both players would lose at the same time?",
    "What is a mulligan and how does it work?",
    "How do +1/+1 and -1/-1 counters interact?",
    "What does vigilance do?",
    "Can a creature with defender block?",
    "What is the legend rule?",
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, 100 * q, method="higher"))


async def run_level(engine: LocalEngine, level: int, total: int, max_new_tokens: int) -> dict:
    experts = itertools.cycle(Expert)
    questions = itertools.cycle(QUESTIONS)
    requests = [
        AnswerRequest(next(questions), experts=(next(experts),), max_new_tokens=max_new_tokens)
        for _ in range(total)
    ]
    pending = list(reversed(requests))
    latencies: list[float] = []
    tokens: list[int] = []
    while engine.worker.status().in_flight:  # let the previous level's last batch be counted first
        await asyncio.sleep(0.01)
    before = engine.worker.status().batches

    async def client() -> None:
        while pending:
            request = pending.pop()
            started = time.perf_counter()
            answer = await engine.ask(request)
            latencies.append(time.perf_counter() - started)
            tokens.append(answer.generated_tokens)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(level)))
    wall = time.perf_counter() - started
    while engine.worker.status().in_flight:  # the worker counts a batch just after its last answer
        await asyncio.sleep(0.01)
    records = list(engine.records)[-total:]
    batch_sizes = [r.batch_size for r in records]
    return {
        "concurrency": level,
        "requests": total,
        "wall_s": round(wall, 2),
        "answers_per_s": round(total / wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 2),
        "mean_new_tokens": round(statistics.mean(tokens), 1),
        "p50_s": round(percentile(latencies, 0.5), 2),
        "p95_s": round(percentile(latencies, 0.95), 2),
        "worker_batches": engine.worker.status().batches - before,
        "max_rows_decoded_together": max(batch_sizes),
        "mean_prefill_s": round(statistics.mean(r.timings_ms.get("prefill", 0.0) for r in records) / 1000, 3),
        "mean_decode_s": round(statistics.mean(r.timings_ms.get("generate", 0.0) for r in records) / 1000, 3),
        "latencies_s": [round(x, 3) for x in latencies],
    }


async def main(args: argparse.Namespace) -> list[dict]:
    engine_values = {"queue_size": max(64, 2 * max(args.levels))}
    if args.batch_size:
        engine_values["batch_size"] = args.batch_size
    knowledge_values = {"context_tokens": args.context_tokens} if args.context_tokens else {}
    settings = Settings(
        engine=EngineSettings(**engine_values), knowledge=KnowledgeSettings(**knowledge_values)
    )
    engine = LocalEngine(settings, progress=lambda m: print(m, file=sys.stderr))
    await engine.start()
    try:
        for question in QUESTIONS[:2]:  # warm-up
            await engine.ask(AnswerRequest(question, max_new_tokens=4))
        results = []
        for level in args.levels:
            total = args.requests or max(8, 2 * level)
            result = await run_level(engine, level, total, args.max_new_tokens)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "latencies_s"}), flush=True)
        base = results[0]["answers_per_s"] if results and results[0]["concurrency"] == 1 else None
        if base:
            for result in results:
                result["speedup_vs_sequential"] = round(result["answers_per_s"] / base, 2)
            # Batching shares decode steps, not the rest of a request (prefill, retrieval, routing): even
            # with decoding free, throughput could not exceed 1 / (sequential time per request - its decode).
            first = results[0]
            per_request = first["wall_s"] / first["requests"]
            results[0]["bound_if_decoding_were_free"] = round(
                per_request / (per_request - first["mean_decode_s"]), 2
            )
        return results
    finally:
        await engine.close()


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    import torch

    settings = EngineSettings()
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
        f"max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size or settings.batch_size}, "
        f"context_tokens={args.context_tokens or KnowledgeSettings().context_tokens}",
        "",
        "| concurrent | requests | wall s | answers/s | tokens/s | p50 s | p95 s | batches | rows together | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['wall_s']} | {r['answers_per_s']} | {r['tokens_per_s']} "
            f"| {r['p50_s']} | {r['p95_s']} | {r['worker_batches']} | {r['max_rows_decoded_together']} "
            f"| {r.get('speedup_vs_sequential', '-')} |"
        )
    bound = results[0].get("bound_if_decoding_were_free") if results else None
    if bound:
        first = results[0]
        lines += [
            "",
            f"sequential: {first['wall_s'] / first['requests']:.2f} s a request, of which prefill "
            f"{first['mean_prefill_s']:.2f} s and decoding {first['mean_decode_s']:.2f} s; batching shares only the "
            f"decoding, so no concurrency level can exceed {bound}x here (Amdahl).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32])
    parser.add_argument(
        "--requests", type=int, default=0, help="Requests per level (default max(8, 2 x level))."
    )
    parser.add_argument("--max-new-tokens", type=int, default=160, help="Answer cap (default: the engine's).")
    parser.add_argument("--batch-size", type=int, default=0, help="Engine batch size (default: settings).")
    parser.add_argument("--context-tokens", type=int, default=0, help="Context budget (default: settings).")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: HEXCORE_ENGINE_THREADS)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument(
        "--plots",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "img",
        help="Write the latency chart (PNG) here.",
    )
    args = parser.parse_args()
    if args.threads:
        os.environ["HEXCORE_ENGINE_THREADS"] = str(args.threads)  # the model loader applies it
    results = asyncio.run(main(args))
    print(markdown(results, args))
    if args.plots:
        from evaluation.plots import plot_latency_distributions

        chart = plot_latency_distributions(
            {f"{r['concurrency']} concurrent": r["latencies_s"] for r in results},
            args.plots / "concurrency-latency.png",
            f"Answer latency per request, mixed experts, {args.max_new_tokens} new tokens max",
            unit="s",
        )
        print(f"chart: {chart}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
