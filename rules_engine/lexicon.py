"""Words the parser knows: normalisation, tokens, keywords, colours, and the cues that put a question out of
scope. Everything here is data or a pure function over strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rules_engine.model import COLORS, MODELED_KEYWORDS

NUMBER_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "twenty": 20,
}

# Keywords that don't change the arithmetic the calculator does (attacking/blocking legality aside, which
# the question already settled by describing the attack): accepted and noted, never applied.
INERT_KEYWORDS = frozenset({"vigilance", "haste", "hexproof", "shroud", "ward", "flash", "convoke", "crew"})

# Keywords that change combat in ways the calculator doesn't model: a question naming one takes the normal path.
UNMODELED_KEYWORDS = frozenset(
    {
        "banding",
        "bushido",
        "flanking",
        "rampage",
        "afflict",
        "exalted",
        "annihilator",
        "battle cry",
        "provoke",
        "persist",
        "undying",
        "regenerate",
        "totem armor",
        "umbra armor",
        "trample over planeswalkers",
        "protection from everything but",
        "myriad",
        "melee",
        "mentor",
        "training",
        "dethrone",
        "frenzy",
        "bloodthirst",
        "ninjutsu",
        "phasing",
        "changeling",
        "devour",
        "modular",
        "graft",
        "evolve",
        "riot",
        "backup",
        "blitz",
        "dash",
        "enlist",
        "toxic x",
    }
)

# Agent nouns players use for keyworded creatures ("a 6/6 trampler").
KEYWORD_NOUNS = {
    "trampler": "trample",
    "flyer": "flying",
    "flier": "flying",
    "deathtoucher": "deathtouch",
    "lifelinker": "lifelink",
    "first-striker": "first strike",
    "double-striker": "double strike",
}
TWO_WORD_KEYWORDS = {"first strike", "double strike", "first striker", "double striker"}
KEYWORD_ADJECTIVES = {
    "flying": "flying",
    "trampling": "trample",
    "menacing": "menace",
    "unblockable": "unblockable",
}

CREATURE_NOUNS = frozenset(
    {
        "creature",
        "token",
        "guy",
        "dude",
        "body",
        "beater",
        "blocker",
        "attacker",
        "monster",
        "fatty",
        "wall",
        "one",
        "dork",
        "thing",
        "elf",
        "goblin",
        "zombie",
        "soldier",
        "human",
        "knight",
        "beast",
        "dragon",
        "angel",
        "bird",
        "spirit",
        "wurm",
        "giant",
        "elemental",
        "vampire",
        "demon",
        "horror",
        "saproling",
        "squirrel",
        "cat",
        "dog",
        "wolf",
        "bear",
        "construct",
        "golem",
        "thopter",
        "servo",
        "warrior",
        "rat",
        "snake",
        "insect",
        "ape",
        "illusion",
        "eldrazi",
        "phyrexian",
        "mite",
    }
)
POSSESSIVE_YOU = frozenset({"my", "mine", "our"})
POSSESSIVE_OPPONENT = frozenset(
    {"their", "his", "her", "opponent's", "opponents", "opponent", "theirs", "enemy", "opp's", "opps"}
)
DETERMINERS = frozenset({"a", "an", "the", "another", "other", "this", "that", "some", "your", "its"})
COLOR_WORDS = {c: c for c in COLORS} | {"colorless": "colorless"}
MODIFIER_ADJECTIVES = frozenset(
    {
        "legendary",
        "artifact",
        "untapped",
        "tapped",
        "vanilla",
        "base",
        "lone",
        "single",
        "big",
        "small",
        "little",
        "new",
        "same",
        "nontoken",
    }
)

# Phrases that mean the question is about something the calculator doesn't model. Matched on normalised text.
OUT_OF_SCOPE = re.compile(
    r"\b(whenever|trigger\w*|prevent\w*|regenerat\w*|sacrific\w*|exile\w*|bounce|flicker|fights?|"
    r"equip\w*|aura|enchanted|umbra|instead of|redirect\w*|double (the )?damage|twice th|doubl(e|es|ing) (the )?(counters|damage)|"
    r"commander damage|two-headed|2hg|phas(e|es|ed|ing) out|an additional creature|any number of creatures|"
    r"blocks? (both|two|all)|each creature (you|they|he|she|your opponent|that player) controls?|all creatures|creatures you control get|wrath|sweeper|"
    r"lightning bolt|bolt|shock|fireball|damage to any target|hardened scales|doubling season|"
    r"ninjutsu|for each|equal to|where x|x/x|\*/|copy|clone|mutate|transform|flip|dies?,? (return|draw)|"
    r"counter (it|the spell)|in response|the stack|cast(s|ing)? .* (instant|sorcery) .* (after|before) (damage|blockers))\b"
)

TOKEN_RE = re.compile(r"[+-]?\d+/[+-]?\d+s?|[a-z0-9][a-z0-9'’\-]*|[.,;:?!()]")
PT_RE = re.compile(r"^([+-]?)(\d+)/([+-]?)(\d+)(s?)$")


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    start: int
    """Character offset in the normalised text."""


def normalise(question: str) -> str:
    text = question.casefold()
    text = text.translate(
        str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "−": "-", "–": "-", "—": " - "})
    )
    text = re.sub(r"(\d),(\d{3})\b", r"\1\2", text)  # 10,000 -> 10000
    text = re.sub(r"\bp/t\b", "pt", text)
    text = re.sub(r"\b(a pair of|a couple of|a couple)\b", "2", text)
    text = re.sub(
        r"\b(" + "|".join(NUMBER_WORDS) + r")\b(?!/)",
        lambda m: str(NUMBER_WORDS[m.group(1)]),
        text,
    )
    text = re.sub(r"\b(first|double)[ -]strik(e|er|ers)\b", lambda m: f"{m.group(1)}-strik{m.group(2)}", text)
    return text


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(0), m.start()) for m in TOKEN_RE.finditer(text)]


def parse_pt(token: str) -> tuple[int, int, bool] | None:
    """(power, toughness, is_modifier) for "3/3", "-1/3" (a creature) or "+2/+2", "-1/-1" (a modifier)."""
    m = PT_RE.match(token)
    if not m:
        return None
    psign, p, tsign, t, _ = m.groups()
    power = -int(p) if psign == "-" else int(p)
    toughness = -int(t) if tsign == "-" else int(t)
    return power, toughness, bool(psign) and bool(tsign)


def keyword_at(tokens: list[Token], i: int) -> tuple[str, int] | None:
    """The modelled or inert keyword starting at token ``i`` and how many tokens it spans."""
    word = tokens[i].text
    if word in ("first-strike", "double-strike"):
        return word.replace("-", " "), 1
    singular = word[:-1] if word.endswith("s") else word
    for form in (word, singular):
        if form in ("first-striker", "double-striker"):
            return form.replace("-striker", " strike"), 1
        if form in KEYWORD_NOUNS:
            return KEYWORD_NOUNS[form], 1
    if word in MODELED_KEYWORDS or word in INERT_KEYWORDS:
        return word, 1
    if word in KEYWORD_ADJECTIVES and KEYWORD_ADJECTIVES[word] in MODELED_KEYWORDS:
        return KEYWORD_ADJECTIVES[word], 1
    return None


def unmodeled_keyword_in(text: str) -> str | None:
    for keyword in UNMODELED_KEYWORDS:
        if re.search(rf"\b{re.escape(keyword)}\b", text):
            return keyword
    return None


# Words a board question is made of besides its creatures; the parser counts the others (see
# parser._unknown_word_penalty).
KNOWN_WORDS = frozenset(
    """
    a an the my your their his her its our i you they he she we it me them him us this that these those
    and or but so then if when what which who how much many does do did is are was were be been being will
    would can could should may might to of in on at by for from with without into onto after before until
    end turn attack attacks attacking attacked attacker swing swings swinging block blocks blocking blocked
    blocker chump double triple gang unblocked nobody nothing no not don't doesn't isn't didn't can't
    damage combat deal deals dealt take takes taking get gets got gain gains gained lose loses lost life
    total poison counter counters loyalty defense planeswalker walker battle player opponent opponents
    die dies died survive survives destroyed dead kill kills trade trades win wins happen happens happened
    power toughness pt stats size big final new base becomes become became make makes made set switch
    switched swap swapped spell spells effect another other one also still just only already marked
    creature creatures token tokens legendary same name control controls have has had there here now
    over through trample tramples goes go left remain remains much lethal assign assigns assigned
    first second strike strikes each both all any every legal allowed able
    """.split()
)
