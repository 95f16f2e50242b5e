"""Card name resolution (exact, folded, nickname, face, fuzzy) and fast autocomplete.

Players type names loosely: "jace the mind sculptor", "lim dul", "tarmo goyf", "jtms", "fire". Each rung is
tried in order and the first hit wins, so an exact name is never second-guessed by a fuzzy match. When
nothing is clearly right the user gets "did you mean" candidates instead of a guess.
"""

from __future__ import annotations

import bisect
import logging
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import yaml
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from knowledge.cards import load_card_dir
from knowledge.errors import UnknownCard
from knowledge.models import Card

log = logging.getLogger(__name__)

NICKNAMES_FILE = "nicknames.yaml"
FUZZY_ACCEPT = 86.0
"""Lowest fuzzy score (0-100) accepted as the answer without asking."""
FUZZY_MARGIN = 4.0
"""The best card must beat the runner-up by this much to be accepted: a near tie is a question, not a guess."""
FUZZY_SUGGEST = 60.0
"""Lowest fuzzy score considered at all (autocomplete fallback, ranking)."""
FUZZY_HINT = 70.0
"""Lowest fuzzy score offered as a "did you mean" candidate."""

# Tokens, emblems and the like may share a name with a real card; the real card wins the name.
_LOW_PRIORITY_LAYOUTS = frozenset({"token", "double_faced_token", "emblem", "art_series"})
_NON_WORD = re.compile(r"[\W_]+")
_APOSTROPHES = dict.fromkeys(map(ord, "'’‘ʼ`´"), None)


def fold(text: str) -> str:
    """Lower case, no accents, no apostrophes, other punctuation as spaces: "Lim-Dûl's" -> "lim duls"."""
    if not text.isascii():  # most names are plain ASCII: skip the slow Unicode work for them
        text = unicodedata.normalize("NFKD", text.replace("Æ", "Ae").replace("æ", "ae"))
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", text.casefold().translate(_APOSTROPHES)).strip()


def compact(text: str) -> str:
    """:func:`fold` without spaces, so "Kiki-Jiki", "kiki jiki" and "kikijiki" all meet."""
    return fold(text).replace(" ", "")


def load_nicknames(path: Path) -> dict[str, str]:
    """A flat YAML mapping ``nickname: Card Name``; an absent file gives no nicknames.

    Keys are lower-cased. Entries that are not string-to-string (YAML turns ``yes``/``no`` into booleans)
    are skipped with a warning rather than silently mapping the wrong word.
    """
    if not path.is_file():
        log.info("no nicknames file at %s", path)
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of nickname to card name")
    nicknames: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(key, str) and isinstance(value, str) and key.strip() and value.strip():
            nicknames[key.strip().lower()] = value.strip()
        else:
            log.warning("%s: skipping nickname entry %r: %r", path, key, value)
    return nicknames


class CardDatabase:
    """Cards by name, with every lookup structure built once in ``__init__`` (lookups never scan)."""

    def __init__(self, cards: Iterable[Card], nicknames: dict[str, str] | None = None) -> None:
        ordered = sorted(cards, key=lambda c: c.layout in _LOW_PRIORITY_LAYOUTS)  # stable: keeps order
        self._cards: list[Card] = []
        self._exact: dict[str, int] = {}
        self._folded: dict[str, int] = {}
        self._face_exact: dict[str, int] = {}
        self._face_folded: dict[str, int] = {}
        for card in ordered:
            if card.name in self._exact:  # same name, another oracle id (B.F.M. halves, token variants)
                continue
            idx = len(self._cards)
            self._cards.append(card)
            self._exact[card.name] = idx
            self._folded.setdefault(compact(card.name), idx)
            if len(card.faces) > 1:
                for face in card.faces:
                    self._face_exact.setdefault(face.name, idx)
                    self._face_folded.setdefault(compact(face.name), idx)
        self._nicknames = {compact(k): v for k, v in (nicknames or {}).items()}
        self._build_fuzzy()
        self._build_suggest()

    @classmethod
    def from_dir(cls, cards_dir: Path, nicknames_path: Path | None = None) -> CardDatabase:
        """Every card in ``cards_dir`` (see :func:`load_card_dir`) with ``nicknames.yaml`` from there."""
        nicknames = load_nicknames(nicknames_path or cards_dir / NICKNAMES_FILE)
        return cls(load_card_dir(cards_dir), nicknames)

    # --- building ---------------------------------------------------------------------------------------

    def _build_fuzzy(self) -> None:
        """Folded full names and face names for rapidfuzz, each pointing at its card."""
        self._fuzzy_keys: list[str] = []
        self._fuzzy_cards: list[int] = []
        for idx, card in enumerate(self._cards):
            names = [card.name] + ([f.name for f in card.faces] if len(card.faces) > 1 else [])
            for name in dict.fromkeys(fold(n) for n in names):
                self._fuzzy_keys.append(name)
                self._fuzzy_cards.append(idx)

    def _build_suggest(self) -> None:
        """Sorted (key, card) arrays for bisect: name and face prefixes, and every later word start."""
        prefix: list[tuple[str, int]] = []
        words: list[tuple[str, int]] = []
        for key, idx in zip(self._fuzzy_keys, self._fuzzy_cards, strict=True):
            prefix.append((key, idx))
            prefix.append((key.replace(" ", ""), idx))
            starts = [m.start() for m in re.finditer(r" (?=\S)", key)]
            words.extend((key[s + 1 :], idx) for s in starts)
        for nick, target in self._nicknames.items():
            idx = self._lookup_name(target)
            if idx is not None:
                prefix.append((nick, idx))
        compact_keys = sorted({(key.replace(" ", ""), idx) for key, idx in prefix})
        self._compact_keys = [k for k, _ in compact_keys]
        self._compact_cards = [i for _, i in compact_keys]
        prefix = sorted(set(prefix))
        words = sorted(set(words))
        self._prefix_keys = [k for k, _ in prefix]
        self._prefix_cards = [i for _, i in prefix]
        self._word_keys = [k for k, _ in words]
        self._word_cards = [i for _, i in words]
        self._sorted_names = sorted((card.name for card in self._cards), key=fold)

    # --- lookups ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._cards)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def names(self) -> list[str]:
        """Every card's full name, sorted as a player would look for them."""
        return list(self._sorted_names)

    def cards(self) -> list[Card]:
        return list(self._cards)

    def _lookup_name(self, name: str) -> int | None:
        key = compact(name)
        for found in (
            self._exact.get(name),
            self._folded.get(key),
            self._face_exact.get(name),
            self._face_folded.get(key),
        ):
            if found is not None:
                return found
        return None

    def get(self, name: str) -> Card | None:
        """The card with this full or face name (case, accents and punctuation ignored); no guessing."""
        idx = self._lookup_name(name.strip())
        return None if idx is None else self._cards[idx]

    def resolve_name(self, name: str) -> str:
        """The canonical card name for what the user typed; a nickname gives its card's name even when that
        card is not in the loaded data. Raises :class:`UnknownCard` with suggestions otherwise."""
        query = " ".join(name.split())
        if not query:
            raise UnknownCard(name, [])
        key = compact(query)
        for found in (self._exact.get(query), self._folded.get(key)):
            if found is not None:
                return self._cards[found].name
        target = self._nicknames.get(key)
        if target is not None:
            idx = self._lookup_name(target)
            return target if idx is None else self._cards[idx].name
        for found in (self._face_exact.get(query), self._face_folded.get(key)):
            if found is not None:
                return self._cards[found].name
        best, suggestions = self._fuzzy(query)
        if best is not None:
            return self._cards[best].name
        raise UnknownCard(query, suggestions)

    def resolve(self, name: str) -> Card:
        """The card the user means: exact, folded, nickname, face name, then a clear fuzzy match.

        Raises :class:`UnknownCard` with up to five "did you mean" names when nothing is clearly right, and
        for a nickname whose card is not in the loaded data (the error names that card).
        """
        canonical = self.resolve_name(name)
        idx = self._lookup_name(canonical)
        if idx is None:
            raise UnknownCard(canonical, [])
        return self._cards[idx]

    def _fuzzy(self, query: str) -> tuple[int | None, list[str]]:
        """``(accepted card, suggestions)``: accepted only when one card clearly scores best."""
        hits = process.extract(
            fold(query), self._fuzzy_keys, scorer=fuzz.WRatio, limit=20, score_cutoff=FUZZY_SUGGEST
        )
        best_by_card: dict[int, float] = {}
        for _, score, pos in hits:
            idx = self._fuzzy_cards[pos]
            best_by_card[idx] = max(score, best_by_card.get(idx, 0.0))
        ranked = sorted(best_by_card.items(), key=lambda item: (-item[1], self._cards[item[0]].name))
        # Names that start with what was typed ("jace") are better hints than fuzzy look-alikes.
        hints: dict[int, None] = {}
        query_key = fold(query)
        self._collect(self._prefix_keys, self._prefix_cards, query_key, hints, 5)
        self._collect(self._word_keys, self._word_cards, query_key, hints, 5)
        hints.update((idx, None) for idx, score in ranked if score >= FUZZY_HINT)
        suggestions = [self._cards[idx].name for idx in list(hints)[:5]]
        if ranked and ranked[0][1] >= FUZZY_ACCEPT:
            if len(ranked) == 1 or ranked[0][1] - ranked[1][1] >= FUZZY_MARGIN:
                return ranked[0][0], suggestions
        return None, suggestions

    # --- autocomplete -----------------------------------------------------------------------------------

    def suggest(self, prefix: str, limit: int = 25) -> list[str]:
        """Card names for autocomplete: name prefix matches, then word-start matches, then fuzzy ones.

        Prefix and word-start matches are bisect lookups in sorted arrays; the typo pass runs only when those
        found nothing and scores a small slice of names, so every keystroke stays well under a millisecond.
        """
        query = fold(prefix)
        if limit <= 0:
            return []
        if not query:
            return self._sorted_names[:limit]
        found: dict[int, None] = {}
        self._collect(self._prefix_keys, self._prefix_cards, query, found, limit)
        if len(found) < limit:
            self._collect(self._word_keys, self._word_cards, query, found, limit)
        if not found and len(query) >= 3:
            self._typo_matches(query.replace(" ", ""), found, limit)
        return [self._cards[idx].name for idx in found]

    def _typo_matches(self, query: str, found: dict[int, None], limit: int) -> None:
        """Names whose start is within a small edit distance of the query (a typo while typing).

        Scanning all names with a fuzzy scorer costs milliseconds per keystroke, so only names sharing the
        query's first two letters are scored (typos rarely hit those), each against its first
        ``len(query)`` letters.
        """
        start = bisect.bisect_left(self._compact_keys, query[:2])
        end = bisect.bisect_left(self._compact_keys, query[:2] + "\U0010ffff", lo=start)
        if start == end:
            return
        width = len(query)
        heads = [key[:width] for key in self._compact_keys[start:end]]
        max_edits = 1 if width <= 5 else 2
        hits = process.extract(
            query, heads, scorer=Levenshtein.distance, limit=limit * 2, score_cutoff=max_edits
        )
        for _, _, pos in sorted(hits, key=lambda hit: (hit[1], hit[2])):
            found.setdefault(self._compact_cards[start + pos], None)
            if len(found) >= limit:
                return

    @staticmethod
    def _collect(keys: list[str], cards: list[int], query: str, found: dict[int, None], limit: int) -> None:
        start = bisect.bisect_left(keys, query)
        for pos in range(start, len(keys)):
            if not keys[pos].startswith(query) or len(found) >= limit:
                return
            found.setdefault(cards[pos], None)


def format_card(card: Card) -> str:
    """A card as ``hexcore card`` prints it: the oracle text of every face, then how many rulings it has."""
    lines = []
    if len(card.faces) > 1:
        lines.append(f"{card.name} ({card.layout.replace('_', ' ')})")
    lines.append(card.oracle_block())
    if card.keywords:
        lines.append(f"Keywords: {', '.join(card.keywords)}")
    count = len(card.rulings)
    lines.append(f"{count} ruling{'' if count == 1 else 's'}")
    return "\n".join(lines)
