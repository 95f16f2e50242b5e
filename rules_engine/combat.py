"""Combat: blocking legality (rule 509) and the combat damage steps (rule 510) with the keywords that change them.

Damage assignment follows the served rules: since the late-2024 update there is no damage assignment order;
a creature blocked by several creatures divides its damage among them as its controller chooses (510.1c).
Where the controller has a choice, the calculator makes the choice the question is usually about and says
so in the step: a trampler assigns just lethal damage to its blockers and the rest to what it attacks
(702.19b); a non-trampler splits its damage to destroy as many blockers as it can.
"""

from __future__ import annotations

from rules_engine.layers import current_pt, explain_pt
from rules_engine.model import AttackTarget, Permanent, Scenario, Step
from rules_engine.sba import Board, check_state_based_actions

FIRST_STRIKERS = ("first strike", "double strike")
TARGET = -1
"""Recipient index meaning "what the attacker attacks" (player, planeswalker or battle)."""


def protection_against(holder: Permanent, source: Permanent) -> str | None:
    """The protection quality of ``holder`` that ``source`` has, if any (rule 702.16)."""
    for quality in holder.protection:
        if (
            quality in ("everything", "creatures")
            or quality in source.colors
            or (quality == "artifacts" and source.artifact)
            or (quality == "multicolored" and len(source.colors) > 1)
        ):
            return quality
    return None


def _blocker_problems(att: Permanent, blk: Permanent) -> list[Step]:
    name, other = blk.label, att.label
    checks = [
        (blk.tapped, f"{name} is tapped, and only untapped creatures can block.", ("509.1a",)),
        (blk.cant_block, f"{name} can't block.", ("509.1b",)),
        (
            att.has("flying") and not (blk.has("flying") or blk.has("reach")),
            f"{other} has flying, so it can't be blocked except by creatures with flying or reach; {name} has neither.",
            ("702.9b", "509.1b"),
        ),
        (
            att.has("shadow") != blk.has("shadow"),
            "Creatures with shadow can block or be blocked only by creatures with shadow.",
            ("702.28b",),
        ),
        (
            att.has("horsemanship") and not blk.has("horsemanship"),
            f"{other} has horsemanship; {name} doesn't.",
            ("702.31b",),
        ),
        (
            att.has("fear") and not (blk.artifact or "black" in blk.colors),
            f"{other} has fear, so only artifact or black creatures can block it.",
            ("702.36b",),
        ),
        (
            att.has("intimidate") and not (blk.artifact or set(att.colors) & set(blk.colors)),
            f"{other} has intimidate, so only artifact creatures or creatures sharing a color with it can block it.",
            ("702.13b",),
        ),
        (
            att.has("skulk") and current_pt(blk)[0] > current_pt(att)[0],
            f"{other} has skulk, so creatures with greater power (like {name}) can't block it.",
            ("702.118b",),
        ),
    ]
    problems = [Step(text, rules) for bad, text, rules in checks if bad]
    quality = protection_against(att, blk)
    if quality:
        text = f"{other} has protection from {quality}, so {name} can't block it."
        problems.append(Step(text, ("702.16f",) if quality != "everything" else ("702.16j",)))
    return problems


def block_problems(scenario: Scenario) -> list[Step]:
    """Every reason the declared blocks are illegal; empty when the declaration is legal (rule 509.1)."""
    problems: list[Step] = []
    perms = scenario.permanents
    for a in scenario.attackers():
        blockers = scenario.blockers_of(a)
        for b in blockers:
            problems += _blocker_problems(perms[a], perms[b])
        if perms[a].has("menace") and len(blockers) == 1:
            text = f"{perms[a].label} has menace and can't be blocked except by two or more creatures."
            problems.append(Step(text, ("702.111b", "509.1b")))
    return problems


def resolve_combat(scenario: Scenario) -> tuple[Board, list[Step]]:
    """Runs the combat damage step(s) and state-based actions; the board holds what happened."""
    board = Board.start(scenario)
    perms = board.scenario.permanents
    combatants = [i for i, p in enumerate(perms) if p.role in ("attacker", "blocker")]
    first = [i for i in combatants if any(perms[i].has(k) for k in FIRST_STRIKERS)]
    steps: list[Step] = []
    for i in combatants:
        if perms[i].effects or perms[i].plus_counters or perms[i].minus_counters:
            steps += explain_pt(perms[i])[2][1:]  # its P/T going into combat (layer 7)
    if not first:
        steps += _damage_step(board, combatants)
        return board, steps + check_state_based_actions(board)
    why = ("510.4", "702.4b") if any(perms[i].has("double strike") for i in first) else ("510.4", "702.7b")
    text = "A creature in combat has first strike or double strike, so there are two combat damage steps; in the first, only creatures with first strike or double strike deal damage."
    steps.append(Step(text, why))
    steps += _damage_step(board, first, "First combat damage step: ")
    steps += check_state_based_actions(board)
    second = [i for i in combatants if board.alive(i) and (i not in first or perms[i].has("double strike"))]
    steps += _damage_step(board, second, "Second combat damage step: ")
    return board, steps + check_state_based_actions(board)


def _lethal_need(board: Board, blocker: int, pending: dict[int, int], deathtouch: bool) -> int:
    perm = board.scenario.permanents[blocker]
    need = max(0, current_pt(perm)[1] - perm.damage - pending.get(blocker, 0))
    return min(need, 1) if deathtouch else need


def _damage_step(board: Board, participants: list[int], prefix: str = "") -> list[Step]:
    perms = board.scenario.permanents
    steps: list[Step] = []
    assignments: list[tuple[int, int, int]] = []
    pending: dict[int, int] = {}
    for i in participants:
        if perms[i].role == "attacker" and board.alive(i):
            assignments += _assign_attacker(board, i, pending, steps, prefix)
    for i in participants:
        perm = perms[i]
        if perm.role != "blocker" or not board.alive(i) or perm.blocking is None:
            continue
        power = current_pt(perm)[0]
        if not board.alive(perm.blocking):
            continue
        if power <= 0:
            steps.append(
                Step(f"{prefix}{perm.label} has power {power} and assigns no combat damage.", ("510.1a",))
            )
            continue
        assignments.append((i, perm.blocking, power))
        target = perms[perm.blocking].label
        steps.append(Step(f"{prefix}{perm.label} assigns its {power} damage to {target}.", ("510.1d",)))
    if assignments:
        steps.append(Step("All assigned combat damage is dealt at the same time.", ("510.2",)))
    for source, recipient, amount in assignments:
        steps += _deal(board, source, recipient, amount)
    return steps


def _assign_attacker(
    board: Board, a: int, pending: dict[int, int], steps: list[Step], prefix: str
) -> list[tuple[int, int, int]]:
    scenario = board.scenario
    att = scenario.permanents[a]
    power = current_pt(att)[0]
    target = scenario.target.name
    if power <= 0:
        steps.append(
            Step(f"{prefix}{att.label} has power {power} and assigns no combat damage.", ("510.1a",))
        )
        return []
    declared = scenario.blockers_of(a)
    if not declared:
        steps.append(
            Step(f"{prefix}{att.label} is unblocked and assigns its {power} damage to {target}.", ("510.1b",))
        )
        return [(a, TARGET, power)]
    alive = [b for b in declared if board.alive(b)]
    if not alive:
        if att.has("trample"):
            text = f"{prefix}{att.label} was blocked, but no creature blocks it any more; with trample it assigns all {power} damage to {target}."
            steps.append(Step(text, ("702.19d",)))
            return [(a, TARGET, power)]
        text = f"{prefix}{att.label} was blocked, but no creature blocks it any more, so it assigns no combat damage."
        steps.append(Step(text, ("510.1c",)))
        return []
    deathtouch = att.has("deathtouch")
    needs = [_lethal_need(board, b, pending, deathtouch) for b in alive]
    if att.has("trample"):
        split = _split_trample(power, needs)
    elif len(alive) == 1:
        split = [power]
    else:
        split = _split_to_kill(power, needs)
        board.split_choice |= any(n < need for n, need in zip(split, needs, strict=True))
    result = [(a, b, n) for b, n in zip(alive, split, strict=True) if n > 0]
    for b, n in zip(alive, split, strict=True):
        pending[b] = pending.get(b, 0) + n
    excess = power - sum(split)
    if excess > 0:
        result.append((a, TARGET, excess))
    steps.append(_assignment_step(board, a, alive, split, excess, power, prefix))
    return result


def _split_trample(power: int, needs: list[int]) -> list[int]:
    split, left = [], power
    for need in needs:
        give = min(need, left)
        split.append(give)
        left -= give
    return split


def _split_to_kill(power: int, needs: list[int]) -> list[int]:
    """Lethal damage to as many blockers as possible (cheapest first), the rest on the first one not killed."""
    split = [0] * len(needs)
    left = power
    for i in sorted(range(len(needs)), key=lambda k: needs[k]):
        if needs[i] <= left:
            split[i] = needs[i]
            left -= needs[i]
    if left:
        spare = next((i for i in range(len(needs)) if split[i] < needs[i]), len(needs) - 1)
        split[spare] += left
    return split


def _assignment_step(
    board: Board, a: int, alive: list[int], split: list[int], excess: int, power: int, prefix: str
) -> Step:
    perms = board.scenario.permanents
    att = perms[a]
    parts = [f"{n} to {perms[b].label}" for b, n in zip(alive, split, strict=True) if n > 0]
    rules: tuple[str, ...] = ("510.1c",)
    if att.has("trample"):
        if excess:
            parts.append(f"{excess} to {board.scenario.target.name}")
            note = "lethal damage to each blocker first, the rest through (its controller may choose to assign more to the blockers)"
        else:
            note = "it doesn't have enough to assign lethal damage to every blocker, so nothing tramples over"
        rules = ("702.19b", "510.1c")
        if att.has("deathtouch"):
            note += "; with deathtouch, 1 damage counts as lethal"
            rules = ("702.19b", "702.2c", "510.1c")
        return Step(f"{prefix}{att.label} (trample) assigns {', '.join(parts)}: {note}.", rules)
    if len(alive) == 1:
        return Step(f"{prefix}{att.label} assigns all its {power} damage to {perms[alive[0]].label}.", rules)
    note = "its controller divides the damage among the blockers as they choose (there is no damage assignment order); split to destroy as many as possible"
    if att.has("deathtouch"):
        note += " (with deathtouch, 1 damage to each is enough)"
        rules = ("510.1c", "702.2c")
    return Step(f"{prefix}{att.label} assigns {', '.join(parts)}: {note}.", rules)


def _deal(board: Board, source: int, recipient: int, amount: int) -> list[Step]:
    perms = board.scenario.permanents
    src = perms[source]
    if recipient == TARGET:
        steps = _deal_to_target(board, src, amount)
    else:
        rcv = perms[recipient]
        quality = protection_against(rcv, src)
        if quality:
            rule = "702.16j" if quality == "everything" else "702.16e"
            return [
                Step(
                    f"{rcv.label} has protection from {quality}: the {amount} damage from {src.label} is prevented.",
                    (rule,),
                )
            ]
        board.damage_dealt[recipient] = board.damage_dealt.get(recipient, 0) + amount
        if src.has("wither") or src.has("infect"):
            rcv.minus_counters += amount
            board.counters_placed[recipient] = board.counters_placed.get(recipient, 0) + amount
            key, rule = ("infect", "702.90c") if src.has("infect") else ("wither", "702.80a")
            text = f"{src.label} deals {amount} damage to {rcv.label}; because of {key} it becomes {amount} -1/-1 counter{'s' if amount != 1 else ''} instead of marked damage."
            steps = [Step(text, ("120.3d", rule))]
        else:
            rcv.damage += amount
            steps = [Step(f"{src.label} deals {amount} damage to {rcv.label}, marked on it.", ("120.3e",))]
        if src.has("deathtouch"):
            board.deathtouched.add(recipient)
    if src.has("lifelink"):
        board.life_gained[src.controller] += amount
        player = board.scenario.player(src.controller)
        if player.life is not None:
            player.life += amount
        who = "you gain" if src.controller == "you" else "your opponent gains"
        steps.append(Step(f"{src.label} has lifelink: {who} {amount} life.", ("702.15b", "120.3f")))
    return steps


def _deal_to_target(board: Board, src: Permanent, amount: int) -> list[Step]:
    target: AttackTarget = board.scenario.target
    if target.kind != "player":
        before = target.counters
        target.counters = max(0, before - amount)
        board.target_damage += amount
        if target.kind == "planeswalker":
            return [
                Step(
                    f"{src.label} deals {amount} damage to {target.name}: {before - target.counters} loyalty counters are removed.",
                    ("120.3c", "306.8"),
                )
            ]
        return [
            Step(
                f"{src.label} deals {amount} damage to {target.name}: {before - target.counters} defense counters are removed.",
                ("120.3h", "310.6"),
            )
        ]
    defender_who = "opponent" if src.controller == "you" else "you"
    defender = board.scenario.player(defender_who)
    board.player_damage[defender_who] += amount
    whom = "you" if defender_who == "you" else "your opponent"
    if src.has("infect"):
        defender.poison += amount
        board.poison_added[defender_who] += amount
        steps = [
            Step(
                f"{src.label} deals {amount} damage to {whom}; with infect that gives {amount} poison counters instead of life loss.",
                ("120.3b", "702.90b"),
            )
        ]
    else:
        if defender.life is not None:
            defender.life -= amount
        steps = [Step(f"{src.label} deals {amount} damage to {whom}, who loses that much life.", ("120.3a",))]
    if src.toxic:
        defender.poison += src.toxic
        board.poison_added[defender_who] += src.toxic
        steps.append(
            Step(
                f"{src.label} has toxic {src.toxic}: {whom} also get{'s' if whom != 'you' else ''} {src.toxic} poison counters.",
                ("702.164c", "120.3g"),
            )
        )
    return steps
