"""Card data from Scryfall JSON (single cards, lists, bulk files, rulings) and MTGJSON ``AtomicCards.json``.

Everything ends up as :class:`knowledge.models.Card`; raw dicts are converted one at a time and dropped, so
the ~150 MB ``oracle_cards`` bulk file is streamed (:func:`iter_json_array`) instead of held in memory as
Python objects, which would take several GB.
"""

from __future__ import annotations

import codecs
import itertools
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import ijson

from knowledge.errors import DataMissing
from knowledge.models import Card, CardFace, Ruling

log = logging.getLogger(__name__)

ORACLE_CARDS_FILE = "oracle-cards.json"
"""Scryfall ``oracle_cards`` bulk file, as ``hexcore data update`` saves it."""
RULINGS_FILE = "rulings.json"
"""Scryfall ``rulings`` bulk file, as ``hexcore data update`` saves it."""
ATOMIC_CARDS_FILE = "AtomicCards.json"
"""MTGJSON atomic cards, an alternative source."""
BULK_FILES = frozenset({ORACLE_CARDS_FILE, RULINGS_FILE, ATOMIC_CARDS_FILE})

# Art-series "cards" reuse real card names on both faces and have no rules text: they would shadow
# real cards in name lookups.
SKIP_LAYOUTS = frozenset({"art_series"})

_BRACKETS = re.compile(r"\[\[([^\[\]]*)\]\]")


# --- streaming JSON -------------------------------------------------------------------------------------


def iter_json_array(path: Path, chunk_size: int = 1 << 20) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array one by one (ijson), reading ``chunk_size`` bytes at a time.

    Raises ``ValueError`` when the file is not one complete array. ijson's C parser stops at integers beyond
    64 bits; then its pure-Python parser (slower, exact) reads the rest.
    """
    done = 0
    try:
        for value in _array_items(path, chunk_size, ijson.get_backend("yajl2_c")):
            yield value
            done += 1
    except ValueError as exc:
        if "integer overflow" not in str(exc):
            raise
        yield from itertools.islice(_array_items(path, chunk_size, ijson.get_backend("python")), done, None)


def _array_items(path: Path, chunk_size: int, backend: ModuleType) -> Iterator[Any]:
    with open(path, "rb") as handle:
        if handle.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:
            handle.seek(0)
        events = backend.parse(handle, buf_size=chunk_size, use_float=True)
        try:
            first = next(events)
            if first[1] != "start_array":
                raise ValueError(f"{path.name}: not a JSON array")
            yield from backend.items(itertools.chain([first], events), "item")
        except ijson.JSONError as exc:
            raise ValueError(f"{path.name}: {str(exc).splitlines()[0]}") from exc


# --- Scryfall -------------------------------------------------------------------------------------------


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _scryfall_face(raw: dict[str, Any]) -> CardFace:
    return CardFace(
        name=raw.get("name", ""),
        mana_cost=raw.get("mana_cost") or "",
        type_line=raw.get("type_line") or "",
        oracle_text=raw.get("oracle_text") or "",
        power=_opt_str(raw.get("power")),
        toughness=_opt_str(raw.get("toughness")),
        loyalty=_opt_str(raw.get("loyalty")),
        defense=_opt_str(raw.get("defense")),
    )


def card_from_scryfall(obj: dict[str, Any]) -> Card | None:
    """One Scryfall card object as a :class:`Card`; ``None`` for non-cards and art-series entries.

    Scryfall's ``name`` and ``oracle_text`` are the English oracle wording for every printing, so a
    non-English printing gives the same card as the English one.
    """
    if not isinstance(obj, dict) or obj.get("object") != "card" or not obj.get("name"):
        return None
    layout = obj.get("layout") or "normal"
    if layout in SKIP_LAYOUTS:
        return None
    raw_faces = obj.get("card_faces") or [obj]
    faces = [_scryfall_face(raw) for raw in raw_faces]
    first = raw_faces[0]
    colors = obj.get("colors")
    if colors is None:  # double-faced cards keep colors per face
        colors = list(dict.fromkeys(c for raw in raw_faces for c in raw.get("colors") or ()))
    images = obj.get("image_uris") or first.get("image_uris") or {}
    uri = obj.get("scryfall_uri")
    return Card(
        name=obj["name"],
        layout=layout,
        faces=faces,
        mana_value=float(obj.get("cmc", first.get("cmc", 0.0)) or 0.0),
        colors=list(colors),
        keywords=list(obj.get("keywords") or ()),
        oracle_id=obj.get("oracle_id") or first.get("oracle_id"),
        scryfall_uri=uri.split("?", 1)[0] if uri else None,
        image_uri=images.get("normal") or images.get("large"),
    )


def ruling_from_scryfall(obj: dict[str, Any]) -> tuple[str, Ruling] | None:
    """``(oracle_id, Ruling)`` for a Scryfall ruling object, else ``None``."""
    if not isinstance(obj, dict) or obj.get("object") != "ruling":
        return None
    oracle_id, text = obj.get("oracle_id"), obj.get("comment")
    if not oracle_id or not text:
        return None
    return oracle_id, Ruling(
        date=obj.get("published_at") or "", text=text, source=obj.get("source") or "wotc"
    )


def _scryfall_objects(data: Any) -> Iterator[dict[str, Any]]:
    """The objects inside a parsed Scryfall response: a card, a ruling, a "list", or a bulk array."""
    if isinstance(data, list):
        yield from (item for item in data if isinstance(item, dict))
    elif isinstance(data, dict):
        kind = data.get("object")
        if kind == "list":
            yield from (item for item in data.get("data") or () if isinstance(item, dict))
        elif kind in ("card", "ruling"):
            yield data
        elif kind == "error":
            log.debug("skipping Scryfall error object: %s", data.get("details"))


def cards_from_scryfall(data: Any) -> list[Card]:
    """Cards in any parsed Scryfall payload (card, list, bulk array); other objects are skipped."""
    return [card for obj in _scryfall_objects(data) if (card := card_from_scryfall(obj)) is not None]


def rulings_from_scryfall(data: Any) -> dict[str, list[Ruling]]:
    """Rulings in a parsed Scryfall payload (a "list" of rulings or the bulk array), by oracle_id."""
    found: dict[str, list[Ruling]] = defaultdict(list)
    for obj in _scryfall_objects(data):
        if (item := ruling_from_scryfall(obj)) is not None:
            found[item[0]].append(item[1])
    return dict(found)


def load_scryfall_bulk(path: Path) -> list[Card]:
    """A Scryfall bulk card file (``oracle_cards``), streamed."""
    return [card for obj in iter_json_array(path) if (card := card_from_scryfall(obj)) is not None]


def load_rulings_bulk(path: Path) -> dict[str, list[Ruling]]:
    """A Scryfall ``rulings`` bulk file, streamed, by oracle_id."""
    found: dict[str, list[Ruling]] = defaultdict(list)
    for obj in iter_json_array(path):
        if (item := ruling_from_scryfall(obj)) is not None:
            found[item[0]].append(item[1])
    return dict(found)


def attach_rulings(cards: Iterable[Card], rulings: dict[str, list[Ruling]]) -> None:
    """Add rulings to cards by oracle_id, skipping ones the card already has; keeps them in date order."""
    for card in cards:
        new = rulings.get(card.oracle_id or "")
        if not new:
            continue
        seen = {(r.date, r.text) for r in card.rulings}
        for ruling in new:
            if (ruling.date, ruling.text) not in seen:
                seen.add((ruling.date, ruling.text))
                card.rulings.append(ruling)
        card.rulings.sort(key=lambda r: r.date)


# --- MTGJSON --------------------------------------------------------------------------------------------


def card_from_mtgjson(name: str, entries: list[dict[str, Any]]) -> Card | None:
    """One ``AtomicCards.json`` entry (a name and its face objects) as a :class:`Card`."""
    entries = [e for e in entries if isinstance(e, dict)]
    if not entries:
        return None
    entries.sort(key=lambda e: e.get("side") or "")
    first = entries[0]
    faces = [
        CardFace(
            name=e.get("faceName") or e.get("name") or name,
            mana_cost=e.get("manaCost") or "",
            type_line=e.get("type") or "",
            oracle_text=e.get("text") or "",
            power=_opt_str(e.get("power")),
            toughness=_opt_str(e.get("toughness")),
            loyalty=_opt_str(e.get("loyalty")),
            defense=_opt_str(e.get("defense")),
        )
        for e in entries
    ]
    return Card(
        name=first.get("name") or name,
        layout=first.get("layout") or "normal",
        faces=faces,
        mana_value=float(first.get("manaValue") or 0.0),
        colors=list(dict.fromkeys(c for e in entries for c in e.get("colors") or ())),
        keywords=list(dict.fromkeys(k for e in entries for k in e.get("keywords") or ())),
        oracle_id=(first.get("identifiers") or {}).get("scryfallOracleId"),
        rulings=[
            Ruling(date=r.get("date") or "", text=r["text"])
            for r in first.get("rulings") or ()
            if isinstance(r, dict) and r.get("text")
        ],
    )


def cards_from_mtgjson(data: dict[str, Any]) -> list[Card]:
    """Cards in a parsed ``AtomicCards.json`` (``{"data": {name: [faces]}}``)."""
    cards = []
    for name, entries in (data.get("data") or {}).items():
        if isinstance(entries, list) and (card := card_from_mtgjson(name, entries)) is not None:
            cards.append(card)
    return cards


def load_atomic_cards(path: Path) -> list[Card]:
    with open(path, encoding="utf-8-sig") as handle:
        return cards_from_mtgjson(json.load(handle))


# --- a folder of card data ------------------------------------------------------------------------------


class _CardSet:
    """Cards keyed by oracle_id (else name): the first source wins, but an English printing replaces a
    non-English one (same oracle text, better image and link)."""

    def __init__(self) -> None:
        self._cards: dict[str, tuple[Card, bool]] = {}

    def add(self, card: Card, english: bool = True) -> None:
        key = card.oracle_id or f"name:{card.name.casefold()}"
        held = self._cards.get(key)
        if held is None or (english and not held[1]):
            if held is not None:
                card.rulings.extend(held[0].rulings)
            self._cards[key] = (card, english)

    def add_scryfall(self, obj: dict[str, Any]) -> None:
        if (card := card_from_scryfall(obj)) is not None:
            self.add(card, english=obj.get("lang", "en") == "en")

    def cards(self) -> list[Card]:
        return [card for card, _ in self._cards.values()]


def load_card_dir(cards_dir: Path) -> list[Card]:
    """All cards in a folder: the bulk files the update command writes, then every other Scryfall JSON file.

    Bulk data comes first because it is the newest oracle wording; the other files (single cards, search
    results, printing lists, rulings lists) only add cards it lacks. Error objects and unreadable files are
    skipped with a warning. Each card appears once, with the rulings of every source attached.
    """
    if not cards_dir.is_dir():
        raise DataMissing(f"No card data folder at {cards_dir}. Run `hexcore data update` to download it.")
    found = _CardSet()
    rulings: dict[str, list[Ruling]] = defaultdict(list)

    bulk = cards_dir / ORACLE_CARDS_FILE
    if bulk.is_file():
        for obj in iter_json_array(bulk):
            found.add_scryfall(obj)
    atomic = cards_dir / ATOMIC_CARDS_FILE
    if atomic.is_file():
        for card in load_atomic_cards(atomic):
            found.add(card)

    for path in sorted(cards_dir.glob("*.json")):
        if path.name in BULK_FILES or path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable card file %s: %s", path, exc)
            continue
        if isinstance(data, dict) and isinstance(data.get("data"), dict):  # MTGJSON under another name
            for card in cards_from_mtgjson(data):
                found.add(card)
            continue
        for obj in _scryfall_objects(data):
            if obj.get("object") == "ruling":
                if (item := ruling_from_scryfall(obj)) is not None:
                    rulings[item[0]].append(item[1])
            else:
                found.add_scryfall(obj)

    bulk_rulings = cards_dir / RULINGS_FILE
    if bulk_rulings.is_file():
        for oracle_id, items in load_rulings_bulk(bulk_rulings).items():
            rulings[oracle_id].extend(items)

    cards = found.cards()
    attach_rulings(cards, rulings)
    log.info("loaded %d cards from %s", len(cards), cards_dir)
    return cards


# --- chat -----------------------------------------------------------------------------------------------


def extract_bracket_names(text: str, limit: int = 10) -> list[str]:
    """Card names written as ``[[name]]`` (or ``[[name|set]]``) in a message, in order, without duplicates.

    Capped at ``limit`` so one message cannot make the bot look up (and post) dozens of cards.
    """
    names: list[str] = []
    seen: set[str] = set()
    for match in _BRACKETS.finditer(text):
        name = " ".join(match.group(1).split("|", 1)[0].split())
        key = name.casefold()
        if name and key not in seen:
            seen.add(key)
            names.append(name)
            if len(names) >= limit:
                break
    return names
