"""What a question asks: damage to the player, damage to creatures, deaths, counters, P/T, life, poison,
loyalty, or whether a block is legal. Ordered patterns over the normalised text; the first match wins.
"""

from __future__ import annotations

import re

_WHO = r"(i|you|they|he|she|my opponent|the opponent|opponent|the player|the defending player|we)"
ASK_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "block_legal",
        re.compile(
            r"\b(can|could|may|is it legal|legal|allowed|able to)\b[^.?]*\bblock|\bcan\b[^.?]*\bbe blocked\b|"
            r"\blegal block\b|\bblock\w* legal\b|\bblock[^?]*\b(legal|allowed)\b"
        ),
    ),
    ("poison", re.compile(r"\bpoison")),
    (
        "loyalty",
        re.compile(
            r"\bloyalty\b[^.]*\?|\bdefense\b[^.]*\?|\b(planeswalker|battle|walker)\b[^.?]*\b(left|survive|die|dies)\b"
        ),
    ),
    (
        "counters",
        re.compile(
            r"\bhow many\b[^?]*\bcounters?\b|\bwhat counters\b|\bcounters?\b[^?]*\b(get|gets|put|placed|end up)\b[^.]*\?"
        ),
    ),
    (
        "lifegain",
        re.compile(r"\bhow much life\b[^?]*\b(gain|get)\b|\b(gain|gains|gained)\b[^?.]*\blife\b[^.]*\?"),
    ),
    (
        "life",
        re.compile(
            r"\blife total\b|\bwhat life\b|\bhow much life\b|\bwhat('s| is| am) (my|their|his|her|i|the opponent|my opponent)\b[^?]*\b(life|at)\b|"
            r"\b(am i|is he|is she|are they|are we|do i|does he|does she|do they|does my opponent|is my opponent)\b[^?]*\b(dead|lose|losing|die)\b|"
            r"\blose the game\b|\bwin the game\b|\bwho wins\b|\blethal\b|\b(do|will|would|can|did) (i|we|they|he|she) win\b"
        ),
    ),
    (
        "player_damage",
        re.compile(
            rf"\bhow much (damage |combat damage )?(do|does|will|would|did|can|should)?\s*{_WHO}\s*(take|get hit for|lose|deal)\b|"
            r"\bhow much\b[^?]*\b(to (me|the player|my opponent|the opponent|them|him|her|the defending player|face|the face|my face|their face|you)|"
            r"trample\w* (over|through)|go(es)? through|gets? through|carr(y|ies) over|over the top|through to)\b|"
            r"\bhow much (damage )?tramples\b|\bhow much do i take\b|\bhow much (damage )?(do|does|will) (i|they|he|she|my opponent) take\b|"
            r"\b(damage|how much) (do|does|will) (i|they|he|she|my opponent|the player) (take|get)\b"
        ),
    ),
    (
        "creature_damage",
        re.compile(
            r"\bhow much damage\b[^?]*\b(to|on)\b[^?]*\b(blocker|creature|attacker|\d+/\d+|card\d+|each|it)s?\b|"
            r"\bhow much damage (is|gets) (dealt|marked)\b|\bhow much damage does (the|each|my|their|his|her) (blocker|creature|\d+/\d+)"
        ),
    ),
    (
        "pt",
        re.compile(
            r"\bwhat('s| is| are| would be| will be)? (its|the|it's|their|my|his|her)? ?(final |new |resulting )?(pt|power|toughness|stats|size)\b|"
            r"\bwhat (is|would|will|does) it\b( be| end up| become)?|\bwhat's it\b|\bhow big\b|\bwhat size\b|\bfinal (pt|power)|"
            r"\bpower and toughness\b|\bend up as\b|\bwhat is the creature\b|\bwhat (is|does) (my|their|the) (creature|card\d+|\d+/\d+)\b"
        ),
    ),
    (
        "deaths",
        re.compile(
            r"\b(die|dies|died|dying|survive\w*|destroyed|live|lives|trade|trades|kill\w*|dead|graveyard|what happens|end up)\b"
        ),
    ),
]


# "I assign 3 to the 2/3 and 2 to the 3/3: is that legal?" asks to check a split the player chose, which the
# calculator does not model (it makes the usual choice itself): answering "the block is legal" would answer
# another question, so such questions take the normal path.
_CHOSEN_SPLIT = re.compile(
    r"\b(legal|allowed|can|could|may)\b[^?]*\bassign|"
    r"\b(assign\w*|puts?|split\w*|divid\w*)\b[^?]*\b(legal|allowed|okay|ok|fine)\b|"
    r"\bdamage assignment\b"
)


def detect_ask(norm: str, is_combat: bool) -> tuple[str, float]:
    """(ask, confidence): the first pattern that matches; a question with no recognisable ask is refused."""
    if _CHOSEN_SPLIT.search(norm):
        return "chosen_split", 0.0
    for ask, pattern in ASK_PATTERNS:
        if pattern.search(norm):
            if ask == "block_legal" and not is_combat:
                continue
            return ask, 1.0
    return ("outcome", 0.5) if is_combat else ("pt", 0.5)
