"""Only English questions are answered: the rules, the card texts and the models are English.

A question in another language would retrieve unrelated English passages and quote them as if they
answered it. ``check_english`` says so plainly instead, before anything slow runs. Language identification
is py3langid (a small naive-Bayes model shipped inside the package, ~1 ms a question). Short questions and
ones made mostly of card names and game terms are ambiguous to any identifier, so a question is refused
only when the identifier is confident and the text has at least a few words, none of which are common
English words.
"""

from __future__ import annotations

import re
from functools import lru_cache

from engine.errors import InvalidRequest

NOT_ENGLISH = (
    "Sorry, I can only answer questions in English: the Comprehensive Rules and card texts I quote are "
    "in English. Please ask again in English."
)
MIN_WORDS = 4
MIN_CONFIDENCE = 0.85
# Common English words that are not also common words of the other languages players write in ("a", "in",
# "do", "me" are): one of them in a question means it is at least partly English.
_ENGLISH_WORDS = frozenset(
    "an the and or of to on at is are was be can does if it my you your they their what when how why "
    "which who with without this that we our has have had will would could should not from by for as "
    "into than then there".split()
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the language ``text`` is most likely in."""
    language, probability = _identifier().classify(text)
    return language, float(probability)


def is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True  # "702.19b?" or "3/3 vs 2/2": nothing to tell a language by
    if sum(c.isascii() for c in letters) / len(letters) < 0.5:  # mostly another script: 日本語, русский
        return detect_language(text)[0] == "en"
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < MIN_WORDS or any(w in _ENGLISH_WORDS for w in words):
        return True
    language, probability = detect_language(text)
    return language == "en" or probability < MIN_CONFIDENCE


def check_english(question: str) -> None:
    """Raise ``InvalidRequest`` with a clear message when ``question`` is not in English."""
    if not is_english(question):
        raise InvalidRequest(NOT_ENGLISH)
