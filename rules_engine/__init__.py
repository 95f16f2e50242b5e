"""Hexcore's rules calculator: deterministic answers to board-state arithmetic questions.

What it covers
--------------
* **Combat** (rules 506-511): blocking legality (flying and reach, menace, protection, shadow, fear,
  intimidate, horsemanship, skulk, "can't block", tapped blockers); first strike and double strike damage
  steps (510.4); damage assignment without a damage assignment order (removed in late 2024; 510.1c in the
  2026-01-16 release), with trample (702.19b, 702.19d) and trample + deathtouch (702.2c); deathtouch,
  lifelink, wither, infect and poison, toxic, indestructible, protection's damage prevention; damage to
  players, planeswalkers and battles.
* **State-based actions** (704.5): lethal damage, deathtouch, 0 toughness, +1/+1 and -1/-1 counters
  annihilating, the legend rule, 0 life, 10 poison, planeswalkers and battles at 0.
* **Power and toughness through layer 7** (613.4) with timestamps (613.7): printed P/T, setting effects,
  +N/+N effects and counters, switching.

Every step carries the rule numbers it applied, so the answer can quote them.

What it refuses (``solve`` returns ``None`` and the normal answer path runs)
--------------------------------------------------------------------------
Questions the parser can't read with confidence: unknown or unmodelled abilities (bushido, banding,
annihilator, ...), triggered abilities, prevention and replacement effects, equipment and auras,
noncombat damage spells, "for each"/X values, characteristic-defining P/T without a stated value, cards
whose other rules text could change the arithmetic, ambiguous roles. Impossible boards (a -1/3 printed
creature, a creature with defender attacking, a blocker its defending player doesn't control, 10,000
creatures) raise :class:`ImpossibleBoard` with a message for the user.

Choices the attacking player makes (how a trampler or a multi-blocked creature splits its damage) are made
the way the question usually means (just lethal to blockers, the rest through; destroy as many blockers as
possible), and the steps say so.

Usage::

    from rules_engine import solve
    solution = solve("A 6/6 trampler is blocked by a 3/3, how much damage do I take?")
    solution.verdict   # "You take 3 damage."
    solution.steps     # [Step(text=..., rules=("702.19b", "510.1c")), ...]
"""

from rules_engine.errors import CalculatorError, ImpossibleBoard
from rules_engine.model import Scenario, Solution, Step
from rules_engine.solver import calculate, solve

__all__ = ["CalculatorError", "ImpossibleBoard", "Scenario", "Solution", "Step", "calculate", "solve"]
