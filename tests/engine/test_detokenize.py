"""Generated ids to text: the streaming detokenizer, the loop stop (RepetitionStop) and its cut."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from engine.detokenize import IncrementalDetokenizer, RepetitionStop, cut_repeated_tail, decode_text


def test_detokenizer_never_splits_a_multibyte_character(embedded_tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Æther Vial 🐉 costs {1}. Jötun Grunt — naïve “quotes” 火"
    ids = embedded_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [decode_text(embedded_tokenizer, [i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the sample should contain tokens that split a character"
    detok = IncrementalDetokenizer(embedded_tokenizer)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.finish())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def feed(stop: RepetitionStop, ids: list[int]) -> int | None:
    """Feed ``ids`` one at a time, as a generator does; the count of ids when it first says stop."""
    for n in range(1, len(ids) + 1):
        if stop.repeats(ids[:n]):
            return n
    return None


def test_repetition_stop_fires_when_the_newest_ngram_was_seen_before() -> None:
    loop = [101, 202, 303, 404]
    # 101 202 303 404 101 202 303: the 3-gram (101, 202, 303) is back at id 7
    assert feed(RepetitionStop(3), loop * 3) == 7
    assert feed(RepetitionStop(5), loop * 3) == 9
    assert feed(RepetitionStop(1), [5, 6, 5]) == 3
    assert feed(RepetitionStop(3), [1, 2, 3, 4, 5, 6, 7]) is None


def test_repetition_stop_off_and_overlapping_grams() -> None:
    assert feed(RepetitionStop(0), [1, 1, 1, 1]) is None
    assert feed(RepetitionStop(2), [7, 7, 7]) == 3  # (7, 7) again, overlapping the first
    stop = RepetitionStop(3)
    assert not stop.repeats([1, 2]) and stop.n == 3  # shorter than n: nothing to compare, nothing kept
    assert not stop.repeats([1, 2, 3]) and stop.repeats([1, 2, 3, 9, 1, 2, 3])


@pytest.mark.parametrize(
    ("text", "repeated", "shown"),
    [
        (
            "Trample lets excess damage through. The answer is: Trample lets excess",
            " Trample lets excess",
            "Trample lets excess damage through.",
        ),
        ("No.\n\nThe rules say so and the rules say", "the rules say", "No."),
        (
            "It deals damage to a creature with deathtouch to a creature with",
            "to a creature with",
            "It deals damage to a creature with deathtouch to a creature with",
        ),  # no sentence end: kept
        ("Nothing repeats here.", "something else", "Nothing repeats here."),
    ],
)
def test_cut_repeated_tail(text: str, repeated: str, shown: str) -> None:
    assert cut_repeated_tail(text, repeated) == shown
