"""The grounding guard: the model may only cite rules that are in the answer's cited passages.

A 135M model happily writes rule numbers it never saw ("see rule 613.7"). Every rule number in the generated
text is checked against the passages placed in the prompt (and so cited and shown verbatim): a number that is
one of them, or the heading rule one of them sits under ("702.19" for a cited 702.19b), stays; any other is
taken out. A parenthetical that held nothing but such references ("(CR 999.1)") disappears whole; elsewhere
the reference ("rule 613.7") is replaced by a visible marker, so the sentence still reads and nobody mistakes
it for a source.

:class:`StreamGuard` applies the same rule to text as it streams, holding back only the unfinished word or
parenthetical at the end, so what a user watches stream never shows an invented citation either, and the
streamed pieces add up to exactly ``guard_text`` of the whole answer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from knowledge.models import Passage

UNVERIFIED = "[uncited rule]"
"""Replaces a rule number the cited passages do not contain."""

# A CR rule or sub-rule number: 702.19, 702.19b.
_NUMBER = r"\d{3}\.\d{1,3}[a-z]?"
RULE_NUMBER = re.compile(rf"(?<![\w.]){_NUMBER}(?![\w])")
# A reference in running text, with the word that introduces it: "rule 613.7", "CR 613.7", "613.7".
_REFERENCE = re.compile(rf"(?:\b(?:cr|rules?)\s+)?(?<![\w.]){_NUMBER}(?![\w])", re.IGNORECASE)
# "(CR 702.19b)", "(rule 702.19b, 702.19c)", "(see rules 702.19b and 702.19c)": references and glue words only.
_PAREN = re.compile(
    rf"\s?\((?:\s*(?:see|also|cr|rules?|and|or|&|,|;)\s*)*{_NUMBER}"
    rf"(?:(?:\s*(?:,|;|and|or|&|cr|rules?)\s*)+{_NUMBER})*\s*\)",
    re.IGNORECASE,
)
# What may still grow into a reference: an unclosed "(" near the end, or a trailing word/number with the
# whitespace before it (and a "rule"/"CR" just before that). Held back while streaming.
_OPEN_PAREN_WINDOW = 48
_TRAILING = re.compile(r"(?:\s+(?:cr|rules?)\b)?\s*[\w.]*$", re.IGNORECASE)


@dataclass(slots=True)
class GroundingReport:
    text: str
    """The guarded text."""
    kept: list[str] = field(default_factory=list)
    """Rule numbers the text cites that are backed by the passages, in order of first use."""
    removed: list[str] = field(default_factory=list)
    """Rule numbers the model wrote that no cited passage backs (taken out), in order of first use."""


def allowed_rule_numbers(passages: Iterable[Passage]) -> set[str]:
    """Rule numbers an answer over ``passages`` may cite: the cited rules and the headings they sit under."""
    allowed: set[str] = set()
    for passage in passages:
        if passage.citation.kind != "rule":
            continue
        number = passage.citation.id.rstrip(".")
        allowed.add(number)
        # 702.19b sits under 702.19 (its title says so: "702.19 Trample"); citing the heading is fine.
        parent = number.rstrip(string.ascii_lowercase)
        if parent != number:
            allowed.add(parent)
    return allowed


def guard_text(text: str, allowed: Collection[str]) -> GroundingReport:
    """Take every rule number not in ``allowed`` out of ``text`` (see the module doc for how)."""
    kept: dict[str, None] = {}
    removed: dict[str, None] = {}

    def paren(match: re.Match[str]) -> str:
        numbers = RULE_NUMBER.findall(match.group(0))
        if all(n not in allowed for n in numbers):
            removed.update(dict.fromkeys(numbers))
            return ""
        return _REFERENCE.sub(number, match.group(0))

    def number(match: re.Match[str]) -> str:
        value = RULE_NUMBER.search(match.group(0)).group(0)  # type: ignore[union-attr]
        if value in allowed:
            kept[value] = None
            return match.group(0)
        removed[value] = None
        return UNVERIFIED

    guarded = _REFERENCE.sub(number, _PAREN.sub(paren, text))
    return GroundingReport(guarded, list(kept), list(removed))


class StreamGuard:
    """``guard_text`` for streamed text: ``feed`` each delta, emit what it returns, then emit ``finish()``.

    The concatenation of everything returned equals ``guard_text(whole_text, allowed).text``.
    """

    def __init__(self, allowed: Collection[str]) -> None:
        self.allowed = allowed
        self.raw = ""
        self.sent = ""

    def feed(self, delta: str) -> str:
        self.raw += delta
        cut = self._safe_cut()
        guarded = guard_text(self.raw[:cut], self.allowed).text
        if len(guarded) <= len(self.sent) or not guarded.startswith(self.sent):
            return ""
        out, self.sent = guarded[len(self.sent) :], guarded
        return out

    def finish(self) -> str:
        guarded = guard_text(self.raw, self.allowed).text
        if not guarded.startswith(self.sent):  # cannot happen with the hold-back rule; never emit garbage
            return ""
        out, self.sent = guarded[len(self.sent) :], guarded
        return out

    def _safe_cut(self) -> int:
        """End of the prefix no later text can change: before an open "(" and before the last word."""
        cut = len(self.raw)
        opened = self.raw.rfind("(")
        if opened >= 0 and ")" not in self.raw[opened:] and cut - opened <= _OPEN_PAREN_WINDOW:
            cut = opened
        match = _TRAILING.search(self.raw, 0, cut)
        return match.start() if match else cut
