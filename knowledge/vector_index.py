"""FAISS vector index over passages, one sub-index per passage kind, saved with a manifest.

Why ``IndexFlatIP``: the corpus is ~4,000 passages per release (3,100 rules, 725 glossary entries, cards);
exact inner-product search over 384-d normalised vectors (= cosine) costs well under a millisecond here and
needs no training, so an approximate index (IVF, HNSW) would only add recall loss and build steps. One
sub-index per kind makes "rules only" or "cards only" searches exact too, with no post-filtering that could
leave fewer than k hits; scores are cosines, so results of several kinds merge by score.

Concurrency: FAISS CPU search is safe alongside other searches but not alongside ``add`` (the vector store
grows and may move). ``add`` runs under a lock and builds a *new* snapshot (copies of the touched
sub-indexes plus the grown passage lists) that it swaps in with one assignment; a search reads the snapshot
reference once, so it never locks and never sees a half-added index.

Saved layout (``save(dir)``): ``manifest.json``, ``passages.jsonl``, ``<kind>.faiss``. ``load`` raises
:class:`~knowledge.errors.StaleIndex` when the manifest's format version, embedding model, rules release
or passage digest is not the expected one; :func:`load_or_build_vector_index` rebuilds in that case.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from knowledge.embeddings import Embedder
from knowledge.errors import StaleIndex
from knowledge.models import Citation, Passage, PassageKind
from knowledge.passages import PASSAGE_KINDS, count_by_kind, passages_digest

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PASSAGES_FILE = "passages.jsonl"


@dataclass(frozen=True, slots=True)
class VectorHit:
    passage: Passage
    score: float
    """Cosine similarity to the query, in [-1, 1]."""


@dataclass(frozen=True, slots=True)
class _Snapshot:
    indexes: dict[str, faiss.IndexFlatIP]
    passages: dict[str, tuple[Passage, ...]]
    """Per kind, in the order of the sub-index's vectors."""


class VectorIndex:
    """Passages and their vectors, searchable by kind. Searches are lock-free; ``add`` is serialised."""

    def __init__(self, dim: int, model_id: str, release: str | None) -> None:
        self.dim = dim
        self.model_id = model_id
        self.release = release
        self._write_lock = threading.Lock()
        self._snapshot = _Snapshot(indexes={}, passages={})
        self.digest: str | None = None
        """Digest of the passages and embedded texts it was built from (set by the builder / loader)."""
        self.built_at: str | None = None
        self.build_seconds: float | None = None

    # -- writing -----------------------------------------------------------------------------------

    def add(self, passages: Sequence[Passage], vectors: np.ndarray) -> None:
        """Add passages with their (normalised) vectors. Safe while other threads search."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(passages), self.dim):
            raise ValueError(f"expected {len(passages)} vectors of dim {self.dim}, got {vectors.shape}")
        by_kind: dict[str, list[int]] = {}
        for i, p in enumerate(passages):
            by_kind.setdefault(p.citation.kind, []).append(i)
        with self._write_lock:
            old = self._snapshot
            indexes, stored = dict(old.indexes), dict(old.passages)
            for kind, rows in by_kind.items():
                index = (
                    faiss.clone_index(old.indexes[kind])
                    if kind in old.indexes
                    else faiss.IndexFlatIP(self.dim)
                )
                index.add(vectors[rows])
                indexes[kind] = index
                stored[kind] = (*old.passages.get(kind, ()), *(passages[i] for i in rows))
            self._snapshot = _Snapshot(indexes=indexes, passages=stored)

    # -- reading -----------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, k: int = 8, kinds: Iterable[str] | None = None) -> list[VectorHit]:
        """The k passages closest to ``vector`` among ``kinds`` (default all), best first."""
        snap = self._snapshot  # one read: a concurrent add swaps in a new snapshot, never edits this one
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        hits: list[VectorHit] = []
        for kind in kinds or snap.indexes:
            index = snap.indexes.get(kind)
            if index is None or index.ntotal == 0 or k <= 0:
                continue
            scores, ids = index.search(query, min(k, index.ntotal))
            stored = snap.passages[kind]
            hits.extend(
                VectorHit(stored[i], float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0
            )
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits[:k]

    @property
    def passages(self) -> list[Passage]:
        snap = self._snapshot
        return [p for kind in PASSAGE_KINDS for p in snap.passages.get(kind, ())]

    def counts(self) -> dict[str, int]:
        return count_by_kind(self.passages)

    def __len__(self) -> int:
        return sum(index.ntotal for index in self._snapshot.indexes.values())

    # -- persistence -------------------------------------------------------------------------------

    def manifest(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "embedding_model": self.model_id,
            "dim": self.dim,
            "rules_release": self.release,
            "passage_counts": self.counts(),
            "passages_sha256": self.digest,
            "built_at": self.built_at,
            "build_seconds": self.build_seconds,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the index to ``directory``, replacing what was there only once everything is written."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        snap = self._snapshot
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            for kind, index in snap.indexes.items():
                faiss.write_index(index, str(tmp / f"{kind}.faiss"))
            with open(tmp / PASSAGES_FILE, "w", encoding="utf-8") as fh:
                for kind in snap.indexes:
                    for p in snap.passages[kind]:
                        fh.write(json.dumps(_passage_to_json(p), ensure_ascii=False) + "\n")
            (tmp / MANIFEST).write_text(json.dumps(self.manifest(), indent=2) + "\n", encoding="utf-8")
            old = directory.with_name(f".{directory.name}-old")
            if directory.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        model_id: str | None = None,
        release: str | None = None,
        digest: str | None = None,
    ) -> VectorIndex:
        """Load a saved index; each given expectation that the manifest does not meet raises StaleIndex."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        problems = []
        if manifest.get("format_version") != FORMAT_VERSION:
            problems.append(f"format {manifest.get('format_version')} (expected {FORMAT_VERSION})")
        if model_id is not None and manifest.get("embedding_model") != model_id:
            problems.append(f"embedding model {manifest.get('embedding_model')!r} (expected {model_id!r})")
        if release is not None and manifest.get("rules_release") != release:
            problems.append(f"rules release {manifest.get('rules_release')} (expected {release})")
        if digest is not None and manifest.get("passages_sha256") != digest:
            problems.append("passages changed since it was built")
        if problems:
            raise StaleIndex(f"The saved index in {directory} is out of date: {'; '.join(problems)}.")
        index = cls(int(manifest["dim"]), manifest["embedding_model"], manifest.get("rules_release"))
        index.digest = manifest.get("passages_sha256")
        index.built_at = manifest.get("built_at")
        index.build_seconds = manifest.get("build_seconds")
        try:
            by_kind: dict[str, list[Passage]] = {}
            with open(directory / PASSAGES_FILE, encoding="utf-8") as fh:
                for line in fh:
                    p = _passage_from_json(json.loads(line))
                    by_kind.setdefault(p.citation.kind, []).append(p)
            indexes = {kind: faiss.read_index(str(directory / f"{kind}.faiss")) for kind in by_kind}
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            _move_damaged(directory, exc)
            raise StaleIndex(
                f"The saved index in {directory} is unreadable ({exc}); it will be rebuilt."
            ) from exc
        for kind, stored in by_kind.items():
            if indexes[kind].ntotal != len(stored) or indexes[kind].d != index.dim:
                _move_damaged(directory, f"{kind}: {indexes[kind].ntotal} vectors for {len(stored)} passages")
                raise StaleIndex(
                    f"The saved index in {directory} is inconsistent ({kind}); it will be rebuilt."
                )
        index._snapshot = _Snapshot(indexes=indexes, passages={k: tuple(v) for k, v in by_kind.items()})
        return index


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StaleIndex(f"No saved index in {path.parent}; it will be built.") from exc
    except (OSError, ValueError) as exc:
        _move_damaged(path.parent, exc)
        raise StaleIndex(f"The index manifest {path} is unreadable ({exc}); it will be rebuilt.") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("dim"), int):
        _move_damaged(path.parent, "the manifest is not an index manifest")
        raise StaleIndex(f"The index manifest {path} is damaged; it will be rebuilt.")
    return manifest


def _move_damaged(directory: Path, reason: object) -> None:
    """A damaged saved index goes aside whole (``vectors.damaged``) rather than being overwritten."""
    from hexcore.damaged import move_aside

    move_aside(directory, reason)


def build_vector_index(
    passages: Sequence[Passage],
    texts: Sequence[str],
    embedder: Embedder,
    release: str | None,
    progress: bool = True,
    batch_size: int = 32,
) -> VectorIndex:
    """Embed ``texts`` (what to embed for each passage, same order) and index them.

    Texts are embedded shortest first, in small batches: a batch is padded to its longest text and
    attention costs grow with the square of the length, so length-sorted batches of 32 embed the rules
    several times faster than document-order batches of 128, where rules with long examples sit among
    short ones (400 rules, one thread: 13-30 s against 87-94 s on the busy 2-core dev machine).
    """
    if len(texts) != len(passages):
        raise ValueError("one text per passage")
    start = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    bar = tqdm(total=len(texts), desc="Embedding passages", unit="passage", disable=not progress)
    with bar:
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            vectors[rows] = embedder.encode([texts[i] for i in rows], batch_size=batch_size)
            bar.update(len(rows))
    index = VectorIndex(embedder.dim, embedder.model_id, release)
    index.add(passages, vectors)
    index.digest = passages_digest(passages, texts)
    index.build_seconds = round(time.perf_counter() - start, 3)
    index.built_at = datetime.now(UTC).isoformat(timespec="seconds")
    return index


def load_or_build_vector_index(
    directory: str | Path | None,
    passages: Sequence[Passage],
    texts: Sequence[str],
    embedder: Embedder,
    release: str | None,
    progress: bool = True,
    force: bool = False,
) -> tuple[VectorIndex, bool]:
    """(index, rebuilt): the saved index in ``directory`` if it matches these passages, model and release,
    else a fresh build, saved there. ``directory=None`` builds in memory only."""
    digest = passages_digest(passages, texts)
    if directory is not None and not force:
        try:
            return VectorIndex.load(
                directory, model_id=embedder.model_id, release=release, digest=digest
            ), False
        except StaleIndex as exc:
            log.info("%s", exc)
    index = build_vector_index(passages, texts, embedder, release, progress=progress)
    if directory is not None:
        index.save(directory)
    return index, True


def _passage_to_json(p: Passage) -> dict:
    c = p.citation
    return {"key": p.key, "kind": c.kind, "id": c.id, "release": c.release, "title": p.title, "text": p.text}


def _passage_from_json(d: dict) -> Passage:
    kind: PassageKind = d["kind"]
    return Passage(
        key=d["key"],
        text=d["text"],
        citation=Citation(id=d["id"], kind=kind, release=d["release"]),
        title=d["title"],
    )
