"""Shared fixtures for the rules calculator tests: the served card fixtures as a CardDatabase."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge.card_names import CardDatabase

CARDS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cards"


@pytest.fixture(scope="session")
def card_db() -> CardDatabase:
    if not CARDS_DIR.is_dir():
        pytest.skip(f"no card fixtures at {CARDS_DIR}")
    return CardDatabase.from_dir(CARDS_DIR)
