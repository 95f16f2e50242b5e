"""The engine's public contract: request and answer types and the async ``Engine`` protocol.

The bot and the CLI talk to the engine only through this module. Anything slow (model, FAISS,
tokenizer, graph) happens in the engine's worker thread, never on the caller's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from knowledge.lead import Lead
from knowledge.models import Card, Citation, Passage, Rule


class Expert(StrEnum):
    REASON = "reason"
    """Apply rules to a concrete situation: what happens, step by step."""
    EXPLAIN = "explain"
    """Explain a rule, keyword or concept."""
    TEACH = "teach"
    """Teach a learner, simply, with an example."""
    PREDICT = "predict"
    """What happens next, or which line is better."""
    RETROSPECT = "retrospect"
    """Review a past play: what was right, what went wrong, which rule applied."""


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    question: str
    experts: tuple[Expert, ...] | None = None
    """Fixed experts (slash commands); None = the router chooses."""
    session_id: str | None = None
    """Channel or thread id: turns with the same id share a KV-cache session (multi-turn)."""
    max_new_tokens: int | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class LeadFound:
    """The rule that decides the question, sent as soon as retrieval found it (before any prose).

    A UI shows it at once: it is what the user should read first, and it does not wait for the model."""

    lead: Lead


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """A piece of generated text, streamed as it is produced."""

    text: str


@dataclass(slots=True)
class Answer:
    """The final event of ``Engine.generate``: the whole answer with the exact passages it cites."""

    question: str
    experts: list[Expert]
    text: str
    citations: list[Citation]
    passages: list[Passage] = field(default_factory=list)
    """The cited passages in full (what the bot shows verbatim), same order as ``citations``."""
    session_id: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Per stage: route, retrieve, assemble, prefill, generate, total."""
    generated_tokens: int = 0
    text_cites: list[str] = field(default_factory=list)
    """Rule numbers the text itself cites, each backed by a quoted passage (the grounding guard's check)."""
    note: str | None = None
    """A plain line every UI shows with the answer (why no prose is shown, or that nothing relevant was found)."""
    lead: Lead | None = None
    """The rule or ruling that decides the question, with its answering sentence: what every UI shows first."""
    prose_shown: bool = False
    """Whether ``text`` is generated prose that passed the support check (``engine.support``)."""
    draft: str | None = None
    """Generated prose that failed the support check: kept for evaluation and logs, never shown."""
    support: str | None = None
    """The support check's verdict on the prose ("supported", or why it is not shown)."""
    verdict: str | None = None
    """The rules calculator's one-line answer to a board-state question (None when it did not answer)."""

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "experts": [e.value for e in self.experts],
            "lead": self.lead.to_json() if self.lead else None,
            "verdict": self.verdict,
            "text": self.text,
            "prose_shown": self.prose_shown,
            "support": self.support,
            "text_cites": self.text_cites,
            "note": self.note,
            "citations": [
                {"id": c.id, "kind": c.kind, "release": c.release, "text": p.text}
                for c, p in zip(self.citations, self.passages, strict=False)
            ],
            "timings_ms": self.timings_ms,
        }


Event = LeadFound | TokenDelta | Answer


@dataclass(slots=True)
class EngineStatus:
    alive: bool
    queue_depth: int
    queue_capacity: int
    sessions: int
    session_bytes: int
    adapters: dict[str, str]
    """Expert name -> serving adapter version."""
    latency_p95_ms: float | None
    restarts: int
    last_error: str | None = None


@runtime_checkable
class Engine(Protocol):
    """What the bot and the CLI need. ``engine.local.LocalEngine`` is the real implementation."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def generate(self, request: AnswerRequest) -> AsyncIterator[Event]:
        """Yield at most one ``LeadFound`` first, then ``TokenDelta``s (the unchecked prose as it is generated),
        then exactly one ``Answer``. Raises ``engine.errors`` types.

        Cancelling the consuming task (or closing the iterator) aborts the request in the engine.
        """
        ...

    async def ask(self, request: AnswerRequest) -> Answer: ...

    async def end_session(self, session_id: str) -> None: ...

    def status(self) -> EngineStatus: ...

    # Lookups: dictionary work, cheap enough for the event loop.
    def rule(self, number: str) -> tuple[Rule, list[Rule], str]:
        """(rule, its sub-rules, rules release). Raises knowledge.errors.UnknownRule."""
        ...

    def card(self, name: str) -> Card:
        """Raises knowledge.errors.UnknownCard with suggestions."""
        ...

    def autocomplete_cards(self, prefix: str, limit: int = 25) -> list[str]: ...

    def autocomplete_rules(self, prefix: str, limit: int = 25) -> list[str]: ...
