"""Seeding a test state dir with the developer's embedding cache, to skip re-embedding every passage."""

from __future__ import annotations

import shutil
from pathlib import Path

from hexcore.settings import PathSettings
from knowledge.base import EMBEDDINGS_DIR


def seed_embedding_cache(state_dir: Path) -> None:
    """Copy the developer's embedding cache (``var/index/embeddings``) into a test state dir, if there is one.

    Vectors are keyed by model and exact text, so a seeded cache can only save time, never change a result;
    without it the first load embeds all ~3,900 passages (5-20 minutes on this busy 2-core machine).
    """
    source = PathSettings().state_dir / "index" / EMBEDDINGS_DIR
    target = state_dir / "index" / EMBEDDINGS_DIR
    if source.is_dir() and not target.exists():
        shutil.copytree(source, target)
