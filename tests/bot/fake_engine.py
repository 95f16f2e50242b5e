"""An ``engine.api.Engine`` for tests about the bot alone: real rules and card data, no model.

It keeps the protocol's promises: ``generate`` yields a ``LeadFound`` (when a rule is cited), ``TokenDelta``s, then exactly one ``Answer`` whose
citations and passages are real (parsed from the shared rules release and Scryfall card fixtures);
closing the iterator or cancelling its consumer aborts the request (recorded in ``cancelled``);
``EngineOverloaded`` is raised at once. Knobs: ``delay_s`` (real delay before the first token),
``gate`` (an event the request waits on), ``token_step_s`` (simulated clock seconds per token),
``fail_with`` (raise a typed error, at once or after ``fail_after_tokens``), ``on_token`` (a hook per
token), ``overloaded`` (queue full), ``alive``, ``answer_text``, ``citations``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from rapidfuzz import process

from engine.api import Answer, AnswerRequest, EngineStatus, Event, Expert, LeadFound, TokenDelta
from engine.errors import EngineError, EngineOverloaded, GenerationError
from engine.grounding import allowed_rule_numbers, guard_text
from knowledge.cards import card_from_scryfall
from knowledge.errors import UnknownCard, UnknownRule
from knowledge.lead import Lead, is_lead_candidate
from knowledge.models import Card, Citation, Passage, Rule, RulesDocument
from knowledge.rules import load_release, rule_sort_key

RULE_NUMBER = re.compile(r"\b(\d{3}\.\d+[a-z]?)\b")
DEFAULT_CITATIONS = ("702.19b",)
DEFAULT_TEXT = (
    "Trample lets the attacker assign lethal damage to its blockers and the rest to the player "
    "(rule 702.19b). If the blocker is gone, all damage goes to the player (702.19d)."
)


@dataclass(frozen=True)
class FakeData:
    """One rules release and the card fixtures, parsed once per test session."""

    rules: RulesDocument
    cards: dict[str, Card]
    """By lowercased name and lowercased face name."""
    numbers: list[str]
    """Rule numbers in rules order, for nearest-number suggestions and autocomplete."""

    @property
    def release(self) -> str:
        return self.rules.effective_date


@lru_cache(maxsize=2)
def load_fake_data(data_dir: Path) -> FakeData:
    doc = load_release(data_dir / "rules")
    cards: dict[str, Card] = {}
    for path in sorted((data_dir / "cards").glob("*.json")):
        card = card_from_scryfall(json.loads(path.read_text(encoding="utf-8")))
        if card is None:
            continue
        cards.setdefault(card.name.lower(), card)
        for face in card.faces:
            cards.setdefault(face.name.lower(), card)
    numbers = sorted((n for n in doc.rules if "." in n), key=rule_sort_key)
    return FakeData(doc, cards, numbers)


@dataclass
class FakeEngine:
    data: FakeData
    clock: object | None = None
    """A ``FakeClock``: advanced by ``token_step_s`` per streamed token."""
    answer_text: str | Callable[[AnswerRequest], str] = DEFAULT_TEXT
    citations: tuple[str, ...] = DEFAULT_CITATIONS
    words_per_delta: int = 1
    token_step_s: float = 0.0
    delay_s: float = 0.0
    gate: asyncio.Event | None = None
    fail_with: EngineError | None = None
    fail_after_tokens: int | None = None
    on_token: Callable[[int], None] | None = None
    """Called with each token's index before it is yielded (to act mid-stream)."""
    overloaded: bool = False
    alive: bool = True
    queue_capacity: int = 4
    requests: list[AnswerRequest] = field(default_factory=list)
    completed: list[AnswerRequest] = field(default_factory=list)
    cancelled: list[AnswerRequest] = field(default_factory=list)
    ended_sessions: list[str] = field(default_factory=list)
    active: int = 0
    started: bool = False
    closed: bool = False
    first_token: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    # ---------------------------------------------------------------------------- answering

    def status(self) -> EngineStatus:
        depth = self.queue_capacity if self.overloaded else self.active
        return EngineStatus(
            alive=self.alive,
            queue_depth=depth,
            queue_capacity=self.queue_capacity,
            sessions=0,
            session_bytes=0,
            adapters={e.value: "fake-1" for e in Expert},
            latency_p95_ms=None,
            restarts=0,
        )

    def passages(self, request: AnswerRequest) -> list[Passage]:
        numbers = list(self.citations)
        numbers += [n for n in RULE_NUMBER.findall(request.question) if n in self.data.rules.rules]
        out = [self._rule_passage(n) for n in dict.fromkeys(numbers)]
        match = re.search(r"Card: (.+)$", request.question, re.MULTILINE)
        if match and match.group(1).lower() in self.data.cards:
            card = self.data.cards[match.group(1).lower()]
            out.append(Passage(f"card:{card.name.lower()}", card.oracle_block(), Citation(card.name, "card")))
        return out

    def _rule_passage(self, number: str) -> Passage:
        rule = self.data.rules.rules[number]
        parent = self.data.rules.rules.get(rule.parent or "")
        title = f"{parent.number} {parent.text}" if parent and rule.kind == "subrule" else None
        citation = Citation(number, "rule", self.data.release)
        return Passage(f"rule:{number}", rule.full_text(), citation, title)

    def _text(self, request: AnswerRequest) -> str:
        return self.answer_text(request) if callable(self.answer_text) else self.answer_text

    def _pieces(self, text: str) -> list[str]:
        words = re.findall(r"\S+\s*|\s+", text)
        n = max(1, self.words_per_delta)
        return ["".join(words[i : i + n]) for i in range(0, len(words), n)]

    async def generate(self, request: AnswerRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        if self.overloaded:
            raise EngineOverloaded(self.queue_capacity)
        if self.fail_with is not None and self.fail_after_tokens is None:
            raise self.fail_with
        self.active += 1
        finished = False
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.gate is not None:
                await self.gate.wait()
            text = self._text(request)
            passages = self.passages(request)
            lead = next((Lead(p, 0, len(p.text), 1.0) for p in passages if is_lead_candidate(p)), None)
            if lead is not None:  # as the engine does: the deciding rule before any prose
                yield LeadFound(lead)
            for i, piece in enumerate(self._pieces(text)):
                if self.fail_after_tokens is not None and i >= self.fail_after_tokens:
                    raise self.fail_with or GenerationError("fake failure")
                if self.clock is not None and self.token_step_s:
                    self.clock.advance(self.token_step_s)  # type: ignore[attr-defined]
                if self.on_token is not None:
                    self.on_token(i)
                self.first_token.set()
                yield TokenDelta(piece)
                await asyncio.sleep(0)
            experts = list(request.experts) if request.experts else [Expert.REASON]
            answer = Answer(
                question=request.question,
                experts=experts,
                text=text,
                citations=[p.citation for p in passages],
                passages=passages,
                session_id=request.session_id,
                timings_ms={"total": 1.0},
                generated_tokens=len(text.split()),
                text_cites=guard_text(text, allowed_rule_numbers(passages)).kept,  # as pipeline.finish does
                lead=lead,
                prose_shown=True,
                support="supported",
            )
            finished = True
            self.completed.append(request)
            yield answer
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                self.cancelled.append(request)
            raise
        finally:
            self.active -= 1

    async def ask(self, request: AnswerRequest) -> Answer:
        async for event in self.generate(request):
            if isinstance(event, Answer):
                return event
        raise GenerationError("no answer")

    async def end_session(self, session_id: str) -> None:
        self.ended_sessions.append(session_id)

    # ------------------------------------------------------------------------------ lookups

    def rule(self, number: str) -> tuple[Rule, list[Rule], str]:
        key = number.strip().lower().removeprefix("cr").strip().rstrip(".")
        rules = self.data.rules.rules
        if key not in rules:
            i = bisect.bisect_left([rule_sort_key(n) for n in self.data.numbers], rule_sort_key(key))
            nearest = self.data.numbers[max(0, i - 1) : i + 2]
            raise UnknownRule(number, nearest)
        rule = rules[key]
        return rule, [rules[c] for c in rule.children if c in rules], self.data.release

    def card(self, name: str) -> Card:
        card = self.data.cards.get(" ".join(name.split()).lower())
        if card is None:
            found = process.extract(name.lower(), list(self.data.cards), limit=3, score_cutoff=60)
            suggestions = list(dict.fromkeys(self.data.cards[m[0]].name for m in found))
            raise UnknownCard(name, suggestions)
        return card

    def autocomplete_cards(self, prefix: str, limit: int = 25) -> list[str]:
        p = prefix.strip().lower()
        names = sorted({c.name for c in self.data.cards.values()})
        starts = [n for n in names if n.lower().startswith(p)]
        contains = [n for n in names if p in n.lower() and n not in starts]
        return (starts + contains)[:limit]

    def autocomplete_rules(self, prefix: str, limit: int = 25) -> list[str]:
        p = prefix.strip().lower()
        return [n for n in self.data.numbers if n.startswith(p)][:limit]
