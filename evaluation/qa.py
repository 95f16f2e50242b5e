"""End-to-end answer quality and latency on a question set (``hexcore eval qa``).

Each question is asked through the engine's public API (``Engine.generate``), one at a time, so a question's
latency is its own: no queueing behind another question. Per question it records the wall latency, the time
to the first streamed token, the answer, its citations and experts, and scores them against the row's gold
(``evaluation.scoring``): citation recall and precision against ``rule_refs`` / ``gold_cr_rules``, entity
recall against ``gold_entities``, and agreement with the reference ``answer`` (embedding cosine and keyword
overlap). Rows are grouped by ``difficulty`` (quiz-dev.jsonl) or ``stratum`` (multihop-dev.jsonl).

Nothing is lost: a question whose generation fails with an engine error is kept with its error (counted in
``errors``, left out of quality and latency means), and an interrupted run (Ctrl-C, a cancelled task)
returns the report of the questions finished so far, marked ``interrupted``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.api import Answer, AnswerRequest, Engine, Expert, LeadFound, TokenDelta
from engine.errors import EngineError
from evaluation import scoring
from evaluation.scoring import Encoder
from knowledge.recall import ALL, difficulty_of, gold_rules

QUALITY_METRICS = ("citation_recall", "citation_precision", "entity_recall", "similarity", "keyword_f1")
USER_METRICS = ("lead_precision", "prose_shown", "shown_prose_cites", "calculator")
"""What a user sees first: the lead rule is a gold rule (or its family), prose is shown, shown prose cites."""
MEAN_METRICS = (*QUALITY_METRICS, "keyword_recall", "keyword_precision", "prose_cites", *USER_METRICS)
BOARD_STATE_TAGS = frozenset(
    {
        "combat",
        "blocking",
        "multiple-blockers",
        "damage-assignment",
        "power-toughness",
        "counters",
        "layers",
        "state-based-actions",
        "life-total",
    }
)
"""Question tags (quiz-dev.jsonl) of board-state questions: the calculator's coverage is counted over these."""
SAMPLE_ANSWERS = 8
"""Answers printed side by side with the reference answers in the Markdown report."""
PLOT_METRICS = {
    "citation recall": "citation_recall",
    "citation precision": "citation_precision",
    "similarity": "similarity",
    "keyword F1": "keyword_f1",
}
QUALITY_PLOT = "qa-quality-by-difficulty.png"
LATENCY_PLOT = "qa-latency.png"

Progress = Callable[[int, int, "QuestionResult"], None]
"""Called after each question with (done, total, its result)."""


@dataclass(slots=True)
class QuestionResult:
    id: str
    difficulty: str
    question: str
    reference: str | None
    gold_rules: list[str]
    gold_entities: list[str]
    answer: str = ""
    citations: list[dict[str, str | None]] = field(default_factory=list)
    """``{"id", "kind", "release"}`` per citation, in the answer's order."""
    experts: list[str] = field(default_factory=list)
    generated_tokens: int = 0
    latency_s: float = 0.0
    """Wall time from submitting the request to the final answer (or the error)."""
    ttft_s: float | None = None
    """Time to the first streamed token; None when nothing was streamed."""
    tokens_per_s: float | None = None
    citation_recall: float | None = None
    citation_precision: float | None = None
    entity_recall: float | None = None
    similarity: float | None = None
    keyword_recall: float | None = None
    keyword_precision: float | None = None
    keyword_f1: float | None = None
    prose_cites: float | None = None
    """1.0 when the generated prose (shown or not) cites a rule from its quoted passages, else 0.0."""
    lead: dict[str, str | None] | None = None
    """The rule the answer leads with: ``{"id", "kind", "release", "text"}`` (None: nothing relevant found)."""
    lead_s: float | None = None
    """Time to the lead (the ``LeadFound`` event): when a user first reads something."""
    lead_precision: float | None = None
    """1.0 when the lead is a gold rule, its parent or a sub-rule of it; 0.0 otherwise (no lead included);
    None when the row has no gold rules."""
    prose_shown: bool | None = None
    """Whether the answer showed generated prose (it passed the support check)."""
    shown_prose_cites: float | None = None
    """For shown prose: 1.0 when it cites a quoted rule (None when no prose was shown)."""
    draft: str | None = None
    """Generated prose that was not shown (failed the support check), for reading the report."""
    support: str | None = None
    verdict: str | None = None
    calculator: float | None = None
    """1.0 when the rules calculator answered (the answer has a verdict), else 0.0."""
    board_state: bool = False
    """Tagged as a board-state question (``BOARD_STATE_TAGS``)."""
    error: str | None = None
    """``ErrorType: message`` when generation failed; the quality fields then stay None."""

    @property
    def cited_rules(self) -> list[str]:
        return [str(c["id"]) for c in self.citations if c["kind"] == "rule"]


@dataclass(frozen=True, slots=True)
class Mean:
    """The mean of the defined values of a metric and how many were defined (None when none were)."""

    mean: float | None
    defined: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Mean:
        defined = [v for v in values if v is not None]
        return cls(sum(defined) / len(defined) if defined else None, len(defined))


@dataclass(slots=True)
class GroupSummary:
    questions: int
    answered: int
    errors: int
    metrics: dict[str, Mean]
    """Each of ``MEAN_METRICS`` over the answered questions."""
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_max_s: float | None
    ttft_p50_s: float | None
    tokens_per_s: float | None
    """All generated tokens over all decoding time of the answered questions."""

    def mean(self, metric: str) -> float | None:
        return self.metrics[metric].mean

    def to_json(self) -> dict:
        counts = {"questions": self.questions, "answered": self.answered, "errors": self.errors}
        metrics = {name: {"mean": m.mean, "defined": m.defined} for name, m in self.metrics.items()}
        rest = {k: v for k, v in asdict(self).items() if k not in counts and k != "metrics"}
        return counts | metrics | rest


@dataclass(slots=True)
class QAReport:
    results: list[QuestionResult]
    planned: int
    """Questions asked for; more than ``len(results)`` when the run was interrupted."""
    summary: GroupSummary
    by_difficulty: dict[str, GroupSummary]
    """In order of first appearance in the question set."""
    elapsed_s: float
    interrupted: bool = False
    source: str | None = None
    experts: list[str] | None = None
    max_new_tokens: int | None = None

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "planned": self.planned,
            "questions": len(self.results),
            "interrupted": self.interrupted,
            "elapsed_s": round(self.elapsed_s, 3),
            "experts": self.experts,
            "max_new_tokens": self.max_new_tokens,
            "summary": self.summary.to_json(),
            "calculator": self.calculator_coverage(),
            "by_difficulty": {name: group.to_json() for name, group in self.by_difficulty.items()},
            "results": [asdict(r) for r in self.results],
        }

    def calculator_coverage(self) -> dict[str, int | float | None]:
        """How many questions the calculator answered: of all, and of the board-state ones."""
        answered = [r for r in self.results if r.error is None]
        board = [r for r in answered if r.board_state]
        taken = sum(bool(r.calculator) for r in board)
        return {
            "taken": sum(bool(r.calculator) for r in answered),
            "board_state_questions": len(board),
            "board_state_taken": taken,
            "board_state_coverage": taken / len(board) if board else None,
        }

    def to_markdown(self, sample: int = SAMPLE_ANSWERS) -> str:
        """One row per difficulty, then "all": questions, lead precision, prose shown, citation recall and
        precision, similarity, keyword F1 and median latency ("–": no defined value); then ``sample``
        answers side by side with the reference answers."""
        lines = [
            "| difficulty | n | lead precision | prose shown | cit. recall | cit. precision | similarity "
            "| keyword F1 | p50 latency (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = dict(self.by_difficulty)
        if list(rows) == [ALL]:  # ungrouped questions: the total row says it all
            rows = {}
        rows[f"**{ALL}**" if rows else ALL] = self.summary
        for name, group in rows.items():
            cells = [_cell(group.mean(m)) for m in ("lead_precision", "prose_shown")]
            cells += [_cell(group.mean(m)) for m in ("citation_recall", "citation_precision")]
            cells += [_cell(group.mean(m)) for m in ("similarity", "keyword_f1")]
            latency = "–" if group.latency_p50_s is None else f"{group.latency_p50_s:.2f}"
            lines.append(f"| {name} | {group.questions} | {' | '.join(cells)} | {latency} |")
        samples = [r for r in self.results if r.error is None][:sample]
        if samples:
            lines += [
                "",
                f"Sample answers ({len(samples)} of {len(self.results)}), as a user reads them:",
                "",
            ]
            lines += [line for r in samples for line in _sample_lines(r)]
        return "\n".join(lines)

    def totals_line(self) -> str:
        s = self.summary
        parts = [f"{len(self.results)} questions"]
        if self.interrupted:
            parts[0] += f" of {self.planned} (interrupted)"
        parts.append(f"{s.errors} errors")
        for label, metric in (("citation recall", "citation_recall"), ("entity recall", "entity_recall")):
            m = s.metrics[metric]
            if m.defined:
                parts.append(f"{label} {_cell(m.mean)} over {m.defined}")
        lead = s.metrics["lead_precision"]
        if lead.defined and lead.mean is not None:
            parts.append(f"lead precision {lead.mean:.2f} over {lead.defined}")
        shown = s.metrics["prose_shown"]
        if shown.defined and shown.mean is not None:
            parts.append(f"prose shown in {shown.mean:.0%}")
        cites = s.metrics["shown_prose_cites"]
        if cites.defined and cites.mean is not None:
            parts.append(f"shown prose cites a quoted rule in {cites.mean:.0%}")
        calc = self.calculator_coverage()
        if calc["taken"]:
            parts.append(
                f"calculator answered {calc['taken']} ({calc['board_state_taken']} of "
                f"{calc['board_state_questions']} board-state questions)"
            )
        if s.latency_p50_s is not None:
            parts.append(
                f"latency p50 {s.latency_p50_s:.2f} s, p95 {s.latency_p95_s:.2f} s, max {s.latency_max_s:.2f} s"
            )
        if s.tokens_per_s is not None:
            parts.append(f"{s.tokens_per_s:.1f} tokens/s")
        return "; ".join(parts) + f"; {self.elapsed_s:.0f} s in all"


def _sample_lines(r: QuestionResult) -> list[str]:
    """One answer beside its reference: the lead rule, then the verdict and the shown prose (or the draft
    that was held back, marked so)."""
    lead = f"CR {r.lead['id']}" if r.lead else "(no rule found)"
    hit = (
        {1.0: " (gold)", 0.0: " (not gold)"}.get(r.lead_precision, "") if r.lead_precision is not None else ""
    )
    shown = r.answer if r.prose_shown else f"(not shown: {r.support}) draft: {r.draft or '-'}"
    lines = [f"- **Q{r.id}** {r.question}", f"  - lead: {lead}{hit}; gold: {', '.join(r.gold_rules) or '-'}"]
    if r.verdict:
        lines.append(f"  - verdict: {r.verdict}")
    lines += [f"  - prose: {_one_line(shown)}", f"  - reference: {_one_line(r.reference or '-')}"]
    return lines


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


# ---------------------------------------------------------------------------------------------- rows


def _result_for(index: int, row: Mapping) -> QuestionResult:
    reference = row.get("answer")
    return QuestionResult(
        id=str(row.get("id", index)),
        difficulty=difficulty_of(row),
        question=str(row["question"]),
        reference=str(reference) if reference else None,
        gold_rules=gold_rules(row),
        gold_entities=[str(e) for e in row.get("gold_entities") or []],
        board_state=bool(BOARD_STATE_TAGS & set(row.get("tags") or [])),
    )


# ---------------------------------------------------------------------------------------------- run


async def evaluate_qa(
    engine: Engine,
    rows: Sequence[Mapping],
    *,
    embedder: Encoder | None,
    max_new_tokens: int | None = None,
    experts: Sequence[Expert] | None = None,
    progress: Progress | None = None,
) -> QAReport:
    """Ask every row's question, score the answers, and summarise them overall and per difficulty.

    ``embedder`` encodes texts for the similarity score (None leaves similarity undefined); all answers and
    references are encoded in one batch at the end, after the engine has finished generating. ``rows`` are
    dicts as ``knowledge.recall.load_questions`` returns them. Cancelling the task returns the report of the
    finished questions marked ``interrupted`` (the question in flight is aborted in the engine and dropped).
    """
    started = time.perf_counter()
    results: list[QuestionResult] = []
    interrupted = False
    fixed = tuple(experts) if experts else None
    try:
        for i, row in enumerate(rows):
            result = _result_for(i, row)
            request = AnswerRequest(result.question, experts=fixed, max_new_tokens=max_new_tokens)
            await _ask(engine, request, result)
            _score(result)
            results.append(result)
            if progress is not None:
                progress(len(results), len(rows), result)
    except (asyncio.CancelledError, KeyboardInterrupt) as exc:
        # The caller wants what is done so far: stop asking, keep the answers. uncancel() because the
        # cancellation is handled here, so the task's later awaits (closing the engine) run normally.
        interrupted = True
        task = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and task is not None:
            task.uncancel()
    if embedder is not None:
        pairs = [(r.answer, r.reference) for r in results if r.error is None and r.reference]
        if pairs:
            values = iter(await asyncio.to_thread(scoring.similarities, embedder, pairs))
            for r in results:
                if r.error is None and r.reference:
                    r.similarity = next(values)
    return QAReport(
        results=results,
        planned=len(rows),
        summary=summarise(results),
        by_difficulty={name: summarise(group) for name, group in _groups(results).items()},
        elapsed_s=time.perf_counter() - started,
        interrupted=interrupted,
        experts=[e.value for e in fixed] if fixed else None,
        max_new_tokens=max_new_tokens,
    )


async def _ask(engine: Engine, request: AnswerRequest, result: QuestionResult) -> None:
    """Generate one answer into ``result``: latency, first-token time, text, citations; or the error."""
    answer: Answer | None = None
    stream = engine.generate(request)
    submitted = time.perf_counter()
    try:
        async for event in stream:
            if isinstance(event, TokenDelta):
                if result.ttft_s is None:
                    result.ttft_s = time.perf_counter() - submitted
            elif isinstance(event, LeadFound):
                result.lead_s = time.perf_counter() - submitted
            elif isinstance(event, Answer):
                answer = event
        if answer is None:
            raise EngineError("the engine finished without an answer")
    except EngineError as exc:
        result.latency_s = time.perf_counter() - submitted
        result.error = f"{type(exc).__name__}: {exc}"
        return
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:  # a cancelled or failed consumer aborts the request in the engine
            await aclose()
    result.latency_s = time.perf_counter() - submitted
    result.answer = answer.text
    result.prose_cites = float(bool(answer.text_cites))
    if answer.lead is not None:
        citation = answer.lead.passage.citation
        result.lead = {
            "id": citation.id,
            "kind": citation.kind,
            "release": citation.release,
            "text": answer.lead.passage.text,
        }
    result.prose_shown = answer.prose_shown
    result.draft, result.support, result.verdict = answer.draft, answer.support, answer.verdict
    result.calculator = float(answer.verdict is not None)
    result.citations = [{"id": c.id, "kind": c.kind, "release": c.release} for c in answer.citations]
    result.experts = [e.value for e in answer.experts]
    result.generated_tokens = answer.generated_tokens
    decode_ms = answer.timings_ms.get("generate")
    decode_s = decode_ms / 1000 if decode_ms else result.latency_s - (result.ttft_s or 0.0)
    if answer.generated_tokens and decode_s > 0:
        result.tokens_per_s = answer.generated_tokens / decode_s


def _score(r: QuestionResult) -> None:
    """The scores that need no model (similarity is batched at the end); none for a failed question."""
    if r.error is not None:
        return
    r.citation_recall = scoring.citation_recall(r.gold_rules, r.cited_rules)
    if r.gold_rules:
        lead = r.lead["id"] if r.lead and r.lead["kind"] == "rule" else None
        r.lead_precision = float(
            lead is not None and any(scoring.rule_matches(g, lead) for g in r.gold_rules)
        )
    if r.prose_shown:
        r.shown_prose_cites = r.prose_cites
    r.citation_precision = scoring.citation_precision(r.gold_rules, r.cited_rules)
    names = [str(c["id"]) for c in r.citations if c["kind"] != "rule"]
    r.entity_recall = scoring.entity_recall(r.gold_entities, names, r.answer)
    if r.reference:
        overlap = scoring.keyword_overlap(r.reference, r.answer)
        r.keyword_recall, r.keyword_precision, r.keyword_f1 = overlap.recall, overlap.precision, overlap.f1


# ---------------------------------------------------------------------------------------------- summary


def _groups(results: Sequence[QuestionResult]) -> dict[str, list[QuestionResult]]:
    groups: dict[str, list[QuestionResult]] = {}
    for r in results:
        groups.setdefault(r.difficulty, []).append(r)
    return groups


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1): a value that was measured, never interpolated."""
    if not values:
        return None
    return float(np.percentile(values, 100 * q, method="inverted_cdf"))


def summarise(results: Sequence[QuestionResult]) -> GroupSummary:
    answered = [r for r in results if r.error is None]
    latencies = [r.latency_s for r in answered]
    decode_s = sum(r.generated_tokens / r.tokens_per_s for r in answered if r.tokens_per_s)
    tokens = sum(r.generated_tokens for r in answered if r.tokens_per_s)
    return GroupSummary(
        questions=len(results),
        answered=len(answered),
        errors=len(results) - len(answered),
        metrics={name: Mean.of([getattr(r, name) for r in answered]) for name in MEAN_METRICS},
        latency_p50_s=percentile(latencies, 0.5),
        latency_p95_s=percentile(latencies, 0.95),
        latency_max_s=max(latencies) if latencies else None,
        ttft_p50_s=percentile([r.ttft_s for r in answered if r.ttft_s is not None], 0.5),
        tokens_per_s=tokens / decode_s if decode_s > 0 else None,
    )


# ---------------------------------------------------------------------------------------------- charts


def write_plots(report: QAReport, directory: str | Path) -> list[Path]:
    """``qa-quality-by-difficulty.png`` (the quality means per difficulty and overall) and
    ``qa-latency.png`` (latency distribution per difficulty, seconds) in ``directory``; their paths."""
    from evaluation.plots import plot_latency_distributions, plot_metrics_by_group

    directory = Path(directory)
    source = f" ({Path(report.source).name})" if report.source else ""
    groups = dict(report.by_difficulty)
    if list(groups) != [ALL]:
        groups[ALL] = report.summary
    quality = {
        name: {label: v for label, metric in PLOT_METRICS.items() if (v := g.mean(metric)) is not None}
        for name, g in groups.items()
    }
    counts = {name: g.answered for name, g in groups.items()}
    latency = {
        name: [r.latency_s for r in rs if r.error is None] for name, rs in _groups(report.results).items()
    }
    return [
        plot_metrics_by_group(
            quality, list(PLOT_METRICS), directory / QUALITY_PLOT, f"Answer quality{source}", counts=counts
        ),
        plot_latency_distributions(latency, directory / LATENCY_PLOT, f"Answer latency{source}", unit="s"),
    ]
