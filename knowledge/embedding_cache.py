"""Vectors of texts already embedded, keyed by embedding model and exact text, kept across index builds.

Embedding every passage is by far the slowest part of an index build (minutes on a busy 2-core CPU), while
consecutive rules releases share almost every passage: 2025-11-14 -> 2026-01-16 changes 14 of 3,837 indexed
texts. With this cache a new release, new cards or a rebuilt index embed only the texts never seen before.

The key is SHA-256 of model id and text, so a different model or a changed text can never reuse a vector.
Stored as one ``.npz`` (``keys``, ``vectors``) per model, written atomically; entries the latest build did
not use are dropped first once the cache is over ``max_entries``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from hexcore.damaged import move_aside

log = logging.getLogger(__name__)

MAX_ENTRIES = 200_000
"""~300 MB of 384-d vectors: far more than every release and the whole Scryfall card list together."""


class TextEncoder(Protocol):
    dim: int
    model_id: str

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


class CachingEmbedder:
    """An embedder (same ``encode`` / ``dim`` / ``model_id``) that embeds only texts it has not seen.

    Counters ``encoded`` and ``reused`` say how many texts were embedded or served from the cache; call
    :meth:`save` after a build to keep the new vectors. Thread-safe.
    """

    def __init__(self, embedder: TextEncoder, directory: Path, max_entries: int = MAX_ENTRIES) -> None:
        self.embedder = embedder
        self.dim = embedder.dim
        self.model_id = embedder.model_id
        self.path = Path(directory) / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', self.model_id)}.npz"
        self.max_entries = max_entries
        self.encoded = 0
        self.reused = 0
        self._lock = threading.Lock()
        self._vectors: dict[bytes, np.ndarray] = {}
        self._used: set[bytes] = set()
        self._dirty = False
        self._load()

    def _key(self, text: str) -> bytes:
        return hashlib.sha256(f"{self.model_id}\x00{text}".encode()).digest()

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        except FileNotFoundError:
            return
        except PermissionError as exc:  # not damaged, only unreadable to us: leave it where it is
            log.warning("ignoring unreadable embedding cache %s: %s", self.path, exc)
            return
        # A broken cache only costs time: keep it aside and start afresh. A truncated .npz raises
        # BadZipFile or EOFError, a non-.npz ValueError or an unpickling error, a wrong one KeyError.
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
            move_aside(self.path, exc, "embedding afresh")
            return
        if (
            vectors.ndim != 2
            or vectors.shape[1] != self.dim
            or keys.shape != (len(vectors), 32)
            or not np.issubdtype(vectors.dtype, np.floating)
        ):
            move_aside(self.path, f"shape {vectors.shape} does not fit dim {self.dim}", "embedding afresh")
            return
        self._vectors = {k.tobytes(): v for k, v in zip(keys, vectors, strict=True)}

    def __len__(self) -> int:
        return len(self._vectors)

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._vectors))
        if missing:
            first = dict(zip(keys, texts, strict=True))
            fresh = self.embedder.encode(
                [first[k] for k in missing], batch_size=batch_size, progress=progress
            )
        with self._lock:
            if missing:
                self._vectors.update(zip(missing, np.asarray(fresh, dtype=np.float32), strict=True))
                self._dirty = True
            self.encoded += len(missing)
            self.reused += len(keys) - len(missing)
            self._used.update(keys)
            out = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(out, dtype=np.float32)

    def missing(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` have no cached vector."""
        with self._lock:
            return sum(1 for t in texts if self._key(t) not in self._vectors)

    def prime(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Remember vectors computed elsewhere by this same model (e.g. those of a saved index)."""
        if len(texts) != len(vectors) or (len(vectors) and np.asarray(vectors).shape[1] != self.dim):
            raise ValueError("one vector of the cache's dimension per text")
        with self._lock:
            for text, vector in zip(texts, np.asarray(vectors, dtype=np.float32), strict=True):
                key = self._key(text)
                if key not in self._vectors:
                    self._vectors[key] = vector
                    self._dirty = True
                self._used.add(key)

    def save(self) -> None:
        """Write the cache if it changed (atomically); over ``max_entries``, unused entries go first."""
        with self._lock:
            if not self._dirty and len(self._vectors) <= self.max_entries:
                return
            keys = sorted(self._vectors, key=lambda k: k not in self._used)[: self.max_entries]
            vectors = (
                np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
            )
            self._vectors = {k: self._vectors[k] for k in keys}
            self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}-", suffix=".npz", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                raw = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(
                    len(keys), 32
                )  # not "S32": drops NULs
                np.savez(fh, keys=raw, vectors=vectors.astype(np.float32))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
