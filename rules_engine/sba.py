"""State-based actions (rule 704) on the calculator's runtime board.

:class:`Board` is a working copy of a scenario plus what happened so far (deaths, life and poison changes).
:func:`check_state_based_actions` performs every applicable action at once and repeats until none applies,
as rule 704.3 says.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

from rules_engine.layers import current_pt
from rules_engine.model import Controller, Scenario, Step


@dataclass
class Board:
    scenario: Scenario
    dead: dict[int, str] = field(default_factory=dict)
    """Index of each permanent that left the battlefield -> the rule that put it there."""
    deathtouched: set[int] = field(default_factory=set)
    damage_dealt: dict[int, int] = field(default_factory=dict)
    """Damage each permanent was dealt in the event (marked or turned into counters)."""
    counters_placed: dict[int, int] = field(default_factory=dict)
    """-1/-1 counters put on each permanent by wither or infect damage in the event."""
    player_damage: dict[Controller, int] = field(default_factory=lambda: defaultdict(int))
    life_gained: dict[Controller, int] = field(default_factory=lambda: defaultdict(int))
    poison_added: dict[Controller, int] = field(default_factory=lambda: defaultdict(int))
    lost: list[Controller] = field(default_factory=list)
    target_damage: int = 0
    target_gone: bool = False
    split_choice: bool = False
    """An attacker split its damage among blockers and couldn't destroy them all: its controller's choice."""
    spared: set[int] = field(default_factory=set)
    """Indestructible permanents already reported as surviving in this check."""

    @classmethod
    def start(cls, scenario: Scenario) -> Board:
        return cls(scenario=copy.deepcopy(scenario))

    def alive(self, index: int) -> bool:
        return index not in self.dead


def _player_steps(board: Board) -> list[Step]:
    steps: list[Step] = []
    for player in (board.scenario.you, board.scenario.opponent):
        if player.who in board.lost:
            continue
        who, verb = ("You", "lose") if player.who == "you" else ("Your opponent", "loses")
        if player.life is not None and player.life <= 0:
            board.lost.append(player.who)
            steps.append(Step(f"{who} at {player.life} life {verb} the game.", ("704.5a",)))
        elif player.poison >= 10:
            board.lost.append(player.who)
            steps.append(Step(f"{who} with {player.poison} poison counters {verb} the game.", ("704.5c",)))
    return steps


def _counter_steps(board: Board) -> list[Step]:
    steps = []
    for i, perm in enumerate(board.scenario.permanents):
        if board.alive(i) and perm.plus_counters and perm.minus_counters:
            n = min(perm.plus_counters, perm.minus_counters)
            perm.plus_counters -= n
            perm.minus_counters -= n
            text = f"{n} +1/+1 and {n} -1/-1 counters on {perm.label} are removed (they annihilate)."
            steps.append(Step(text, ("704.5q", "122.3")))
    return steps


def _creature_steps(board: Board) -> tuple[list[Step], dict[int, str]]:
    steps: list[Step] = []
    dying: dict[int, str] = {}
    for i, perm in enumerate(board.scenario.permanents):
        if not board.alive(i):
            continue
        power, toughness = current_pt(perm)
        if toughness <= 0:
            dying[i] = "704.5f"
            steps.append(
                Step(f"{perm.label} has toughness {toughness} and is put into the graveyard.", ("704.5f",))
            )
        elif perm.damage >= toughness or i in board.deathtouched:
            if perm.has("indestructible"):
                if i in board.spared:
                    continue
                board.spared.add(i)
                why = "lethal damage" if perm.damage >= toughness else "deathtouch damage"
                steps.append(
                    Step(f"{perm.label} is indestructible, so {why} doesn't destroy it.", ("702.12b",))
                )
                board.deathtouched.discard(i)
            elif perm.damage >= toughness:
                dying[i] = "704.5g"
                text = f"{perm.label} has {perm.damage} damage marked and toughness {toughness}: it is destroyed."
                steps.append(Step(text, ("704.5g", "120.6")))
            else:
                dying[i] = "704.5h"
                steps.append(
                    Step(
                        f"{perm.label} was dealt damage by a source with deathtouch: it is destroyed.",
                        ("704.5h", "702.2b"),
                    )
                )
    return steps, dying


def _legend_steps(board: Board, dying: dict[int, str]) -> list[Step]:
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, perm in enumerate(board.scenario.permanents):
        if board.alive(i) and i not in dying and perm.legendary and perm.card_name:
            groups[(perm.controller, perm.card_name)].append(i)
    steps = []
    for (controller, name), members in groups.items():
        if len(members) < 2:
            continue
        for extra in members[1:]:
            dying[extra] = "704.5j"
        owner = "you choose" if controller == "you" else "your opponent chooses"
        text = f"{len(members)} legendary permanents named {name} under one player: {owner} one to keep, the rest go to the graveyard (legend rule)."
        steps.append(Step(text, ("704.5j",)))
    return steps


def _target_steps(board: Board) -> list[Step]:
    target = board.scenario.target
    if target.kind == "player" or board.target_gone or target.counters > 0:
        return []
    board.target_gone = True
    if target.kind == "planeswalker":
        return [Step(f"{target.name} has 0 loyalty and is put into the graveyard.", ("704.5i", "306.9"))]
    return [Step(f"{target.name} has 0 defense counters and is put into the graveyard.", ("704.5v", "310.7"))]


def check_state_based_actions(board: Board) -> list[Step]:
    """Performs all state-based actions simultaneously, again and again until none applies (rule 704.3)."""
    steps: list[Step] = []
    board.spared.clear()
    for _ in range(100):  # each pass removes something; the bound only guards against a modelling bug
        pass_steps = _player_steps(board)
        creature_steps, dying = _creature_steps(board)
        pass_steps += (
            creature_steps + _legend_steps(board, dying) + _counter_steps(board) + _target_steps(board)
        )
        board.dead.update(dying)
        if not pass_steps:
            break
        steps += pass_steps
    return steps
