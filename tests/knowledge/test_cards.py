"""Card data from the real Scryfall fixtures, streamed bulk files, MTGJSON, and [[name]] extraction."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from knowledge.cards import (
    ATOMIC_CARDS_FILE,
    ORACLE_CARDS_FILE,
    RULINGS_FILE,
    card_from_scryfall,
    cards_from_scryfall,
    extract_bracket_names,
    iter_json_array,
    load_atomic_cards,
    load_card_dir,
    load_rulings_bulk,
    load_scryfall_bulk,
    rulings_from_scryfall,
)
from knowledge.errors import DataMissing
from knowledge.models import Card


@pytest.fixture(scope="module")
def fixture_cards(cards_dir: Path) -> list[Card]:
    return load_card_dir(cards_dir)


@pytest.fixture(scope="module")
def by_name(fixture_cards: list[Card]) -> dict[str, Card]:
    return {card.name: card for card in fixture_cards}


def _raw(cards_dir: Path, name: str) -> dict:
    return json.loads((cards_dir / name).read_text(encoding="utf-8"))


# --- the fixture folder ---------------------------------------------------------------------------------


def test_fixture_folder_loads_each_card_once(fixture_cards: list[Card]):
    ids = Counter(card.oracle_id for card in fixture_cards)
    assert all(card.oracle_id for card in fixture_cards)
    assert max(ids.values()) == 1
    assert len(fixture_cards) == 72
    assert sum(len(card.faces) for card in fixture_cards) == 92
    names = Counter(card.name for card in fixture_cards)
    # Printings lists, language lists and single-card files of the same card merge into one card...
    assert names["Disenchant"] == names["Wicked Guardian"] == names["Erebos's Titan"] == 1
    # ...but the two halves of B.F.M. are two cards (two oracle ids) with one name.
    assert names["B.F.M. (Big Furry Monster)"] == 2


def test_non_english_printings_use_the_english_oracle_card(by_name: dict[str, Card]):
    titan = by_name["Erebos's Titan"]
    assert "indestructible" in titan.faces[0].oracle_text
    assert titan.scryfall_uri is not None and "/en/" not in titan.scryfall_uri
    assert "/de/" not in (titan.image_uri or "")  # the English printing replaced the German one
    sarkhan = by_name["Sarkhan the Masterless"]  # only a Japanese printing in the fixtures
    assert sarkhan.faces[0].loyalty == "5"
    assert sarkhan.faces[0].oracle_text.startswith("Whenever a creature attacks you")


def test_rulings_lists_attach_by_oracle_id(by_name: dict[str, Card]):
    assert len(by_name["Ixidron"].rulings) == 5
    assert len(by_name["Mairsil, the Pretender"].rulings) == 11
    assert len(by_name["Tawnos's Coffin"].rulings) == 6
    (ruling,) = [r for r in by_name["Ixidron"].rulings if r.text.startswith("Creatures turned face down by")]
    assert ruling.date == "2018-04-27" and ruling.source == "wotc"
    dates = [r.date for r in by_name["Mairsil, the Pretender"].rulings]
    assert dates == sorted(dates)
    assert by_name["Tarmogoyf"].rulings == []


@pytest.mark.parametrize(
    ("name", "layout", "faces"),
    [
        ("Fire // Ice", "split", ["Fire", "Ice"]),
        ("Claim // Fame", "split", ["Claim", "Fame"]),
        ("Bushi Tenderfoot // Kenzo the Hardhearted", "flip", ["Bushi Tenderfoot", "Kenzo the Hardhearted"]),
        (
            "Arlinn Kord // Arlinn, Embraced by the Moon",
            "transform",
            ["Arlinn Kord", "Arlinn, Embraced by the Moon"],
        ),
        (
            "Halvar, God of Battle // Sword of the Realms",
            "modal_dfc",
            ["Halvar, God of Battle", "Sword of the Realms"],
        ),
        ("Kessig", "planar", ["Kessig"]),
        ("Ignite the Cloneforge!", "scheme", ["Ignite the Cloneforge!"]),
        ("Tarmogoyf", "normal", ["Tarmogoyf"]),
    ],
)
def test_layouts_and_faces(by_name: dict[str, Card], name: str, layout: str, faces: list[str]):
    card = by_name[name]
    assert card.layout == layout
    assert [face.name for face in card.faces] == faces


def test_face_fields(by_name: dict[str, Card]):
    fire, ice = by_name["Fire // Ice"].faces
    assert (fire.mana_cost, fire.type_line) == ("{1}{R}", "Instant")
    assert ice.oracle_text == "Tap target permanent.\nDraw a card."
    assert by_name["Fire // Ice"].mana_value == 4.0
    assert by_name["Fire // Ice"].colors == ["R", "U"]
    arlinn = by_name["Arlinn Kord // Arlinn, Embraced by the Moon"]
    assert arlinn.faces[0].loyalty == "3" and arlinn.faces[1].mana_cost == ""
    assert arlinn.colors == ["G", "R"]  # from the faces: the card object has none of its own
    assert arlinn.image_uri and arlinn.image_uri.endswith("243a.jpg?1518204361")
    kenzo = by_name["Bushi Tenderfoot // Kenzo the Hardhearted"].faces[1]
    assert (kenzo.power, kenzo.toughness) == ("3", "4")
    goyf = by_name["Tarmogoyf"].faces[0]
    assert (goyf.power, goyf.toughness) == ("*", "1+*")
    jace = by_name["Jace, the Mind Sculptor"]
    assert jace.faces[0].loyalty == "3" and jace.mana_value == 4.0
    assert jace.scryfall_uri and "utm_source" not in jace.scryfall_uri


def test_keywords_come_from_scryfall(cards_dir: Path, by_name: dict[str, Card]):
    raw = _raw(cards_dir, "thermoalchemist.json")
    assert by_name["Thermo-Alchemist"].keywords == raw.get("keywords", [])
    wurm = by_name["Autochthon Wurm"]
    assert set(wurm.keywords) >= {"Convoke", "Trample"}


def test_error_objects_and_unreadable_files_are_skipped(tmp_path: Path, cards_dir: Path, caplog):
    for name in ("searchtest-badsearch.json", "tarmogoyf.json", "ixidron.json", "ixidron-rulings.json"):
        (tmp_path / name).write_bytes((cards_dir / name).read_bytes())
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / ".oracle_cards.abc.part").write_text("[{", encoding="utf-8")  # an update in progress
    cards = load_card_dir(tmp_path)
    assert sorted(card.name for card in cards) == ["Ixidron", "Tarmogoyf"]
    assert "broken.json" in caplog.text


def test_missing_folder_says_how_to_get_data(tmp_path: Path):
    with pytest.raises(DataMissing, match="hexcore data update"):
        load_card_dir(tmp_path / "nope")


# --- Scryfall objects not in the fixtures ---------------------------------------------------------------


def _card(name: str, layout: str, **fields) -> dict:
    return {
        "object": "card",
        "name": name,
        "layout": layout,
        "lang": "en",
        "oracle_id": f"id-{name}",
        **fields,
    }


@pytest.mark.parametrize(
    ("raw", "faces"),
    [
        (
            _card(
                "Bonecrusher Giant // Stomp",
                "adventure",
                cmc=3.0,
                colors=["R"],
                card_faces=[
                    {
                        "name": "Bonecrusher Giant",
                        "mana_cost": "{2}{R}",
                        "type_line": "Creature — Giant",
                        "oracle_text": "Whenever ...",
                        "power": "4",
                        "toughness": "3",
                    },
                    {
                        "name": "Stomp",
                        "mana_cost": "{1}{R}",
                        "type_line": "Instant — Adventure",
                        "oracle_text": "Damage can't be prevented this turn.",
                    },
                ],
            ),
            ["Bonecrusher Giant", "Stomp"],
        ),
        (
            _card(
                "Brisela, Voice of Nightmares",
                "meld",
                cmc=0.0,
                type_line="Legendary Creature — Eldrazi Angel",
                power="9",
                toughness="10",
            ),
            ["Brisela, Voice of Nightmares"],
        ),
        (
            _card("Urza's Saga", "saga", type_line="Enchantment Land — Urza's Saga", oracle_text="I — ..."),
            ["Urza's Saga"],
        ),
        (_card("Wizard Class", "class", mana_cost="{U}", type_line="Enchantment — Class"), ["Wizard Class"]),
        (_card("Goblin", "token", type_line="Token Creature — Goblin", power="1", toughness="1"), ["Goblin"]),
        (
            {  # reversible cards keep oracle_id and cmc on the faces only
                "object": "card",
                "name": "Zndrsplt // Zndrsplt",
                "layout": "reversible_card",
                "lang": "en",
                "card_faces": [
                    {
                        "name": "Zndrsplt",
                        "oracle_id": "zz",
                        "cmc": 3.0,
                        "mana_cost": "{2}{U}",
                        "colors": ["U"],
                    },
                    {
                        "name": "Zndrsplt",
                        "oracle_id": "zz",
                        "cmc": 3.0,
                        "mana_cost": "{2}{U}",
                        "colors": ["U"],
                    },
                ],
            },
            ["Zndrsplt", "Zndrsplt"],
        ),
    ],
)
def test_other_layouts(raw: dict, faces: list[str]):
    card = card_from_scryfall(raw)
    assert card is not None
    assert [face.name for face in card.faces] == faces
    assert card.oracle_id


def test_reversible_card_takes_oracle_id_and_cost_from_its_face():
    raw = {
        "object": "card",
        "name": "A // A",
        "layout": "reversible_card",
        "card_faces": [{"name": "A", "oracle_id": "oid", "cmc": 2.0, "colors": ["G"]}, {"name": "A"}],
    }
    card = card_from_scryfall(raw)
    assert card is not None
    assert (card.oracle_id, card.mana_value, card.colors) == ("oid", 2.0, ["G"])


def test_non_cards_and_art_series_are_not_cards():
    assert card_from_scryfall({"object": "error", "details": "x"}) is None
    assert card_from_scryfall({"object": "ruling", "comment": "x"}) is None
    assert card_from_scryfall(_card("Tarmogoyf // Tarmogoyf", "art_series")) is None
    assert card_from_scryfall({"object": "card"}) is None


def test_list_and_single_objects(cards_dir: Path):
    printings = cards_from_scryfall(_raw(cards_dir, "disenchant-printings.json"))
    assert len(printings) == 43 and {c.name for c in printings} == {"Disenchant"}
    assert [c.name for c in cards_from_scryfall(_raw(cards_dir, "ponder.json"))] == ["Ponder"]
    assert cards_from_scryfall(_raw(cards_dir, "searchtest-badsearch.json")) == []
    rulings = rulings_from_scryfall(_raw(cards_dir, "ixidron-rulings.json"))
    assert list(rulings) == ["a86587ea-14ec-45db-8bac-10b6b9eaeb25"]
    assert len(rulings["a86587ea-14ec-45db-8bac-10b6b9eaeb25"]) == 5


# --- bulk files -----------------------------------------------------------------------------------------


def _bulk_cards(cards_dir: Path) -> list[dict]:
    objs = []
    for path in sorted(cards_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        objs.extend(data["data"] if data.get("object") == "list" else [data])
    return [obj for obj in objs if obj.get("object") == "card"]


def test_bulk_file_is_streamed_in_small_chunks(tmp_path: Path, cards_dir: Path):
    objs = _bulk_cards(cards_dir)
    path = tmp_path / "bulk.json"
    path.write_text(json.dumps(objs, indent=2, ensure_ascii=False), encoding="utf-8")
    # A chunk far smaller than one card object forces every refill path.
    assert list(iter_json_array(path, chunk_size=100)) == objs
    assert [c.name for c in load_scryfall_bulk(path)] == [c.name for c in cards_from_scryfall(objs)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", []),
        ('\ufeff [ 1 , {"a": [2, 3]} ,"x"]\n', [1, {"a": [2, 3]}, "x"]),
        ("[12345678901234567890]", [12345678901234567890]),
    ],
)
def test_iter_json_array_values(tmp_path: Path, text: str, expected: list):
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    assert list(iter_json_array(path, chunk_size=3)) == expected


@pytest.mark.parametrize(
    "text",
    ['{"object": "list"}', '[{"a": 1}, {"a": 2', '[{"a": 1}', "[1 2]", "[1] x", "", "[1,]"],
)
def test_iter_json_array_rejects_incomplete_or_other_json(tmp_path: Path, text: str):
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError):
        list(iter_json_array(path, chunk_size=4))


def test_card_dir_prefers_bulk_data_and_merges_rulings(tmp_path: Path, cards_dir: Path):
    goyf = _raw(cards_dir, "tarmogoyf.json")
    newer = dict(goyf, oracle_text="Newer oracle wording.")
    (tmp_path / ORACLE_CARDS_FILE).write_text(json.dumps([newer]), encoding="utf-8")
    (tmp_path / "tarmogoyf.json").write_text(json.dumps(goyf), encoding="utf-8")
    (tmp_path / "ponder.json").write_bytes((cards_dir / "ponder.json").read_bytes())
    rulings = [
        {
            "object": "ruling",
            "oracle_id": goyf["oracle_id"],
            "source": "wotc",
            "published_at": "2020-01-01",
            "comment": "From the bulk file.",
        },
    ]
    (tmp_path / RULINGS_FILE).write_text(json.dumps(rulings), encoding="utf-8")
    (tmp_path / "goyf-rulings.json").write_text(
        json.dumps({"object": "list", "has_more": False, "data": rulings * 2}), encoding="utf-8"
    )
    cards = {card.name: card for card in load_card_dir(tmp_path)}
    assert sorted(cards) == ["Ponder", "Tarmogoyf"]
    assert cards["Tarmogoyf"].faces[0].oracle_text == "Newer oracle wording."
    assert [r.text for r in cards["Tarmogoyf"].rulings] == ["From the bulk file."]  # duplicates dropped
    assert load_rulings_bulk(tmp_path / RULINGS_FILE)[goyf["oracle_id"]][0].date == "2020-01-01"


# --- MTGJSON --------------------------------------------------------------------------------------------

ATOMIC = {
    "meta": {"version": "5.2.2"},
    "data": {
        "Fire // Ice": [
            {
                "name": "Fire // Ice",
                "faceName": "Fire",
                "side": "a",
                "layout": "split",
                "manaCost": "{1}{R}",
                "type": "Instant",
                "text": "Fire deals 2 damage divided as you choose among one or two targets.",
                "manaValue": 4.0,
                "colors": ["R"],
                "keywords": [],
                "identifiers": {"scryfallOracleId": "ae92942b-919c-4ea9-b693-85fcef765d5a"},
                "rulings": [{"date": "2020-11-10", "text": "Fire targets one or two."}],
            },
            {
                "name": "Fire // Ice",
                "faceName": "Ice",
                "side": "b",
                "layout": "split",
                "manaCost": "{1}{U}",
                "type": "Instant",
                "text": "Tap target permanent.\nDraw a card.",
                "manaValue": 4.0,
                "colors": ["U"],
                "identifiers": {"scryfallOracleId": "ae92942b-919c-4ea9-b693-85fcef765d5a"},
            },
        ],
        "Jace, the Mind Sculptor": [
            {
                "name": "Jace, the Mind Sculptor",
                "layout": "normal",
                "manaCost": "{2}{U}{U}",
                "type": "Legendary Planeswalker — Jace",
                "text": "+2: Look at the top card...",
                "loyalty": "3",
                "manaValue": 4.0,
                "colors": ["U"],
                "keywords": [],
                "identifiers": {"scryfallOracleId": "7f77a84e-5a4b-4834-aefa-3cecc175ae8e"},
                "rulings": [],
            }
        ],
        "Tarmogoyf": [
            {
                "name": "Tarmogoyf",
                "layout": "normal",
                "manaCost": "{1}{G}",
                "type": "Creature — Lhurgoyf",
                "text": "Tarmogoyf's power is equal to ...",
                "power": "*",
                "toughness": "1+*",
                "manaValue": 2,
                "colors": ["G"],
                "keywords": ["Flying"],
                "identifiers": {},
            }
        ],
    },
}


def test_mtgjson_atomic_cards(tmp_path: Path):
    path = tmp_path / ATOMIC_CARDS_FILE
    path.write_text(json.dumps(ATOMIC), encoding="utf-8")
    cards = {card.name: card for card in load_atomic_cards(path)}
    fire_ice = cards["Fire // Ice"]
    assert fire_ice.layout == "split" and [f.name for f in fire_ice.faces] == ["Fire", "Ice"]
    assert fire_ice.faces[1].mana_cost == "{1}{U}" and fire_ice.colors == ["R", "U"]
    assert fire_ice.oracle_id == "ae92942b-919c-4ea9-b693-85fcef765d5a"
    assert [(r.date, r.text) for r in fire_ice.rulings] == [("2020-11-10", "Fire targets one or two.")]
    assert cards["Jace, the Mind Sculptor"].faces[0].loyalty == "3"
    goyf = cards["Tarmogoyf"]
    assert (goyf.faces[0].power, goyf.faces[0].toughness, goyf.mana_value) == ("*", "1+*", 2.0)
    assert goyf.oracle_id is None and goyf.keywords == ["Flying"]


def test_card_dir_reads_atomic_cards_and_merges_with_scryfall(tmp_path: Path, cards_dir: Path):
    (tmp_path / ATOMIC_CARDS_FILE).write_text(json.dumps(ATOMIC), encoding="utf-8")
    (tmp_path / "fireice.json").write_bytes((cards_dir / "fireice-nomultiverse.json").read_bytes())
    (tmp_path / "ponder.json").write_bytes((cards_dir / "ponder.json").read_bytes())
    names = Counter(card.name for card in load_card_dir(tmp_path))
    assert names == {"Fire // Ice": 1, "Jace, the Mind Sculptor": 1, "Tarmogoyf": 1, "Ponder": 1}


# --- [[card name]] --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what does [[Tarmogoyf]] do?", ["Tarmogoyf"]),
        ("[[Fire // Ice]] and [[ jace tms ]] vs [[fire // ice]]", ["Fire // Ice", "jace tms"]),
        ("[[Ponder|M12]] or [[Ponder]]", ["Ponder"]),
        ("[[]] [[ ]] [[|set]] [single] [[un closed", []),
        ("[[a]][[b]]", ["a", "b"]),
        ("no cards here", []),
    ],
)
def test_extract_bracket_names(text: str, expected: list[str]):
    assert extract_bracket_names(text) == expected


def test_extract_bracket_names_is_capped():
    text = " ".join(f"[[Card {i}]]" for i in range(30))
    assert extract_bracket_names(text) == [f"Card {i}" for i in range(10)]
    assert len(extract_bracket_names(text, limit=3)) == 3
