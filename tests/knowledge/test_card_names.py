"""Name resolution and autocomplete over the real fixture cards and nicknames, plus a synthetic 30k list."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from knowledge.card_names import CardDatabase, compact, fold, format_card, load_nicknames
from knowledge.cards import load_card_dir
from knowledge.errors import UnknownCard
from knowledge.models import Card, CardFace, Ruling

JTMS = "Jace, the Mind Sculptor"
VRYN = "Jace, Vryn's Prodigy // Jace, Telepath Unbound"


@pytest.fixture(scope="module")
def nicknames(cards_dir: Path) -> dict[str, str]:
    return load_nicknames(cards_dir / "nicknames.yaml")


@pytest.fixture(scope="module")
def extra_cards() -> list[Card]:
    """Names the fixtures lack but players mistype: accents, curly apostrophes, a token twin."""
    return [
        Card(
            name="Lim-Dûl's Vault", layout="normal", faces=[CardFace("Lim-Dûl's Vault", "{U}{B}", "Instant")]
        ),
        Card(name="Æther Vial", layout="normal", faces=[CardFace("Æther Vial", "{1}", "Artifact")]),
        Card(name="Ponder", layout="token", faces=[CardFace("Ponder", "", "Token Sorcery")], oracle_id="tok"),
    ]


@pytest.fixture(scope="module")
def db(cards_dir: Path, nicknames: dict[str, str], extra_cards: list[Card]) -> CardDatabase:
    return CardDatabase(extra_cards + load_card_dir(cards_dir), nicknames)


def test_from_dir(cards_dir: Path):
    db = CardDatabase.from_dir(cards_dir)
    assert len(db) == 71
    assert db.resolve("jtms").name == JTMS


def test_fold_and_compact():
    assert fold("Lim-Dûl’s Vault") == fold("lim dul's vault") == "lim duls vault"
    assert fold("Jace, the Mind Sculptor") == "jace the mind sculptor"
    assert fold("Æther Vial") == "aether vial"
    assert compact("Kiki-Jiki, Mirror Breaker") == compact("kikijiki mirror-breaker")


def test_load_nicknames(nicknames: dict[str, str], tmp_path: Path):
    assert len(nicknames) == 118
    assert nicknames["jace tms"] == nicknames["jtms"] == JTMS
    assert nicknames["lion's eye"] == "Lion's Eye Diamond"
    odd = tmp_path / "nick.yaml"
    odd.write_text("# comment\nBOB: Dark Confidant\nyes: Some Card\nempty:\nnum: 3\n", encoding="utf-8")
    assert load_nicknames(odd) == {"bob": "Dark Confidant"}  # `yes` is a YAML boolean, not a nickname
    assert load_nicknames(tmp_path / "absent.yaml") == {}
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_nicknames(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (JTMS, JTMS),  # exact
        ("JACE, THE MIND SCULPTOR", JTMS),  # case
        ("jace the mind sculptor", JTMS),  # punctuation
        ("jace tms", JTMS),  # nickname
        ("JTMS", JTMS),
        ("baby jace", VRYN),
        ("goyf", "Tarmogoyf"),
        ("tarmo goyf", "Tarmogoyf"),  # folded: spaces don't matter
        ("tarmogyof", "Tarmogoyf"),  # fuzzy
        ("Tarmogof", "Tarmogoyf"),
        ("fire", "Fire // Ice"),  # face names
        ("Ice", "Fire // Ice"),
        ("fire//ice", "Fire // Ice"),
        ("kenzo the hardhearted", "Bushi Tenderfoot // Kenzo the Hardhearted"),  # flip face
        ("Arlinn, Embraced by the Moon", "Arlinn Kord // Arlinn, Embraced by the Moon"),  # transform back
        ("the omenkeel", "Cosima, God of the Voyage // The Omenkeel"),  # modal DFC back
        ("thermo alchemist", "Thermo-Alchemist"),  # hyphen
        ("Erebos’s Titan", "Erebos's Titan"),  # curly apostrophe
        ("erebos titan", "Erebos's Titan"),  # missing 's: fuzzy
        ("lim dul's vault", "Lim-Dûl's Vault"),  # accent
        ("Lim-Dul’s Vault", "Lim-Dûl's Vault"),
        ("aether vial", "Æther Vial"),
        ("  poison   tip archer ", "Poison-Tip Archer"),
        ("mairsil", "Mairsil, the Pretender"),  # clear single fuzzy match
    ],
)
def test_resolve(db: CardDatabase, query: str, expected: str):
    assert db.resolve(query).name == expected


def test_real_card_wins_its_name_over_a_token(db: CardDatabase):
    assert db.resolve("Ponder").layout == "normal"
    assert db.get("ponder") is not None and db.get("ponder").layout == "normal"


def test_nickname_to_a_card_not_in_the_data(db: CardDatabase):
    assert db.resolve_name("bolt") == "Lightning Bolt"
    with pytest.raises(UnknownCard) as info:
        db.resolve("bolt")
    assert info.value.name == "Lightning Bolt"


def test_ambiguous_name_asks_instead_of_guessing(db: CardDatabase):
    with pytest.raises(UnknownCard) as info:
        db.resolve("jace")
    assert info.value.suggestions[:2] == [VRYN, JTMS] or info.value.suggestions[:2] == [JTMS, VRYN]
    assert len(info.value.suggestions) <= 5
    assert "Did you mean" in str(info.value)


@pytest.mark.parametrize("query", ["xyzzy plugh", "", "   "])
def test_unknown_name(db: CardDatabase, query: str):
    with pytest.raises(UnknownCard) as info:
        db.resolve(query)
    assert info.value.suggestions == []


def test_near_miss_gives_suggestions(db: CardDatabase):
    with pytest.raises(UnknownCard) as info:
        db.resolve("azor gate")
    assert info.value.suggestions[0] == "Azor's Gateway // Sanctum of the Sun"


def test_get_len_names(db: CardDatabase, cards_dir: Path):
    assert db.get("tarmogoyf").name == "Tarmogoyf"
    assert db.get("Ice").name == "Fire // Ice"
    assert db.get("goyf") is None  # get never guesses or expands nicknames
    assert "Fire // Ice" in db and "goyf" not in db
    names = db.names()
    assert len(db) == len(names) == len(set(names))
    assert len(db) == 72 + 2 - 1  # fixtures + 2 extra; the B.F.M. halves and the token share a name
    assert names == sorted(names, key=fold)


def test_suggest_orders_prefix_then_word_start(db: CardDatabase):
    assert db.suggest("tarm")[0] == "Tarmogoyf"
    assert db.suggest("jace, the")[0] == JTMS
    assert set(db.suggest("jace")) == {JTMS, VRYN}
    assert db.suggest("mind") == [JTMS]  # word start
    assert db.suggest("kenzo") == ["Bushi Tenderfoot // Kenzo the Hardhearted"]  # face name
    assert db.suggest("jtm") == [JTMS]  # nickname prefix
    assert db.suggest("lim dul")[0] == "Lim-Dûl's Vault"
    assert db.suggest("kikijiki") == []  # not in the data
    the = db.suggest("the")
    assert the[0] == "The Hunter"  # a name starting with "The" before names with a later "the"
    assert "Cosima, God of the Voyage // The Omenkeel" in the


def test_suggest_tolerates_a_typo(db: CardDatabase):
    assert db.suggest("tarmogyof")[0] == "Tarmogoyf"
    assert db.suggest("mairsli") == ["Mairsil, the Pretender"]


def test_suggest_limits(db: CardDatabase):
    assert len(db.suggest("", limit=5)) == 5
    assert db.suggest("", limit=5) == db.names()[:5]
    assert db.suggest("a", limit=0) == []
    assert len(db.suggest("t", limit=3)) == 3


@pytest.fixture(scope="module")
def synthetic() -> tuple[CardDatabase, list[str]]:
    rng = random.Random(7)
    syllables = ["ka", "ro", "mi", "th", "an", "el", "dra", "gon", "sh", "ar", "ve", "li", "ur", "os", "ne"]
    names: set[str] = set()
    while len(names) < 30_000:
        words = [
            "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 4))
        ]
        names.add(" ".join(w.capitalize() for w in words))
    ordered = sorted(names)
    return CardDatabase([Card(name=n, layout="normal", faces=[CardFace(n)]) for n in ordered]), ordered


def test_suggest_over_30k_names(synthetic: tuple[CardDatabase, list[str]]):
    db, names = synthetic
    assert len(db) == 30_000
    rng = random.Random(3)
    for name in rng.sample(names, 200):
        query = name[: rng.randint(2, len(name))]
        got = db.suggest(query)
        assert 0 < len(got) <= 25
        assert len(set(got)) == len(got)
        starting = [n for n in got if compact(n).startswith(compact(query))]
        assert got[: len(starting)] == starting  # prefix matches (spaces ignored) first
        if fold(name) == fold(query):
            assert got[0] == name
    assert db.resolve(names[123].lower()).name == names[123]


def test_format_card(db: CardDatabase):
    jace = format_card(db.resolve("jace tms"))
    assert jace.startswith("Jace, the Mind Sculptor {2}{U}{U}\nLegendary Planeswalker — Jace\n+2:")
    assert "Loyalty: 3" in jace and jace.endswith("0 rulings")
    fire_ice = format_card(db.resolve("fire"))
    assert fire_ice.startswith("Fire // Ice (split)\nFire {1}{R}\nInstant\n")
    assert "----\nIce {1}{U}\nInstant\nTap target permanent.\nDraw a card." in fire_ice
    assert format_card(db.resolve("mairsil")).endswith("11 rulings")
    assert "*/1+*" in format_card(db.resolve("goyf"))
    one = Card("X", "normal", [CardFace("X")], rulings=[Ruling("2020-01-01", "r")])
    assert format_card(one).endswith("1 ruling")
