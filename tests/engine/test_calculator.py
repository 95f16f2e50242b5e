"""The conversation memory of calculator scenarios (the calculator path itself: tests/engine/test_pipeline.py)."""

from __future__ import annotations

import time

from engine.calculator import ScenarioMemory
from rules_engine import solve


def scenario(question: str = "My 3/3 attacks and is blocked by a 2/2. How much damage does the 2/2 take?"):
    solution = solve(question)
    assert solution is not None
    return solution.scenario


def test_a_conversation_gets_back_its_last_scenario_and_no_other() -> None:
    memory = ScenarioMemory()
    first, second = scenario(), scenario("A 6/6 trampler is blocked by a 3/3, how much damage do I take?")
    memory.put("a", first)
    memory.put("a", second)
    assert memory.get("a") is second and memory.get("b") is None and memory.get(None) is None
    memory.put(None, first)  # one-off questions are not remembered
    memory.end("a")
    assert memory.get("a") is None


def test_least_recently_used_conversations_go_first() -> None:
    memory = ScenarioMemory(capacity=2)
    s = scenario()
    memory.put("a", s)
    memory.put("b", s)
    memory.get("a")  # a is now the most recently used
    memory.put("c", s)
    assert memory.get("b") is None and memory.get("a") is s and memory.get("c") is s


def test_scenarios_expire() -> None:
    memory = ScenarioMemory(ttl_s=0.01)
    memory.put("a", scenario())
    time.sleep(0.02)
    assert memory.get("a") is None
