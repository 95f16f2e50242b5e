"""Damaged derived files (graph, embedding cache, vector index, serving pointer) are moved aside, not deleted.

A file Hexcore built itself can always be rebuilt, but the damaged copy is what someone debugging the damage
(a full disk, a killed process, a bad sync) wants to see. So it is renamed to ``<name>.damaged`` beside
where it was, replacing an older ``.damaged`` copy (one per file: repeated damage cannot fill the disk),
and a one-line warning says where it went and what happens next.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".damaged"


def aside_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def move_aside(path: str | Path, reason: object, then: str = "it will be rebuilt") -> Path | None:
    """Rename the damaged ``path`` (file or folder) to ``<path>.damaged``; None if it could not be moved."""
    path = Path(path)
    target = aside_path(path)
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(path, target)
    except OSError as exc:
        log.warning("%s is damaged (%s) and could not be moved aside (%s); %s", path, reason, exc, then)
        return None
    log.warning("%s is damaged (%s); moved it to %s; %s", path, _short(reason), target.name, then)
    return target


def _short(reason: object, limit: int = 200) -> str:
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
