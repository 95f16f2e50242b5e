"""Typed errors of the knowledge layer. Each carries a message fit to show a user as it is."""

from __future__ import annotations


class KnowledgeError(Exception):
    """Base of every knowledge-layer error."""


class DataMissing(KnowledgeError):
    """Rules or card data is not where the settings say; the message says how to get it."""


class RulesParseError(KnowledgeError):
    """A rules file is not in the Comprehensive Rules text format."""


class UnknownRule(KnowledgeError):
    def __init__(self, number: str, nearest: list[str]) -> None:
        self.number = number
        self.nearest = nearest
        hint = f" Nearest: {', '.join(nearest)}." if nearest else ""
        super().__init__(f"No rule {_shown(number)} in the Comprehensive Rules.{hint}")


class UnknownCard(KnowledgeError):
    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"No card named {_shown(name)!r}.{hint}")


class StaleIndex(KnowledgeError):
    """A saved index does not match the current model or data release and must be rebuilt."""


class UpdateError(KnowledgeError):
    """The data update failed; the previous data is still in place."""


def _shown(text: str, limit: int = 60) -> str:
    """User input as an error message repeats it: a pasted page stays one short line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"
