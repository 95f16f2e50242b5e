"""Power and toughness through layer 7 (rule 613.4) with timestamps (rule 613.7).

Covers the common cases: printed P/T, effects that set P/T (7b), +N/+N effects and +1/+1 / -1/-1 counters
(7c), and switching (7d). Characteristic-defining abilities (7a, "*/1+*") have no number the calculator
could know, so the parser refuses them unless the question gives the creature's current P/T.
"""

from __future__ import annotations

from rules_engine.model import Permanent, PTEffect, Step


def _signed(n: int) -> str:
    return f"+{n}" if n >= 0 else str(n)


def current_pt(perm: Permanent) -> tuple[int, int]:
    power, toughness, _ = explain_pt(perm, with_steps=False)
    return power, toughness


def explain_pt(perm: Permanent, with_steps: bool = True) -> tuple[int, int, list[Step]]:
    """The creature's power and toughness now, and (when asked) one step per layer that changed them."""
    steps: list[Step] = []
    power, toughness = perm.power, perm.toughness
    if with_steps:
        steps.append(Step(f"{perm.label} starts from its printed {power}/{toughness}.", ("613.1", "302.4c")))
    ordered = sorted(perm.effects, key=lambda e: e.timestamp)
    setters = [e for e in ordered if e.kind == "set"]
    for effect in setters:
        power, toughness = effect.power, effect.toughness
        if with_steps:
            why = ("613.4b", "613.7") if len(setters) > 1 else ("613.4b",)
            steps.append(Step(f"Layer 7b: {_quote(effect)} sets it to {power}/{toughness}.", why))
    power, toughness = _apply_modifiers(perm, ordered, power, toughness, steps if with_steps else None)
    for effect in (e for e in ordered if e.kind == "switch"):
        power, toughness = toughness, power
        if with_steps:
            steps.append(Step(f"Layer 7d: {_quote(effect)} switches it to {power}/{toughness}.", ("613.4d",)))
    return power, toughness, steps


def _apply_modifiers(
    perm: Permanent, ordered: list[PTEffect], power: int, toughness: int, steps: list[Step] | None
) -> tuple[int, int]:
    for effect in (e for e in ordered if e.kind == "modify"):
        power, toughness = power + effect.power, toughness + effect.toughness
        if steps is not None:
            change = f"{_signed(effect.power)}/{_signed(effect.toughness)}"
            text = f"Layer 7c: {_quote(effect)} gives {change}, making it {power}/{toughness}."
            steps.append(Step(text, ("613.4c",)))
    net = perm.plus_counters - perm.minus_counters
    if perm.plus_counters or perm.minus_counters:
        power, toughness = power + net, toughness + net
        if steps is not None:
            parts = []
            if perm.plus_counters:
                parts.append(_count(perm.plus_counters, "+1/+1"))
            if perm.minus_counters:
                parts.append(_count(perm.minus_counters, "-1/-1"))
            text = f"Layer 7c: {' and '.join(parts)} give {_signed(net)}/{_signed(net)}, making it {power}/{toughness}."
            steps.append(Step(text, ("613.4c",)))
    return power, toughness


def _count(n: int, kind: str) -> str:
    return f"{n} {kind} counter" + ("s" if n != 1 else "")


def _quote(effect: PTEffect) -> str:
    return f"“{effect.text}”" if effect.text else "the effect"
