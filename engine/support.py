"""Does the model's prose earn its place? The support check that decides whether an answer shows it.

A player acts on the first line they read, and a caution under a wrong sentence does not make it right.
So generated prose is shown only when every sentence of it is supported by the quoted sources, and it
cites at least one quoted rule; otherwise the answer is the lead rule and the sources, with a plain line.

Support of one sentence: its content words (lowercased, English stopwords out, Snowball stems, the BM25
tokenizer's notion of a word) that appear in one cited passage or in the question, as a share of all its
content words. The best passage counts, not the union of all of them, so a sentence stitched from words
of unrelated rules is not supported. Two cheap checks on top, for the ways a restated rule turns false:
- a number in the sentence (a damage amount, a count) must be in that passage or the question;
- a negation (not, can't, never, ...) must be in that passage or the question: "can't be blocked" is not
  supported by a rule that says a creature "can be blocked".
A sentence with no content word at all ("Yes.", "The answer is no.") is a bare verdict nothing can check,
so it is unsupported.

The threshold (``SUPPORT_THRESHOLD``) is calibrated on data built from the rules alone
(``training.support_calibration``: each CR example's conclusion against its own rule and situation, and
against other rules' examples), never on the evaluation question sets; the calibration and its figures
are in docs/BENCHMARKS.md. The same check applies to any model, so a better model shows more prose.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from engine.grounding import RULE_NUMBER, UNVERIFIED

SUPPORT_THRESHOLD = 0.7
"""Least share of a sentence's content words found in one quoted passage or the question (calibrated)."""
PHRASE_THRESHOLD = 0.95
"""Least share of a sentence's word trigrams found in its best passage or the question (calibrated): the
sentence must restate the sources' own phrases, not recombine their words."""
MIN_CHECKED_WORDS = 2
"""A sentence with fewer content words is a bare verdict ("Yes.") or filler, and cannot be supported."""

_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nothing|neither|nor|cannot|can't|can’t|won't|won’t|doesn't|doesn’t|don't|"
    r"don’t|isn't|isn’t|aren't|aren’t|wasn't|wasn’t|didn't|didn’t|without|unless|n't)\b",
    re.IGNORECASE,
)
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "twice": "2", "half": "half",
}  # fmt: skip
# Words of a bare verdict ("Yes, that's right.", "The answer is no."), stemmed: they claim without content.
_VERDICT_WORDS = frozenset({"answer", "yes", "no", "correct", "incorrect", "right", "wrong", "true", "fals"})
_NUMBER = re.compile(r"(?<![\w.])[+-]?\d+(?:/[+-]?\d+)?(?!\w|\.\d)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")
# The opening the answer was started with ("Rule 702.19b says that"): the rule's name, not a claim.
_OPENING = re.compile(
    r"\b(?:(?:cr|rule)\s+\d{3}(?:\.\d+[a-z]?)?|the ruling on [^,]+?)\s+says(?:\s+that)?\b", re.IGNORECASE
)


@lru_cache(maxsize=1)
def _tokenize():
    from knowledge.bm25 import Tokenizer

    return Tokenizer()


def content_tokens(text: str) -> list[str]:
    """Content words of ``text`` in order (stemmed), rule numbers and the answer's opening left out."""
    return [w for w in _tokenize()(_OPENING.sub(" ", text)) if not RULE_NUMBER.fullmatch(w)]


def content_words(text: str) -> set[str]:
    return set(content_tokens(text))


def trigrams(text: str) -> set[tuple[str, str, str]]:
    """Word trigrams (lowercased words and numbers, the opening left out): the phrases a text states."""
    words = re.findall(r"[a-z0-9/+'’-]+", _OPENING.sub(" ", text).lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}  # type: ignore[misc]


def phrase_support(sentence: str, backing: str) -> float:
    """Share of the sentence's word trigrams that ``backing`` states too (1.0 for a sentence too short to
    have any). A restatement keeps the rule's phrases; a small model's recombination of its words
    ("a creature with deathtouch is considered to be a state-based action") does not."""
    grams = trigrams(sentence)
    return len(grams & trigrams(backing)) / len(grams) if grams else 1.0


def numbers_in(text: str) -> set[str]:
    """Numbers a sentence states ("3", "+1/+1", "two"), rule numbers aside."""
    text = RULE_NUMBER.sub(" ", text)
    found = {m.group(0).replace("+", "") for m in _NUMBER.finditer(text)}
    found |= {_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _NUMBER_WORDS}
    return found - {"1"}  # "one" is as often "a" ("one or more", "one of them") as a count: not checked


def has_negation(text: str) -> bool:
    return bool(_NEGATION.search(text))


def split_prose(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.replace("\n", " ")) if s.strip()]


@dataclass(slots=True)
class SentenceSupport:
    sentence: str
    score: float
    """Share of the sentence's content words found in its best passage or the question."""
    problem: str | None = None
    """Why the sentence is unsupported (None: supported)."""


@dataclass(slots=True)
class SupportReport:
    shown: bool
    reason: str
    """"supported", or why the prose is not shown (for logs, eval reports and tests)."""
    sentences: list[SentenceSupport] = field(default_factory=list)

    @property
    def score(self) -> float:
        return min((s.score for s in self.sentences), default=0.0)


def sentence_support(
    sentence: str,
    passages: Sequence[str],
    question: str,
    threshold: float = SUPPORT_THRESHOLD,
    phrase_threshold: float = PHRASE_THRESHOLD,
) -> SentenceSupport:
    """How well one sentence is supported by its best passage (plus the question)."""
    words = content_words(sentence)
    if len(words - _VERDICT_WORDS) < MIN_CHECKED_WORDS:
        return SentenceSupport(sentence, 0.0, "a bare verdict or filler that no source can confirm")
    question_words = content_words(question)
    best_score, best = -1.0, ""
    for passage in passages:
        found = words & (content_words(passage) | question_words)
        score = len(found) / len(words)
        if score > best_score:
            best_score, best = score, passage
    if best_score < 0:
        best_score = len(words & question_words) / len(words)
    backing = f"{best}\n{question}"
    if best_score < threshold:
        return SentenceSupport(sentence, best_score, "says more than the quoted sources")
    missing = numbers_in(sentence) - numbers_in(backing)
    if missing:
        return SentenceSupport(
            sentence, best_score, f"states a number the sources don't ({sorted(missing)[0]})"
        )
    if has_negation(sentence) and not has_negation(backing):
        return SentenceSupport(sentence, best_score, "negates what the sources say")
    if phrase_support(sentence, backing) < phrase_threshold:
        return SentenceSupport(
            sentence, best_score, "recombines the sources' words into a claim they don't make"
        )
    return SentenceSupport(sentence, best_score)


def check_support(
    text: str,
    passages: Mapping[str, str] | Iterable[str],
    question: str,
    cites: Sequence[str],
    threshold: float = SUPPORT_THRESHOLD,
) -> SupportReport:
    """Whether ``text`` (already through the grounding guard) may be shown above the quoted sources.

    ``cites`` are the quoted rules the text cites (``GroundingReport.kept``); ``passages`` the texts of the
    quoted sources, by rule number (or card name) when known. A sentence that names a rule ("Rule 700.4
    says that ...") must be backed by that rule's own text: the model copying another quoted rule's words
    under the lead's number would misattribute them.
    """
    prose = text.replace(UNVERIFIED, " ").strip()
    if not prose:
        return SupportReport(False, "no prose")
    if not cites:
        return SupportReport(False, "cites no quoted rule")
    if UNVERIFIED in text:
        return SupportReport(False, "cites a rule that was not quoted")
    by_id = dict(passages) if isinstance(passages, Mapping) else dict(enumerate(passages))
    sentences = [sentence_support(s, _backing_for(s, by_id), question, threshold) for s in split_prose(prose)]
    failed = next((s for s in sentences if s.problem), None)
    if failed is not None:
        return SupportReport(False, f"{failed.problem}: {failed.sentence!r}", sentences)
    return SupportReport(True, "supported", sentences)


def _backing_for(sentence: str, by_id: Mapping[object, str]) -> list[str]:
    """The passages that may back ``sentence``: the rules it names (or their sub-rules), else all."""
    named = set(RULE_NUMBER.findall(sentence))
    if not named or not any(isinstance(key, str) for key in by_id):  # no rule named, or ids unknown
        return list(by_id.values())
    return [
        text
        for key, text in by_id.items()
        if isinstance(key, str) and (key in named or key.rstrip(string.ascii_lowercase) in named)
    ]
