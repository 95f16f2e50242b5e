"""Retrieval recall@k on a question set with gold rule references (evaluation only, never training).

A question is a hit when at least one of its gold rules, or a gold rule's parent (505.6a -> 505.6), is
among the rule numbers of the top-k results. The parent counts because a parent rule passage is what a
reader would open to find the sub-rule. Questions without gold rules (tournament-policy questions in
quiz-dev.jsonl) cannot be scored and are listed as skipped, not counted as misses or hits.

Reads JSONL with ``question`` and ``rule_refs`` (quiz-dev.jsonl) or ``gold_cr_rules`` (multihop-dev.jsonl,
definitions-dev.jsonl); ``difficulty`` (or ``stratum``) groups the per-group recall.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from knowledge.errors import DataMissing
from knowledge.models import RetrievalResult


class Retriever(Protocol):
    def search(self, query: str, k: int = 8, kinds: Iterable[str] | None = None) -> list[RetrievalResult]: ...


@dataclass(slots=True)
class QuestionResult:
    id: str
    difficulty: str
    question: str
    gold: list[str]
    retrieved: list[str]
    """Rule numbers of the top-k results, best first."""
    hit: bool
    matched: str | None = None
    """The retrieved rule number that made it a hit."""
    rank: int | None = None
    """1-based rank of the first accepted rule within the top ``depth`` results (None: not found)."""


@dataclass(slots=True)
class RecallReport:
    k: int
    total: int
    scored: int
    hits: int
    recall: float
    by_difficulty: dict[str, dict[str, float]]
    """difficulty -> {"recall", "hits", "scored"}."""
    skipped: list[str] = field(default_factory=list)
    """Ids of questions without gold rules."""
    results: list[QuestionResult] = field(default_factory=list)
    mrr: float = 0.0
    """Mean reciprocal rank of the first accepted rule within the top ``depth`` (0 when not found)."""
    recall_at: dict[int, float] = field(default_factory=dict)
    """Recall at each cut-off in ``CUTOFFS`` (and ``k``), from one ranking of depth ``max(CUTOFFS + k)``."""

    def to_json(self, with_results: bool = True) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "results"}
        if with_results:
            out["results"] = [asdict(r) for r in self.results]
        return out


def parent_rule(number: str) -> str | None:
    """505.6a -> 505.6, 505.6 -> 505, 505 -> None (chapters' parents are sections, never gold)."""
    stripped = number.rstrip("abcdefghijklmnopqrstuvwxyz")
    if stripped != number:
        return stripped
    if "." in number:
        return number.split(".")[0]
    return None


def accepted_numbers(gold: Sequence[str]) -> set[str]:
    accepted = set(gold)
    accepted.update(p for p in map(parent_rule, gold) if p is not None)
    return accepted


CUTOFFS = (1, 5, 10)
"""Cut-offs every report carries beside ``k``: recall@1 is what an answer quoting its top rule gets right."""

ALL = "all"
"""The group of a question that names neither ``difficulty`` nor ``stratum``."""


def gold_rules(row: Mapping) -> list[str]:
    """A question's gold rule numbers: ``rule_refs`` (quiz-dev) or ``gold_cr_rules`` (multihop, definitions)."""
    return [str(g) for g in (row.get("rule_refs") or row.get("gold_cr_rules") or [])]


def difficulty_of(row: Mapping) -> str:
    """A question's group: ``difficulty`` (quiz-dev) or ``stratum`` (multihop), else ``all``."""
    return str(row.get("difficulty") or row.get("stratum") or ALL)


def load_questions(qa_path: str | Path) -> list[dict]:
    path = Path(qa_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataMissing(f"Question file {path} not found.") from exc
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataMissing(f"{path}:{n} is not JSON: {exc}") from exc
        if "question" not in row:
            raise DataMissing(f"{path}:{n} has no 'question' field")
        rows.append(row)
    return rows


def evaluate_recall(
    retriever: Retriever, qa_path: str | Path, k: int = 5, kinds: Iterable[str] | None = ("rule",)
) -> RecallReport:
    """Recall@k of ``retriever`` on the questions in ``qa_path`` (searching rule passages by default),
    with recall@1/5/10 and MRR from the same ranking."""
    kinds = tuple(kinds) if kinds is not None else None
    depth = max(k, *CUTOFFS)
    results: list[QuestionResult] = []
    skipped: list[str] = []
    for i, row in enumerate(load_questions(qa_path)):
        qid = str(row.get("id", i))
        gold = gold_rules(row)
        if not gold:
            skipped.append(qid)
            continue
        found = retriever.search(row["question"], k=depth, kinds=kinds)
        ranking = [r.passage.citation.id for r in found if r.passage.citation.kind == "rule"][:depth]
        accepted = accepted_numbers(gold)
        rank = next((n for n, number in enumerate(ranking, 1) if number in accepted), None)
        hit = rank is not None and rank <= k
        matched = ranking[rank - 1] if hit else None
        results.append(
            QuestionResult(qid, difficulty_of(row), row["question"], gold, ranking[:k], hit, matched, rank)
        )
    return _report(results, skipped, k)


def _recall(results: Sequence[QuestionResult], cut: int) -> float:
    return sum(r.rank is not None and r.rank <= cut for r in results) / len(results) if results else 0.0


def _mrr(results: Sequence[QuestionResult]) -> float:
    return sum(1.0 / r.rank for r in results if r.rank) / len(results) if results else 0.0


def _report(results: list[QuestionResult], skipped: list[str], k: int) -> RecallReport:
    groups: dict[str, list[QuestionResult]] = {}
    for r in results:
        groups.setdefault(r.difficulty, []).append(r)
    hits = sum(r.hit for r in results)
    cuts = sorted({*CUTOFFS, k})
    return RecallReport(
        k=k,
        total=len(results) + len(skipped),
        scored=len(results),
        hits=hits,
        recall=hits / len(results) if results else 0.0,
        by_difficulty={
            name: {
                "recall": sum(r.hit for r in rs) / len(rs),
                "hits": sum(r.hit for r in rs),
                "scored": len(rs),
                **{f"recall@{c}": _recall(rs, c) for c in cuts},
                "mrr": _mrr(rs),
            }
            for name, rs in sorted(groups.items())
        },
        skipped=skipped,
        results=results,
        mrr=_mrr(results),
        recall_at={c: _recall(results, c) for c in cuts},
    )
