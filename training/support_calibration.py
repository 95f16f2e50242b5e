"""Calibration data for the prose support check (``engine.support``), built from the rules alone.

A CR "Example:" paragraph is a small worked answer: its first sentences set up a situation (the question),
its last sentence concludes by applying the rule (the answer). So each example gives
- a *supported* case: the conclusion, against its own rule's text and its situation;
- an *unsupported* case: the conclusion of another rule's example from the same section (so about the same
  kind of thing, with many of the same words, but not following from this rule), against this rule's text
  and situation, the way a small model's plausible but wrong sentence would sit under a quoted rule.
The threshold is chosen for the precision users need (few unsupported conclusions shown) and reported
with the share of supported ones it keeps. The evaluation question sets are never read here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from engine.support import sentence_support, split_prose
from knowledge.models import RulesDocument

TARGET_REJECTION = 0.95
"""Share of unsupported conclusions the threshold must keep out."""


@dataclass(frozen=True, slots=True)
class SupportCase:
    rule: str
    conclusion: str
    passage: str
    situation: str
    supported: bool


def worked_examples(doc: RulesDocument) -> list[tuple[str, str, str, str]]:
    """(rule number, rule text, situation, conclusion) of every CR example of two or more sentences: its
    last sentence concludes, the ones before set up the situation."""
    worked = []
    for number, rule in doc.rules.items():
        for example in rule.examples:
            sentences = split_prose(example)
            if len(sentences) >= 2:
                worked.append((number, rule.text, " ".join(sentences[:-1]), sentences[-1]))
    return worked


def build_cases(doc: RulesDocument, seed: int = 0) -> list[SupportCase]:
    """Supported and unsupported (conclusion, passage, situation) cases from every example with a situation."""
    worked = worked_examples(doc)
    rng = random.Random(seed)
    cases: list[SupportCase] = []
    for number, text, situation, conclusion in worked:
        cases.append(SupportCase(number, conclusion, text, situation, True))
        # Another rule of the same section (702.19 trample vs 702.2 deathtouch): about the same kind of
        # thing, so the words overlap, but it does not follow from this rule.
        family = number.rstrip("abcdefghijklmnopqrstuvwxyz")
        section = number.split(".")[0]
        others = [w for w in worked if w[0].split(".")[0] == section and not w[0].startswith(family)]
        if others:
            other = rng.choice(others)
            cases.append(SupportCase(number, other[3], text, situation, False))
    return cases


def case_scores(cases: Sequence[SupportCase]) -> list[float]:
    """Each case's support score (no threshold applied)."""
    return [sentence_support(c.conclusion, [c.passage], c.situation, threshold=0.0).score for c in cases]


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float
    kept_supported: float
    """Share of supported conclusions at or above the threshold."""
    rejected_unsupported: float
    supported: int
    unsupported: int


def calibrate(cases: Sequence[SupportCase], target_rejection: float = TARGET_REJECTION) -> Calibration:
    """The lowest threshold (in steps of 0.05) that keeps out ``target_rejection`` of unsupported cases."""
    scores = case_scores(cases)
    pos = [s for s, c in zip(scores, cases, strict=True) if c.supported]
    neg = [s for s, c in zip(scores, cases, strict=True) if not c.supported]
    if not pos or not neg:
        raise ValueError("calibration needs supported and unsupported cases")
    for step in range(0, 21):
        threshold = step / 20
        rejected = sum(s < threshold for s in neg) / len(neg)
        if rejected >= target_rejection:
            break
    kept = sum(s >= threshold for s in pos) / len(pos)
    return Calibration(threshold, kept, rejected, len(pos), len(neg))


# ---- phrases: restatements keep the rule's phrases, recombinations do not ----


@dataclass(frozen=True, slots=True)
class PhraseCase:
    sentence: str
    passage: str
    faithful: bool


def build_phrase_cases(doc: RulesDocument, seed: int = 0) -> list[PhraseCase]:
    """Faithful restatements (a rule sentence without its last clause) and recombinations (the start of one
    sentence of a rule joined to the end of another of the same rule: its words, a claim it does not make)."""
    from knowledge.lead import split_sentences as spans_of

    rng = random.Random(seed)
    cases: list[PhraseCase] = []
    for rule in doc.rules.values():
        sentences = [rule.text[s:e] for s, e in spans_of(rule.text)]
        for i, sentence in enumerate(sentences):
            head, comma, _ = sentence.rstrip(".").rpartition(",")
            if comma and len(head.split()) >= 5:
                cases.append(PhraseCase(head + ".", rule.text, True))
            others = [o for j, o in enumerate(sentences) if j != i and len(o.split()) >= 6]
            if len(sentence.split()) >= 6 and others:
                a, b = sentence.split(), rng.choice(others).split()
                cases.append(PhraseCase(" ".join(a[: len(a) // 2] + b[len(b) // 2 :]), rule.text, False))
    return cases


def calibrate_phrases(cases: Sequence[PhraseCase]) -> dict[float, tuple[float, float]]:
    """For thresholds 0.5-1.0: (share of faithful restatements kept, share of recombinations rejected)."""
    from engine.support import phrase_support

    scores = [(phrase_support(c.sentence, c.passage), c.faithful) for c in cases]
    pos = [s for s, f in scores if f]
    neg = [s for s, f in scores if not f]
    out = {}
    for step in range(10, 21):
        t = step / 20
        out[t] = (sum(s >= t for s in pos) / len(pos), sum(s < t for s in neg) / len(neg))
    return out
