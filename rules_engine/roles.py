"""Who attacks, who blocks what, and who controls each creature, from the words around each mention.

Phrasings read: "X attacks", "attack with X", "X is blocked by Y and Z", "they block with Y", "X blocks Y",
"I block X with Y", "double block with Y and Z", "Y blocker". Anything else leaves a mention without a role,
which lowers the parser's confidence rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rules_engine.errors import ImpossibleBoard
from rules_engine.lexicon import Token
from rules_engine.mentions import Mention
from rules_engine.model import Controller

ATTACK = r"(attacks?|attacking|attacked|swings?|swinging|swung|sends?|sending|hits?|goes in|go in|swing in)"
BLOCK = r"(blocks?|blocking|blocked|chumps?|chump blocks?|chump blocking|double[- ]blocks?|double[- ]blocked|double[- ]blocking|triple[- ]blocks?|gang[- ]blocks?)"
BLOCKER_BEFORE = re.compile(
    rf"({BLOCK} (it |him |them |that |this )?(with|by|using)|blocked by|blockers? (are|is)|block(ed)? .* with)\W*(\w+\W*){{0,2}}$"
)
ATTACKER_BEFORE = re.compile(
    rf"({ATTACK}( me| us| you| them| him| her| in)? with|{ATTACK} [^.?!]*\b(planeswalker|walker|pw|battle)\b[^.?!]* with|attackers? (are|is))\W*(\w+\W*){{0,2}}$"
)
BLOCKS_VERB_AFTER = re.compile(
    rf"^\W*(which |that |who |then |also )?(is |can |could |will |would |does |did )?{BLOCK}\b(?! by| with)"
)
PREAMBLE = r"((gets|gains|has|had|with|is|was|becomes) [^.?!]*? (and|then|,)\s*)?"
ATTACK_VERB_AFTER = re.compile(
    rf"^\W*{PREAMBLE}(which |that |who |then |also )?(is |are |was |will |would |does |did )?{ATTACK}\b(?! with)"
)
BLOCKED_AFTER = re.compile(
    rf"^\W*{PREAMBLE}(and |but )?(is |gets |got |was |becomes |it's )?(double[- ]|triple[- ])?blocked\b"
)
LIST_GAP = re.compile(r"^\W*(and|,|&|plus|\+)?\W*(a|an|another|one|my|their|his|her)?\W*$")
YOU_DEFEND = re.compile(
    r"\b(attacks? me|attacking me|swings? at me|hits? me|do i take|will i take|would i take|i take|i block|i chump|i double|can i block|i'm blocking|i am blocking|to me\b|i'm attacked|i get attacked)"
)
YOU_ATTACK = re.compile(
    r"\b(i attack|i swing|i'm attacking|i am attacking|they block|he blocks|she blocks|opponent blocks|opp blocks|gets blocked|do i deal|my opponent take|does my opponent|they take|does the opponent)"
)


@dataclass
class Roles:
    attackers: list[int] = field(default_factory=list)
    blockers: dict[int, int] = field(default_factory=dict)
    """Mention index of each blocker -> mention index of the attacker it blocks."""
    unassigned: list[int] = field(default_factory=list)
    ambiguous: bool = False


def _gap(tokens: list[Token], text: str, start: int, end: int) -> str:
    if start >= end:
        return ""
    return text[tokens[start].start : tokens[end - 1].start + len(tokens[end - 1].text)]


def assign_roles(mentions: list[Mention], tokens: list[Token], text: str) -> Roles:
    roles = Roles()
    kinds: list[str | None] = []
    blocks_target: dict[int, int] = {}
    for k, m in enumerate(mentions):
        before = _gap(tokens, text, mentions[k - 1].end if k else 0, m.start)
        after = _gap(tokens, text, m.end, mentions[k + 1].start if k + 1 < len(mentions) else len(tokens))
        kind = _role_from_context(before, after, m)
        if kind is None and k and kinds[-1] in ("attacker", "blocker") and LIST_GAP.match(before):
            kind = kinds[-1]
        if kind == "blocks-next":
            kind = "blocker"
            if k + 1 < len(mentions):
                blocks_target[k] = k + 1
        if kind == "attacker-of-prev" and k:
            blocks_target[k - 1] = k
            kind = "attacker"
        kinds.append(kind)
    for k in range(len(kinds) - 2, -1, -1):  # "their 4/4 and 2/2 attack": a list shares its last item's role
        gap = _gap(tokens, text, mentions[k].end, mentions[k + 1].start)
        if (
            kinds[k] is None
            and kinds[k + 1] in ("attacker", "blocker")
            and LIST_GAP.match(gap)
            and gap.strip()
        ):
            kinds[k] = kinds[k + 1]
    for k, kind in enumerate(kinds):
        if kind == "blocker" and k in blocks_target and kinds[blocks_target[k]] is None:
            kinds[blocks_target[k]] = "attacker"
    _block_x_with_y(kinds, mentions, tokens, text)
    for k, kind in enumerate(kinds):
        if kind == "attacker":
            roles.attackers.append(k)
        elif kind != "blocker":
            roles.unassigned.append(k)
    for k, kind in enumerate(kinds):
        if kind == "blocker":
            target = blocks_target.get(k)
            if target is None or target not in roles.attackers:
                target = _nearest_attacker(k, roles.attackers)
                roles.ambiguous |= len(roles.attackers) > 1
            if target is not None:
                roles.blockers[k] = target
            else:
                roles.unassigned.append(k)
    return roles


def _role_from_context(before: str, after: str, m: Mention) -> str | None:
    if BLOCKER_BEFORE.search(before):
        return "blocker"
    if ATTACKER_BEFORE.search(before):
        return "attacker"
    if re.search(rf"{BLOCK}\W*(\w+\W*){{0,1}}$", before) and re.match(r"^\W*with\b", after):
        return "attacker"  # "block their 4/4 with my 2/2"
    if re.search(rf"\b{BLOCK}\W*(the|their|his|her|my|a|an)?\W*$", before) and not re.search(
        r"\bby\W*$", before
    ):
        return "attacker-of-prev"  # "... 2/2 blocks their 3/3"
    if BLOCKED_AFTER.match(after) or ATTACK_VERB_AFTER.match(after):
        return "attacker"
    if BLOCKS_VERB_AFTER.match(after):
        return "blocks-next"
    if m.role_hint:
        return m.role_hint
    return None


def _block_x_with_y(kinds: list[str | None], mentions: list[Mention], tokens: list[Token], text: str) -> None:
    """ "I block their 5/5 with my 2/2 and my 3/3": the mentions after "with" block the one before it."""
    for k in range(len(kinds) - 1):
        after = _gap(tokens, text, mentions[k].end, mentions[k + 1].start)
        before = _gap(tokens, text, mentions[k - 1].end if k else 0, mentions[k].start)
        if re.match(r"^\W*with\b", after) and re.search(rf"{BLOCK}\W*(\w+\W*){{0,1}}$", before):
            kinds[k] = "attacker"
            j = k + 1
            while j < len(kinds) and kinds[j] in (None, "attacker", "blocker"):
                gap = _gap(tokens, text, mentions[j - 1].end, mentions[j].start)
                if j > k + 1 and not LIST_GAP.match(gap):
                    break
                kinds[j] = "blocker"
                j += 1


def _nearest_attacker(k: int, attackers: list[int]) -> int | None:
    before = [a for a in attackers if a < k]
    if before:
        return before[-1]
    return attackers[0] if attackers else None


def assign_controllers(mentions: list[Mention], roles: Roles, text: str) -> None:
    """Fills each combatant's controller: stated ones first, then the other side, then the asker's side."""
    attackers = [mentions[a] for a in roles.attackers]
    blockers = [mentions[b] for b in roles.blockers]
    stated_att = {m.controller for m in attackers if m.controller}
    stated_blk = {m.controller for m in blockers if m.controller}
    if len(stated_att) > 1:
        raise ImpossibleBoard(
            "All the attacking creatures in one attack belong to the same player (rule 508.1a); the question gives them different controllers."
        )
    if stated_att and stated_att == stated_blk:
        who = "you" if "you" in stated_att else "your opponent"
        raise ImpossibleBoard(
            f"A creature can only block a creature attacking its controller (rule 509.1a), but {who} would control both the attacker and the blocker."
        )
    attacking: Controller
    if stated_att:
        attacking = stated_att.pop()  # type: ignore[assignment]
    elif stated_blk:
        attacking = "opponent" if stated_blk.pop() == "you" else "you"
    elif YOU_DEFEND.search(text) and not YOU_ATTACK.search(text):
        attacking = "opponent"
    else:
        attacking = "you"
    defending: Controller = "opponent" if attacking == "you" else "you"
    for m in attackers:
        m.controller = attacking
    for m in blockers:
        if m.controller and m.controller != defending:
            raise ImpossibleBoard(
                "A creature can only block a creature attacking its controller (rule 509.1a): the question blocks with a creature the defending player doesn't control."
            )
        m.controller = defending
