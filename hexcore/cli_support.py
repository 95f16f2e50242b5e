"""What every package's CLI commands share, kept light: ``hexcore --help`` imports it (not pydantic)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from hexcore.settings import Settings


def load_settings() -> Settings:
    """The Settings for a CLI command: the click context object when a caller (a test, an embedding app)
    passed one, else the environment's (:func:`hexcore.settings.get_settings`, cached)."""
    from hexcore.settings import Settings, get_settings

    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(Settings) if ctx is not None else None
    return obj if obj is not None else get_settings()
