"""Resumable training checkpoints: everything needed to continue a run as if it had never stopped.

``<run_dir>/checkpoints/step-000012/``::

    trainable.safetensors    the trainable (LoRA) parameters, by parameter name, exact
    best.safetensors         the best-so-far parameters (early stopping keeps them), when there are any
    adapter_config.json      the adapter in peft's format too, so a checkpoint can be validated or served
    adapter_model.safetensors
    optimizer.pt scheduler.pt [scaler.pt]
    rng.pt                   python, numpy, torch (and CUDA) generator states
    trainer_state.json       step, best loss, patience counter, history, data fingerprint, config

A checkpoint is written into a temporary directory and renamed into place, so a crash (even SIGKILL)
mid-write leaves no directory named ``step-*`` that is incomplete. The data order needs no saving: each
epoch's order is a permutation seeded by (seed, epoch), so a resumed run recomputes it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.errors import CheckpointError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def capture_rng() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


@dataclass(slots=True)
class Checkpoint:
    path: Path
    state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["global_step"])


def save_checkpoint(
    run_dir: Path,
    *,
    state: dict[str, Any],
    trainable: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    scaler: dict[str, Any] | None,
    save_adapter: Callable[[Path], None] | None = None,
    keep: int = 2,
) -> Path:
    """Write one checkpoint atomically and prune all but the newest ``keep``; returns its directory."""
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(state['global_step']):06d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(_tensors(trainable), str(tmp / "trainable.safetensors"))
        if best is not None:
            save_file(_tensors(best), str(tmp / "best.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(scheduler, tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler, tmp / "scaler.pt")
        torch.save(capture_rng(), tmp / "rng.pt")
        if save_adapter is not None:
            save_adapter(tmp)
        with (tmp / STATE_FILE).open("w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():  # re-running a step after resuming from an earlier checkpoint
            trash = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def clean_partial(run_dir: Path) -> None:
    """Remove temporary directories a killed run left behind."""
    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint directory from a checkpoint, a run's ``checkpoints`` folder or a run directory (newest)."""
    path = Path(path)
    if (path / STATE_FILE).is_file() and (path / "trainable.safetensors").is_file():
        return path
    run_dir = path.parent if path.name == CHECKPOINTS_DIR else path
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no complete checkpoint in {path}; nothing to resume")
    return found[-1]


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


def load_checkpoint(path: Path | str) -> Checkpoint:
    ckpt = resolve_checkpoint(path)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        best_file = ckpt / "best.safetensors"
        scaler_file = ckpt / "scaler.pt"
        return Checkpoint(
            path=ckpt,
            state=state,
            trainable=load_file(str(ckpt / "trainable.safetensors")),
            best=load_file(str(best_file)) if best_file.is_file() else None,
            # Our own files (optimizer/scheduler/RNG state holds non-tensor Python objects).
            optimizer=torch.load(ckpt / "optimizer.pt", weights_only=False),
            scheduler=torch.load(ckpt / "scheduler.pt", weights_only=False),
            scaler=torch.load(scaler_file, weights_only=False) if scaler_file.is_file() else None,
            rng=torch.load(ckpt / "rng.pt", weights_only=False),
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {ckpt} is unreadable: {exc}") from exc
