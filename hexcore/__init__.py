"""Hexcore: a Magic: The Gathering rules assistant grounded in the Comprehensive Rules."""

__version__ = "0.1.0"
