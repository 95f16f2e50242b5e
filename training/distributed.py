"""Several training processes (``accelerate launch -m hexcore train ...``): who writes, and one run directory.

Every process trains (DDP through ``LoraTrainer``); only the main process writes the run's files, validates,
stores and promotes, and the others wait for it. Single-process runs (CPU, one GPU, the bot's thread) never
import accelerate's process state here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from training.paths import new_run_dir

if TYPE_CHECKING:
    from accelerate import PartialState

    from hexcore.settings import Settings


def distributed() -> PartialState | None:
    """accelerate's process state when launched on several processes, else None (no import cost then)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def is_main_process() -> bool:
    state = distributed()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    state = distributed()
    if state is not None:
        state.wait_for_everyone()


def shared_run_dir(settings: Settings, expert: str) -> Path:
    """A new run directory, the same one in every process (the main process names it)."""
    state = distributed()
    if state is None:
        return new_run_dir(settings, expert)
    from accelerate.utils import broadcast_object_list

    holder = [str(new_run_dir(settings, expert)) if state.is_main_process else None]
    broadcast_object_list(holder)
    return Path(holder[0])
