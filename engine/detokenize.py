"""From generated token ids to the answer's text: streamed deltas, and the loop stop with its cut.

Shared by the batched generator (``engine.generation``) and the fused-experts path of the runner, so both
stream text and stop a looping answer the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """The text of generated ids, exactly as the streamed deltas add up to."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting a UTF-8 character.

    Byte-level BPE tokens can end mid-character; such text decodes to U+FFFD, so the delta is held back
    until the character completes. Only a short window of recent tokens is decoded each step.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # window start: a token boundary where the text was complete
        self._read = 0  # end of the tokens already turned into text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = decode_text(self._tokenizer, self.ids[self._prefix : self._read])
        window_text = decode_text(self._tokenizer, self.ids[self._prefix :])
        if len(window_text) <= len(prefix_text) or window_text.endswith("\ufffd"):
            return ""
        delta = window_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """What is still held back (an incomplete character at the very end decodes as U+FFFD)."""
        full = decode_text(self._tokenizer, self.ids)
        delta = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += delta
        return delta


class RepetitionStop:
    """Stops an answer that loops: its newest ``n`` ids repeat an ``n``-gram the answer already contained.

    Small models fall into loops ("The answer is: ... The answer is: ..."); banning the repeat instead made
    them misspell their way around it. Only the answer's own ids count (quoting the prompt is the point).
    """

    __slots__ = ("n", "_seen")

    def __init__(self, n: int) -> None:
        self.n = n
        """The n-gram length; 0 (or less): off, ``repeats`` is always False."""
        self._seen: set[tuple[int, ...]] = set()

    def repeats(self, ids: Sequence[int]) -> bool:
        """Whether ``ids[-n:]`` is an n-gram seen before (else it is remembered).

        Call it once after each new id, with all the answer's ids so far (stop tokens excluded): the
        n-grams it remembers are those ending at each call.
        """
        n = self.n
        if n <= 0 or len(ids) < n:
            return False
        gram = tuple(ids[-n:])
        if gram in self._seen:
            return True
        self._seen.add(gram)
        return False


_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


def cut_repeated_tail(text: str, repeated: str) -> str:
    """The answer without the loop it fell into: drop the repeated run (``repeated``, the decoded n-gram
    that stopped it) and the unfinished sentence it started, back to the last sentence end.

    Keeps ``text`` unchanged when it does not end with the run, or when no sentence ends before it.
    """
    body = text.rstrip()
    run = repeated.strip()
    if not run or not body.endswith(run):
        return text
    body = body[: len(body) - len(run)]
    ends = [m.end() for m in _SENTENCE_END.finditer(body)]
    return body[: ends[-1]].rstrip() if ends else text


def without_loop(tokenizer: PreTrainedTokenizerBase, text: str, ids: Sequence[int], n: int) -> str:
    """``text`` shown without the loop that stopped it: the last ``n`` generated ``ids`` (the repeated
    n-gram, see :class:`RepetitionStop`) decoded, then cut with :func:`cut_repeated_tail`."""
    return cut_repeated_tail(text, decode_text(tokenizer, ids[-n:]))
