"""What the feedback store raises."""

from __future__ import annotations


class StoreError(Exception):
    """The feedback database cannot be used (closed, newer schema, writer failed)."""


class UnknownAnswer(StoreError):
    """A vote refers to a message that is not a stored answer."""

    def __init__(self, answer_id: str) -> None:
        self.answer_id = answer_id
        super().__init__(f"no stored answer {answer_id}")
