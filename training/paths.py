"""Where training writes: ``<state_dir>/training`` and one directory per run under ``runs/``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hexcore.settings import Settings

TRAINING_DIR = "training"
RUNS_DIR = "runs"


def training_dir(settings: Settings) -> Path:
    return settings.paths.state_dir / TRAINING_DIR


def new_run_dir(settings: Settings, expert: str) -> Path:
    """A fresh, unique run directory name (not created) for one training run of ``expert``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return training_dir(settings) / RUNS_DIR / f"{expert}-{stamp}-{uuid.uuid4().hex[:4]}"
