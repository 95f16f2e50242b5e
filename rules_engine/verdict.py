"""The short sentence that answers what the question asked, and the machine-readable outcome behind it."""

from __future__ import annotations

from typing import Any

from rules_engine.layers import current_pt
from rules_engine.model import Controller, Scenario, Step
from rules_engine.sba import Board


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def a_pt(power: int, toughness: int) -> str:
    """ "a 6/6", "an 8/8", "an 11/11"."""
    article = "an" if str(power).startswith("8") or str(power) in ("11", "18") else "a"
    return f"{article} {power}/{toughness}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _who(who: Controller) -> tuple[str, str]:
    """(subject, third-person verb suffix): ("you", "") or ("your opponent", "s")."""
    return ("you", "") if who == "you" else ("your opponent", "s")


def combat_outcome(board: Board, original: Scenario) -> dict[str, Any]:
    scenario = board.scenario
    perms = scenario.permanents
    attacking = next((perms[a].controller for a in scenario.attackers()), "you")
    defender: Controller = "opponent" if attacking == "you" else "you"
    return {
        "defender": defender,
        "player_damage": board.player_damage.get(defender, 0),
        "deaths": [perms[i].label for i in sorted(board.dead)],
        "survivors": [p.label for i, p in enumerate(perms) if p.role != "none" and board.alive(i)],
        "creature_damage": {perms[i].label: n for i, n in board.damage_dealt.items()},
        "counters": {perms[i].label: n for i, n in board.counters_placed.items()},
        "life_gained": {k: v for k, v in board.life_gained.items() if v},
        "poison_added": {k: v for k, v in board.poison_added.items() if v},
        "poison": {p.who: p.poison for p in (scenario.you, scenario.opponent) if p.poison},
        "life": {p.who: p.life for p in (scenario.you, scenario.opponent) if p.life is not None},
        "lost": list(board.lost),
        "target": scenario.target.kind,
        "target_damage": board.target_damage,
        "target_counters": scenario.target.counters,
        "target_gone": board.target_gone,
    }


def combat_verdict(ask: str, out: dict[str, Any], board: Board) -> str:
    defender = out["defender"]
    subject, s = _who(defender)
    text = _COMBAT_VERDICTS.get(ask, _outcome_verdict)(out, board, subject, s)
    for who in out["lost"]:
        loser, ls = _who(who)
        text = text.rstrip(".") + f"; {loser} lose{ls} the game."
    if board.split_choice and ask in ("deaths", "outcome", "creature_damage", "counters"):
        text = (
            text.rstrip(".") + " (if the attacker splits its damage to destroy as many blockers as it can)."
        )
    return sentence(text)


def _player_damage(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    if out["target"] != "player":
        return _loyalty(out, board, subject, s)
    dmg = out["player_damage"]
    poison = out["poison_added"].get(out["defender"], 0)
    if dmg == 0:
        return f"{subject} take{s} no combat damage."
    infect = any(p.has("infect") for p in board.scenario.permanents if p.role == "attacker")
    if infect and poison:
        return f"{subject} take{s} {dmg} damage, all of it as poison counters ({poison} poison), and lose{s} no life."
    return f"{subject} take{s} {dmg} damage."


def _creature_damage(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    parts = [f"{label} is dealt {n}" for label, n in out["creature_damage"].items()]
    if out["player_damage"]:
        parts.append(f"{subject} take{s} {out['player_damage']}")
    return (_join(parts) + " damage.") if parts else "No creature is dealt combat damage."


def _deaths(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    dead, alive = out["deaths"], out["survivors"]
    if not dead:
        return "Nothing dies: " + _join(alive) + (" survives." if len(alive) == 1 else " all survive.")
    text = _join(dead) + (" dies" if len(dead) == 1 else " die")
    if alive:
        text += "; " + _join(alive) + (" survives" if len(alive) == 1 else " survive")
    return text + "."


def _counters(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    if not out["counters"]:
        return "No -1/-1 counters are put on any creature."
    parts = [f"{label} gets {n} -1/-1 counter{'s' if n != 1 else ''}" for label, n in out["counters"].items()]
    return _join(parts) + "."


def _lifegain(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    gained = out["life_gained"]
    if not gained:
        return "No one gains life: no creature with lifelink dealt damage."
    parts = []
    for who, n in gained.items():
        name, vs = _who(who)
        parts.append(f"{name} gain{vs} {n} life")
    return _join(parts) + "."


def _life(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    if not out["life"]:
        return _player_damage(out, board, subject, s)
    parts = []
    for who, life in out["life"].items():
        name, vs = _who(who)
        parts.append(f"{name} {'are' if who == 'you' else 'is'} at {life} life")
    return _join(parts) + "."


def _poison(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    added = out["poison_added"].get(out["defender"], 0)
    total = out["poison"].get(out["defender"], 0)
    if not added:
        return f"{subject} get{s} no poison counters."
    extra = f" ({total} in total)" if total != added else ""
    return f"{subject} get{s} {added} poison counter{'s' if added != 1 else ''}{extra}."


def _loyalty(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    kind = "loyalty" if out["target"] == "planeswalker" else "defense"
    name = board.scenario.target.name
    if out["target"] == "player":
        return _player_damage(out, board, subject, s)
    if out["target_gone"]:
        return f"{name} is dealt {out['target_damage']} damage, loses all its {kind} counters and goes to the graveyard."
    return f"{name} is dealt {out['target_damage']} damage and is left with {out['target_counters']} {kind}."


def _outcome_verdict(out: dict[str, Any], board: Board, subject: str, s: str) -> str:
    return _player_damage(out, board, subject, s).rstrip(".") + "; " + _deaths(out, board, subject, s)


_COMBAT_VERDICTS = {
    "player_damage": _player_damage,
    "creature_damage": _creature_damage,
    "deaths": _deaths,
    "counters": _counters,
    "lifegain": _lifegain,
    "life": _life,
    "poison": _poison,
    "loyalty": _loyalty,
    "outcome": _outcome_verdict,
}


def block_verdict(problems: list[Step]) -> str:
    if not problems:
        return "Yes, that block is legal."
    return "No, that block isn't legal: " + problems[0].text


def board_verdict(ask: str, board: Board) -> tuple[str, dict[str, Any]]:
    """Verdict for a P/T or state-based-action question about the board (no combat)."""
    scenario = board.scenario
    perms = scenario.permanents
    subject = perms[scenario.subject or 0]
    power, toughness = current_pt(subject)
    out: dict[str, Any] = {
        "pt": f"{power}/{toughness}",
        "deaths": [perms[i].label for i in sorted(board.dead)],
        "lost": list(board.lost),
        "counters": {"+1/+1": subject.plus_counters, "-1/-1": subject.minus_counters},
    }
    dies = (scenario.subject or 0) in board.dead
    if ask == "counters":
        text = f"{subject.label} ends up with {subject.plus_counters} +1/+1 and {subject.minus_counters} -1/-1 counters, as {a_pt(power, toughness)}."
    elif ask == "pt" or (not out["deaths"] and not out["lost"]):
        text = f"{subject.label} is {a_pt(power, toughness)}."
        if dies:
            text = text.rstrip(".") + ", so it dies."
    else:
        text = (
            _join(out["deaths"]) + (" dies." if len(out["deaths"]) == 1 else " die.")
            if out["deaths"]
            else "Nothing dies."
        )
    for who in board.lost:
        loser, ls = _who(who)
        text = text.rstrip(".") + f"; {loser} lose{ls} the game."
    return sentence(text), out
