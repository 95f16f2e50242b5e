"""The game-state model the calculator works on: permanents, the attack, the players, and the question asked.

A :class:`Scenario` is plain data (lists, ints, strings) so a thread can keep it as JSON and a follow-up can
change it. Runtime state during a calculation (damage dealt this combat, death) lives in :mod:`combat` and
:mod:`sba`, never here, so solving a scenario twice gives the same answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Controller = Literal["you", "opponent"]
Role = Literal["attacker", "blocker", "none"]
EffectKind = Literal["set", "modify", "switch"]

COLORS = ("white", "blue", "black", "red", "green")

# Keywords the calculator applies. Everything else a question names is either inert for the arithmetic it
# does (see lexicon.INERT_KEYWORDS) or makes the parser refuse the question.
MODELED_KEYWORDS = frozenset(
    {
        "flying",
        "reach",
        "menace",
        "trample",
        "deathtouch",
        "lifelink",
        "first strike",
        "double strike",
        "wither",
        "infect",
        "indestructible",
        "defender",
        "shadow",
        "fear",
        "intimidate",
        "horsemanship",
        "skulk",
    }
)


@dataclass(slots=True)
class PTEffect:
    """One continuous effect on power/toughness (rule 613.4), applied in its sublayer in timestamp order."""

    kind: EffectKind
    """"set" (layer 7b: "becomes 5/5"), "modify" (layer 7c: "+2/+2"), "switch" (layer 7d)."""
    power: int = 0
    toughness: int = 0
    timestamp: int = 0
    """Order the effect began to apply (rule 613.7b); the question's order unless it says otherwise."""
    text: str = ""
    """How the question put it, for the steps ("+2/+2 until end of turn")."""


@dataclass(slots=True)
class Permanent:
    """A creature (or, for the legend rule, any permanent) as the question describes it."""

    label: str
    """How the answer names it: "your 6/6", "the 3/3", "Tarmogoyf"."""
    power: int
    toughness: int
    """Printed (base) power and toughness, before any effect or counter (rule 613.1)."""
    controller: Controller = "you"
    role: Role = "none"
    blocking: int | None = None
    """Index (into ``Scenario.permanents``) of the attacker this creature blocks."""
    keywords: list[str] = field(default_factory=list)
    toxic: int = 0
    protection: list[str] = field(default_factory=list)
    """Qualities: colors, "creatures", "everything", "artifacts"."""
    colors: list[str] = field(default_factory=list)
    artifact: bool = False
    legendary: bool = False
    card_name: str | None = None
    plus_counters: int = 0
    minus_counters: int = 0
    damage: int = 0
    """Damage already marked on it before the event the question asks about (rule 120.6)."""
    effects: list[PTEffect] = field(default_factory=list)
    cant_block: bool = False
    tapped: bool = False

    def has(self, keyword: str) -> bool:
        return keyword in self.keywords


@dataclass(slots=True)
class AttackTarget:
    """What the attackers attack: the defending player, a planeswalker or a battle."""

    kind: Literal["player", "planeswalker", "battle"] = "player"
    name: str = "the defending player"
    counters: int = 0
    """Loyalty (planeswalker) or defense (battle) counters."""


@dataclass(slots=True)
class PlayerState:
    who: Controller
    life: int | None = None
    """Life total when the question gives it; None means "not given" (the answer then says how much changes)."""
    poison: int = 0


@dataclass(slots=True)
class Scenario:
    kind: str
    """"combat", "block" (legality only), "pt" (layers) or "sba"."""
    ask: str
    """What the question wants: "player_damage", "creature_damage", "deaths", "counters", "pt", "life",
    "lifegain", "poison", "block_legal", "loyalty", "outcome"."""
    permanents: list[Permanent] = field(default_factory=list)
    target: AttackTarget = field(default_factory=AttackTarget)
    you: PlayerState = field(default_factory=lambda: PlayerState("you"))
    opponent: PlayerState = field(default_factory=lambda: PlayerState("opponent"))
    subject: int | None = None
    """Index of the permanent a "pt"/"counters" question is about."""

    def attackers(self) -> list[int]:
        return [i for i, p in enumerate(self.permanents) if p.role == "attacker"]

    def blockers_of(self, attacker: int) -> list[int]:
        return [i for i, p in enumerate(self.permanents) if p.role == "blocker" and p.blocking == attacker]

    def player(self, who: Controller) -> PlayerState:
        return self.you if who == "you" else self.opponent

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scenario:
        perms = [
            Permanent(**{**p, "effects": [PTEffect(**e) for e in p.get("effects", [])]})
            for p in data.get("permanents", [])
        ]
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown scenario fields: {sorted(extra)}")
        return cls(
            kind=data["kind"],
            ask=data["ask"],
            permanents=perms,
            target=AttackTarget(**data.get("target", {})),
            you=PlayerState(**data.get("you", {"who": "you"})),
            opponent=PlayerState(**data.get("opponent", {"who": "opponent"})),
            subject=data.get("subject"),
        )


@dataclass(slots=True)
class Step:
    text: str
    rules: tuple[str, ...] = ()


@dataclass(slots=True)
class Solution:
    verdict: str
    steps: list[Step]
    rules: list[str]
    """Every rule number the steps used, in order of first use."""
    confidence: float
    scenario: Scenario
    kind: str
    outcome: dict[str, Any] = field(default_factory=dict)
    """Machine-readable results (player damage, deaths, final P/T, ...) for tests and the eval."""

    def text(self) -> str:
        """The answer as a player reads it: the verdict, then each step with its rules."""
        lines = [self.verdict]
        for step in self.steps:
            cite = f" (CR {', '.join(step.rules)})" if step.rules else ""
            lines.append(f"- {step.text}{cite}")
        return "\n".join(lines)


def rules_in_order(steps: list[Step]) -> list[str]:
    return list(dict.fromkeys(rule for step in steps for rule in step.rules))
