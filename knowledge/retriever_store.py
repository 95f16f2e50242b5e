"""On-disk versions of the trained retriever models and which one serves, mirroring the adapter store.

Layout (under ``<state_dir>/retrievers``)::

    <role>/<version>/...           the model files (sentence-transformers folder or re-ranker weights)
    <role>/<version>/meta.json     metrics, created, base model, sha256 of every file
    <role>/serving.json            {"serving": "v2", "history": ["v1"], ...}

``role`` is ``embedder`` (the fine-tuned sentence embedder the vector index is built with) or ``reranker``
(the cross-encoder that re-orders the top candidates). A version is written under a temporary name and
renamed into place; ``serving.json`` is replaced atomically; versions are never modified, so ``rollback``
re-points to the previous one. :meth:`RetrieverStore.serving_dir` verifies the files (present, same
sha256 as when saved) and returns None with a warning when they are missing or damaged: callers then use
the untrained model, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from knowledge.errors import KnowledgeError

log = logging.getLogger(__name__)

ROLES = ("embedder", "reranker")
META_FILE = "meta.json"
SERVING_FILE = "serving.json"
STORE_DIR = "retrievers"
_VERSION_RE = re.compile(r"^v(\d+)$")


class RetrieverStoreError(KnowledgeError):
    """A store operation that cannot be done (unknown version, nothing to roll back to)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except meta.json, by relative path."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META_FILE):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        out[str(path.relative_to(folder))] = digest.hexdigest()
    return out


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise RetrieverStoreError(f"unknown retriever role {role!r} (expected one of {', '.join(ROLES)})")
    return role


class RetrieverStore:
    """Versioned retriever models per role with an atomic serving pointer and rollback history."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()
        self._verified: dict[tuple[str, str], bool] = {}

    @classmethod
    def from_settings(cls, settings) -> RetrieverStore:
        return cls(settings.paths.state_dir / STORE_DIR)

    def role_dir(self, role: str) -> Path:
        return self.root / _check_role(role)

    def versions(self, role: str) -> list[str]:
        folder = self.role_dir(role)
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in folder.iterdir() if (m := _VERSION_RE.match(p.name))]
        return [name for _, name in sorted(found)]

    def meta(self, role: str, version: str) -> dict[str, Any]:
        try:
            return json.loads((self.role_dir(role) / version / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def pointer(self, role: str) -> dict[str, Any]:
        try:
            data = json.loads((self.role_dir(role) / SERVING_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("retriever pointer %s is unreadable (%s): using the untrained model", role, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def serving(self, role: str) -> str | None:
        version = self.pointer(role).get("serving")
        return version if isinstance(version, str) and _VERSION_RE.match(version) else None

    def serving_dir(self, role: str) -> Path | None:
        """The serving version's folder when its files are all there and intact, else None (warned once)."""
        version = self.serving(role)
        if version is None:
            return None
        folder = self.role_dir(role) / version
        key = (role, version)
        if key not in self._verified:
            self._verified[key] = self._intact(folder)
            if not self._verified[key]:
                log.warning(
                    "the serving %s %s in %s is missing or damaged: falling back to the untrained model "
                    "(retrain with `hexcore train --retriever` or roll back)",
                    role,
                    version,
                    folder,
                )
        return folder if self._verified[key] else None

    def _intact(self, folder: Path) -> bool:
        expected = self.meta(folder.parent.name, folder.name).get("files") if folder.is_dir() else None
        if not expected:
            return False
        try:
            return file_digests(folder) == expected
        except OSError:
            return False

    def save_new(self, role: str, source: Path, meta: Mapping[str, Any] | None = None) -> str:
        """Copy the model folder ``source`` in as a new version ``v<n+1>`` (not promoted); its name."""
        folder = self.role_dir(role)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(source, tmp)
            record = {"created": _now(), "role": role, **dict(meta or {}), "files": file_digests(tmp)}
            with self._lock:
                for _ in range(100):
                    numbers = [int(v[1:]) for v in self.versions(role)]
                    version = f"v{max(numbers) + 1 if numbers else 1}"
                    record["version"] = version
                    _write_json_atomic(tmp / META_FILE, record)
                    try:
                        os.rename(tmp, folder / version)
                    except OSError:
                        continue
                    return version
            raise RetrieverStoreError(f"could not allocate a new {role} version")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def promote(self, role: str, version: str) -> None:
        if version not in self.versions(role):
            raise RetrieverStoreError(f"{role} version {version} does not exist in {self.role_dir(role)}")
        with self._lock:
            pointer = self.pointer(role)
            current = pointer.get("serving")
            history = list(pointer.get("history", []))
            if current == version:
                return
            if current:
                history.append(current)
            self._write_pointer(role, version, history, "promote")

    def rollback(self, role: str) -> str | None:
        """Serve the previous version again (None = back to the untrained model); raises when there is
        nothing to roll back."""
        with self._lock:
            pointer = self.pointer(role)
            if not pointer.get("serving"):
                raise RetrieverStoreError(f"no trained {role} is serving: nothing to roll back")
            history = list(pointer.get("history", []))
            while history:
                previous = history.pop()
                if previous in self.versions(role):
                    self._write_pointer(role, previous, history, "rollback")
                    return previous
            self._write_pointer(role, None, [], "rollback")
            return None

    def _write_pointer(self, role: str, version: str | None, history: list[str], action: str) -> None:
        data = {"serving": version, "history": history, "updated": _now(), "action": action}
        self.role_dir(role).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.role_dir(role) / SERVING_FILE, data)
