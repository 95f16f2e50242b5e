"""Board-state questions answered by the rules calculator (``rules_engine``), not by the language model.

"A 6/6 trampler is blocked by a 3/3, how much damage do I take?" has one right answer, and neither
retrieval (702.19b does not contain the number) nor a small model gets it. When the calculator's parser
understands a question with confidence, its verdict leads the answer ("You take 3 damage."), its steps
follow with the rules each applied, and those rules are quoted verbatim as the sources: correct by
construction and a few milliseconds on a CPU. A question it does not understand takes the normal path;
an impossible board ("a -1/3 creature") gets the calculator's own message.

A thread keeps its last scenario (``ScenarioMemory``, bounded and expiring like the KV sessions) so a
follow-up ("and if it also had lifelink?") changes the board instead of starting over. Scenarios live in
memory: after a restart a follow-up is parsed as a new question.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TTLCache

from engine.errors import InvalidRequest
from knowledge.models import Citation, Passage
from knowledge.passages import rule_key, rule_title

if TYPE_CHECKING:
    from knowledge.base import KnowledgeBase
    from rules_engine import Scenario, Solution

MAX_SCENARIOS = 10_000
SCENARIO_TTL_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Calculated:
    """A calculator answer: the verdict, the steps as text, and the applied rules' passages in order."""

    solution: Solution
    passages: list[Passage]

    @property
    def verdict(self) -> str:
        return self.solution.verdict

    @property
    def steps_text(self) -> str:
        """The steps, one line each with the rules it applied (the verdict is shown on its own)."""
        return self.solution.text().split("\n", 1)[1] if self.solution.steps else ""


class ScenarioMemory:
    """The last calculator scenario of each conversation: LRU-capped, expiring ``ttl_s`` after it was kept
    (thread-safe)."""

    def __init__(self, capacity: int = MAX_SCENARIOS, ttl_s: float = SCENARIO_TTL_S) -> None:
        self.capacity, self.ttl_s = capacity, ttl_s
        self._items: TTLCache[str, Scenario] = TTLCache(capacity, ttl_s, timer=time.monotonic)
        self._lock = threading.Lock()

    def get(self, session_id: str | None) -> Scenario | None:
        if session_id is None:
            return None
        with self._lock:
            return self._items.get(session_id)

    def put(self, session_id: str | None, scenario: Scenario) -> None:
        if session_id is None:
            return
        with self._lock:
            self._items[session_id] = scenario

    def end(self, session_id: str) -> None:
        with self._lock:
            self._items.pop(session_id, None)


def calculate(knowledge: KnowledgeBase, question: str, previous: Scenario | None) -> Calculated | None:
    """The calculator's answer to ``question`` (None: not a board it understood; the normal path runs).

    Raises ``InvalidRequest`` with the calculator's message for an impossible board.
    """
    from rules_engine import ImpossibleBoard, solve

    try:
        solution = solve(question, cards=knowledge.cards, previous=previous)
    except ImpossibleBoard as exc:
        raise InvalidRequest(str(exc)) from None
    if solution is None:
        return None
    passages = [p for p in (_rule_passage(knowledge, n) for n in solution.rules) if p is not None]
    if not passages:  # rules the served release lacks: nothing to quote, so no answer from it
        return None
    return Calculated(solution, passages)


def _rule_passage(knowledge: KnowledgeBase, number: str) -> Passage | None:
    rule = knowledge.doc.rules.get(number)
    if rule is None or rule.kind not in ("rule", "subrule"):
        return None
    citation = Citation(id=rule.number, kind="rule", release=knowledge.doc.effective_date)
    return Passage(rule_key(rule.number), rule.full_text(), citation, rule_title(knowledge.doc, rule))
