"""Typed errors of the rules calculator.

:class:`ImpossibleBoard` is the only error :func:`rules_engine.solve` lets out: its ``str()`` is a message fit
to show the user as it is. Everything else the parser does not understand makes ``solve`` return ``None``.
"""

from __future__ import annotations


class CalculatorError(Exception):
    """Base of every rules-calculator error."""


class ImpossibleBoard(CalculatorError):
    """The board the question describes can't exist or can't happen under the rules (a -1/3 printed creature,
    a creature with defender attacking, 10,000 creatures). The message says why, for the user."""


class NotUnderstood(CalculatorError):
    """The parser can't build a scenario it is sure of; ``solve`` turns this into ``None`` (normal path)."""
