"""A small real state dir for the reliability tests, built without loading any model.

Every file in it is real (gzip'd graph, FAISS files, manifest, passages, embedding-cache .npz, adapter
folders with serving pointers); only the embedder is a deterministic hash of the text (:class:`HashEncoder`),
so building it takes seconds instead of the minutes real embeddings take on two busy cores. Vectors carry
their encoder's ``model_id``, so an index built here is never mistaken for a real one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from hexcore.settings import KnowledgeSettings, PathSettings, Settings

RELEASE = "2026-01-16"
DIM = 16


class HashEncoder:
    """Same interface as ``knowledge.embeddings.Embedder``: unit vectors derived from SHA-256 of the text."""

    dim = DIM
    model_id = "test-hash-encoder"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")
            row = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = row / np.linalg.norm(row)
        return out

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


ENCODER = HashEncoder()


@contextmanager
def hash_embeddings(monkeypatch: pytest.MonkeyPatch) -> Iterator[HashEncoder]:
    """Every knowledge-layer ``get_embedder`` call gets :data:`ENCODER` while this is active."""
    import knowledge.embeddings
    import knowledge.retriever_models

    def fake(model: str = "embedded") -> HashEncoder:
        return ENCODER

    monkeypatch.setattr(knowledge.embeddings, "get_embedder", fake)
    monkeypatch.setattr(knowledge.retriever_models, "get_embedder", fake)
    yield ENCODER


def state_settings(data_dir: Path, state_dir: Path) -> Settings:
    return Settings(
        paths=PathSettings(data_dir=data_dir, state_dir=state_dir, rules_release=RELEASE),
        knowledge=KnowledgeSettings(),
    )


def build_state(data_dir: Path, state_dir: Path) -> Path:
    """Build the knowledge graph, vector index and embedding cache into ``state_dir``, plus one adapter
    version per expert (tiny placeholder files) with a serving pointer."""
    from knowledge.base import KnowledgeBase

    with pytest.MonkeyPatch.context() as mp, hash_embeddings(mp):
        KnowledgeBase.build(state_settings(data_dir, state_dir), progress=False)
    for expert in ("reason", "explain", "teach", "predict", "retrospect"):
        version = state_dir / "adapters" / expert / "v0"
        version.mkdir(parents=True)
        (version / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
        (version / "adapter_model.safetensors").write_bytes(b"placeholder")
        (version / "meta.json").write_text(json.dumps({"expert": expert, "version": "v0"}))
        pointer = {"serving": "v0", "history": [], "action": "promote"}
        (state_dir / "adapters" / expert / "serving.json").write_text(json.dumps(pointer))
    return state_dir


def copy_state(built: Path, target: Path) -> Path:
    shutil.copytree(built, target, symlinks=True)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what "nothing committed is lost" compares."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
