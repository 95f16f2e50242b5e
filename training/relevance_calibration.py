"""Calibration of the relevance threshold (``engine.pipeline.RELEVANCE_THRESHOLD``), from the rules alone.

In-domain questions: the situation of each CR "Example:" paragraph (the sentences before its conclusion),
which the rules do answer. Off-topic questions: ``training/data/offtopic_questions.txt``, written for this
purpose. The score is the one the answer path checks: the cosine between the question and the best sentence
of the lead that ``knowledge.lead.LeadSelector`` picks among the retrieved rules. The threshold is the
highest one that keeps ``KEEP`` of the in-domain questions (a relevant question turned away costs more than
an off-topic one answered with a plainly unrelated rule),
reported with the share of off-topic ones it turns away. The evaluation question sets are never read here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from knowledge.models import RulesDocument
from training.support_calibration import worked_examples

OFFTOPIC = Path(__file__).parent / "data" / "offtopic_questions.txt"
KEEP = 0.98
"""Share of the rules' own questions the threshold must let through."""


def in_domain_questions(doc: RulesDocument, limit: int = 200) -> list[str]:
    """Questions the rules answer: half long (the situations of CR examples), half short (a glossary term
    asked about the way players ask: "How does trample work?", "What is a token?")."""
    long = [situation for _, _, situation, _ in worked_examples(doc)]
    forms = ("What is {}?", "How does {} work?", "What happens with {}?")
    short = [forms[i % len(forms)].format(term.lower()) for i, term in enumerate(doc.glossary)]
    return _spread(long, limit // 2) + _spread(short, limit - limit // 2)


def _spread(items: list[str], n: int) -> list[str]:
    """``n`` items taken evenly across ``items`` (all of them when there are fewer)."""
    step = max(1, len(items) // max(1, n))
    return items[::step][:n]


def offtopic_questions(path: Path = OFFTOPIC) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@dataclass(frozen=True, slots=True)
class RelevanceCalibration:
    threshold: float
    kept_in_domain: float
    rejected_offtopic: float
    in_domain: int
    offtopic: int


def calibrate_relevance(
    score: Callable[[str], float], in_domain: Sequence[str], offtopic: Sequence[str], keep: float = KEEP
) -> RelevanceCalibration:
    """The highest threshold (steps of 0.01) that keeps ``keep`` of ``in_domain``; ``score`` is the lead score."""
    pos = sorted(score(q) for q in in_domain)
    neg = [score(q) for q in offtopic]
    threshold = round(pos[int((1 - keep) * len(pos))] - 0.005, 2)
    return RelevanceCalibration(
        threshold,
        sum(p >= threshold for p in pos) / len(pos),
        sum(n < threshold for n in neg) / len(neg),
        len(pos),
        len(neg),
    )
