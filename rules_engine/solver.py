"""``solve``: question -> :class:`Solution`, or ``None`` when the calculator should stay out of it."""

from __future__ import annotations

import logging

from knowledge.card_names import CardDatabase
from rules_engine.combat import block_problems, resolve_combat
from rules_engine.errors import ImpossibleBoard, NotUnderstood
from rules_engine.followup import apply_followup, looks_like_followup
from rules_engine.layers import current_pt, explain_pt
from rules_engine.model import Scenario, Solution, Step, rules_in_order
from rules_engine.parser import THRESHOLD, ParsedQuestion, parse_question
from rules_engine.sba import Board, check_state_based_actions
from rules_engine.verdict import block_verdict, board_verdict, combat_outcome, combat_verdict, sentence

log = logging.getLogger(__name__)


def solve(
    question: str, cards: CardDatabase | None = None, previous: Scenario | None = None
) -> Solution | None:
    """The calculator's answer, or ``None`` when the question isn't a board the parser understood.

    Raises only :class:`ImpossibleBoard`, whose message is for the user.
    """
    try:
        parsed = _parse(question, cards, previous)
        if parsed is None or parsed.confidence < THRESHOLD:
            return None
        return calculate(parsed.scenario, parsed.confidence, parsed.notes)
    except ImpossibleBoard:
        raise
    except NotUnderstood as err:
        log.debug("calculator declines: %s", err)
        return None
    except Exception:  # a modelling bug must cost an answer path, never a wrong verdict or a traceback
        log.exception("rules calculator failed on %r", question)
        return None


def _parse(question: str, cards: CardDatabase | None, previous: Scenario | None) -> ParsedQuestion | None:
    if previous is not None and looks_like_followup(question):
        return apply_followup(question, previous, cards)
    return parse_question(question, cards)


def _survivor_steps(board: Board) -> list[Step]:
    """Why a damaged creature is still there: its damage is less than its toughness (rule 704.5g)."""
    steps = []
    for i, perm in enumerate(board.scenario.permanents):
        toughness = current_pt(perm)[1]
        if board.alive(i) and 0 < perm.damage < toughness:
            text = f"{perm.label} has {perm.damage} damage marked, less than its toughness {toughness}, so it isn't destroyed."
            steps.append(Step(text, ("704.5g",)))
    return steps


def calculate(scenario: Scenario, confidence: float = 1.0, notes: list[Step] | None = None) -> Solution:
    steps = list(notes or [])
    outcome: dict[str, object]
    if scenario.kind in ("combat", "block"):
        problems = block_problems(scenario)
        if scenario.kind == "block" or problems:
            verdict = block_verdict(problems)
            steps += problems or [Step("No blocking restriction applies to these blocks.", ("509.1b",))]
            outcome = {"legal": not problems}
        else:
            board, combat_steps = resolve_combat(scenario)
            steps += combat_steps
            outcome = combat_outcome(board, scenario)
            verdict = combat_verdict(scenario.ask, outcome, board)
    else:
        board = Board.start(scenario)
        subject = board.scenario.permanents[scenario.subject or 0]
        steps += explain_pt(subject)[2]
        steps += check_state_based_actions(board)
        steps += _survivor_steps(board)
        verdict, outcome = board_verdict(scenario.ask, board)
    steps = [Step(sentence(s.text), s.rules) for s in steps]
    return Solution(
        verdict=verdict,
        steps=steps,
        rules=rules_in_order(steps),
        confidence=confidence,
        scenario=scenario,
        kind=scenario.kind,
        outcome=outcome,
    )
