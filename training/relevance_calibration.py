"""Calibration of the relevance threshold (``engine.pipeline.RELEVANCE_THRESHOLD``), from the rules alone.

In-domain questions: the situation of each CR "Example:" paragraph (the sentences before its conclusion),
which the rules do answer. Off-topic questions: ``training/data/offtopic_questions.txt``, written for this
purpose. The score is the one the answer path checks: the cosine between the question and the best sentence
of the lead that ``knowledge.lead.LeadSelector`` picks among the retrieved rules. The threshold is the
highest one that keeps ``keep`` of the in-domain questions (a relevant question must never be turned away),
reported with the share of off-topic ones it turns away. The evaluation question sets are never read here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.support import split_prose
from knowledge.models import RulesDocument

OFFTOPIC = Path(__file__).parent / "data" / "offtopic_questions.txt"


def in_domain_questions(doc: RulesDocument, limit: int = 200) -> list[str]:
    """Situations of CR examples: questions the rules answer."""
    questions = []
    for rule in doc.rules.values():
        for example in rule.examples:
            sentences = split_prose(example)
            if len(sentences) >= 2:
                questions.append(" ".join(sentences[:-1]))
    step = max(1, len(questions) // limit)
    return questions[::step][:limit]


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
    score: Callable[[str], float], in_domain: Sequence[str], offtopic: Sequence[str], keep: float = 0.99
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
