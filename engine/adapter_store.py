"""On-disk versions of the expert LoRA adapters and which one each expert serves.

Layout (under ``<state_dir>/adapters``)::

    <expert>/<version>/adapter_config.json       peft's config
    <expert>/<version>/adapter_model.safetensors peft's weights
    <expert>/<version>/meta.json                 metrics, created, base model, sha256 of the weights
    <expert>/serving.json                        {"serving": "v3", "history": ["v0", "v2"], ...}

A version directory is written under a temporary name and renamed into place, so a reader never sees a
half-written version; ``serving.json`` is replaced atomically (temp file + fsync + ``os.replace``), so a crash
leaves either the old or the new pointer. Versions are never modified after they are written; ``rollback``
re-points to the previous serving version, whose files are still there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.api import Expert
from engine.errors import AdapterError

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig, PeftModel
    from torch import nn
    from transformers import PreTrainedModel

    from engine.model_loader import LoadedModel
    from hexcore.settings import Settings

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
META_FILE = "meta.json"
SERVING_FILE = "serving.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
_VERSION_RE = re.compile(r"^v(\d+)$")

INITIAL_VERSION = "v0"
INITIAL_RANK = 8
INITIAL_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    """One stored adapter version of one expert."""

    expert: Expert
    version: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def base_model(self) -> str | None:
        return self.meta.get("base_model")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_expert(expert: Expert | str) -> Expert:
    try:
        return Expert(expert)
    except ValueError:
        raise AdapterError(
            str(expert), f"unknown expert; known: {', '.join(e.value for e in Expert)}"
        ) from None


def _version_number(version: str) -> int | None:
    match = _VERSION_RE.match(version)
    return int(match.group(1)) if match else None


class AdapterStore:
    """Versioned adapters per expert on disk, with an atomic serving pointer and rollback history.

    Safe for threads of one process (an internal lock) and for concurrent writers of new versions across
    processes (the version directory rename fails if another writer took the number first; we retry).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings) -> AdapterStore:
        return cls(settings.paths.state_dir / "adapters")

    # --- reading ------------------------------------------------------------------------------------

    def expert_dir(self, expert: Expert | str) -> Path:
        return self.root / to_expert(expert).value

    def path(self, expert: Expert | str, version: str) -> Path:
        """The directory of one version (which may not exist)."""
        if _version_number(version) is None:
            raise AdapterError(str(expert), f"invalid version name {version!r} (expected v<number>)")
        return self.expert_dir(expert) / version

    def get(self, expert: Expert | str, version: str) -> AdapterVersion:
        """A stored version; raises ``AdapterError`` if it does not exist."""
        expert = to_expert(expert)
        path = self.path(expert, version)
        if not path.is_dir():
            raise AdapterError(expert.value, f"version {version} does not exist in {path.parent}")
        return AdapterVersion(expert, version, path, self._read_meta(path))

    def versions(self, expert: Expert | str) -> list[AdapterVersion]:
        """All complete versions of an expert, oldest first."""
        expert = to_expert(expert)
        folder = self.expert_dir(expert)
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            number = _version_number(child.name)
            if number is not None and child.is_dir():
                found.append((number, child))
        return [AdapterVersion(expert, p.name, p, self._read_meta(p)) for _, p in sorted(found)]

    def serving(self, expert: Expert | str) -> AdapterVersion | None:
        """The version the expert serves, or None when nothing was promoted yet."""
        expert = to_expert(expert)
        pointer = self._read_pointer(expert)
        version = pointer.get("serving")
        if not version:
            return None
        path = self.path(expert, version)
        meta = self._read_meta(path) if path.is_dir() else {}
        return AdapterVersion(expert, version, path, meta)

    def history(self, expert: Expert | str) -> list[str]:
        """Previously served versions, oldest first (what ``rollback`` walks back through)."""
        return list(self._read_pointer(to_expert(expert)).get("history", []))

    def _read_meta(self, path: Path) -> dict[str, Any]:
        try:
            return json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"unreadable_meta": True}

    def _read_pointer(self, expert: Expert, repair: bool = False) -> dict[str, Any]:
        """The expert's serving pointer. A damaged one raises AdapterError saying how to repair it, or with
        ``repair`` (promote writes a new pointer anyway) is moved aside and read as empty."""
        file = self.expert_dir(expert) / SERVING_FILE
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            problem = _pointer_problem(data)
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            problem, repair = "is a folder", False
        except PermissionError as exc:  # not damaged: fix the permissions, nothing to move aside
            problem, repair = f"is unreadable: {exc.strerror}", False
        except (OSError, ValueError) as exc:
            problem = f"is unreadable: {exc}"
        if problem is None:
            return data
        if repair:
            from hexcore.damaged import move_aside

            if move_aside(file, problem, "promote writes a new one (history starts afresh)") is not None:
                return {}
        raise AdapterError(
            expert.value,
            f"serving pointer {file} {problem}; repair it with `hexcore adapters promote {expert.value} VERSION`",
        )

    # --- writing ------------------------------------------------------------------------------------

    def save_new(
        self,
        expert: Expert | str,
        source: PeftModel | str | os.PathLike[str],
        meta: Mapping[str, Any] | None = None,
        *,
        adapter_name: str | None = None,
    ) -> AdapterVersion:
        """Store a new version (``v<n+1>``) from a peft model or a directory holding peft's two files.

        ``source`` is a ``PeftModel`` (``adapter_name`` picks one of several; default its active adapter)
        or a path to a directory with ``adapter_config.json`` + ``adapter_model.safetensors``. ``meta`` is
        merged into ``meta.json`` (put ``metrics`` and ``base_model`` there). The version is not promoted.
        """
        expert = to_expert(expert)
        folder = self.expert_dir(expert)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            if isinstance(source, (str, os.PathLike)):
                self._copy_dir(expert, Path(source), tmp)
            else:
                _save_peft_model(source, tmp, adapter_name)
            record: dict[str, Any] = {"created": _now(), "expert": expert.value}
            record.update(dict(meta or {}))
            record["sha256"] = sha256_file(tmp / WEIGHTS_FILE)
            record["weights_bytes"] = (tmp / WEIGHTS_FILE).stat().st_size
            with self._lock:
                for _ in range(100):  # another process may take a number between our scan and the rename
                    numbers = [
                        n for n in (_version_number(p.name) for p in folder.iterdir()) if n is not None
                    ]
                    version = f"v{max(numbers) + 1 if numbers else 0}"
                    record["version"] = version
                    _write_json_atomic(tmp / META_FILE, record)
                    try:
                        os.rename(
                            tmp, folder / version
                        )  # atomic; fails if the target exists and is non-empty
                    except OSError:
                        continue
                    return AdapterVersion(expert, version, folder / version, record)
            raise AdapterError(expert.value, "could not allocate a new version number")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _copy_dir(expert: Expert, source: Path, target: Path) -> None:
        missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
        if missing:
            raise AdapterError(expert.value, f"{source} lacks {', '.join(missing)}")
        for name in REQUIRED_FILES:
            shutil.copy2(source / name, target / name)

    def promote(self, expert: Expert | str, version: str) -> AdapterVersion:
        """Make ``version`` the serving one; the previous serving version goes onto the history."""
        expert = to_expert(expert)
        target = self.get(expert, version)
        with self._lock:
            pointer = self._read_pointer(expert, repair=True)
            current = pointer.get("serving")
            history = list(pointer.get("history", []))
            if current == version:
                return target
            if current:
                history.append(current)
            self._write_pointer(expert, version, history, action="promote")
        return target

    def rollback(self, expert: Expert | str) -> AdapterVersion:
        """Serve the previous serving version again; raises ``AdapterError`` when there is none."""
        expert = to_expert(expert)
        with self._lock:
            pointer = self._read_pointer(expert)
            history = list(pointer.get("history", []))
            while history:
                previous = history.pop()
                if self.path(expert, previous).is_dir():
                    self._write_pointer(expert, previous, history, action="rollback")
                    return self.get(expert, previous)
            raise AdapterError(expert.value, "no previous version to roll back to")

    def _write_pointer(self, expert: Expert, version: str, history: list[str], action: str) -> None:
        data = {"serving": version, "history": history, "updated": _now(), "action": action}
        _write_json_atomic(self.expert_dir(expert) / SERVING_FILE, data)


def _pointer_problem(data: Any) -> str | None:
    """What is wrong with a parsed serving pointer, or None."""
    if not isinstance(data, dict):
        return "is not a JSON object"
    serving, history = data.get("serving"), data.get("history", [])
    if serving is not None and not isinstance(serving, str):
        return "has a 'serving' that is not a version name"
    if not isinstance(history, list) or not all(isinstance(v, str) for v in history):
        return "has a 'history' that is not a list of version names"
    return None


def _save_peft_model(model: PeftModel, target: Path, adapter_name: str | None) -> None:
    """Save one adapter of a ``PeftModel`` flat into ``target`` (peft nests non-default names in a subfolder)."""
    name = adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise ValueError(f"the peft model has no adapter named {name!r}")
    model.save_pretrained(target, selected_adapters=[name], safe_serialization=True)
    nested = target / name
    if name != "default" and nested.is_dir():
        for item in nested.iterdir():
            os.replace(item, target / item.name)
        nested.rmdir()
    missing = [f for f in REQUIRED_FILES if not (target / f).is_file()]
    if missing:
        raise ValueError(f"peft did not write {', '.join(missing)} into {target}")


@dataclass(frozen=True, slots=True)
class AdapterFiles:
    """An adapter version read from disk and checked: its peft config and its tensors (on CPU)."""

    version: AdapterVersion
    config: LoraConfig
    weights: dict[str, torch.Tensor]


def read_adapter_files(
    target: AdapterVersion,
    *,
    max_rank: int,
    module_names: Sequence[str] | None = None,
    base_model: str | None = None,
) -> AdapterFiles:
    """Read a version's files and check everything that needs no live model; raises ``AdapterError``.

    Checks: both files present, valid JSON, a LoRA config peft accepts, rank <= ``max_rank``, no DoRA or
    extra trained modules (they cannot be served in mixed-adapter batches), trained for ``base_model`` (when
    meta.json names one), target modules present among ``module_names``, the weights' sha256 against
    meta.json, a readable safetensors file with finite values. Shapes are checked when loading.
    """
    import torch
    from peft import LoraConfig, PeftType
    from peft.tuners.tuners_utils import check_target_module_exists
    from safetensors.torch import load_file

    def fail(reason: str) -> AdapterError:
        return AdapterError(target.expert.value, f"{target.version}: {reason}")

    path = target.path
    if not path.is_dir():
        raise fail(f"directory {path} does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise fail(f"{path} lacks {', '.join(missing)}")
    try:
        raw = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("peft_type") != PeftType.LORA.value:
        raise fail(
            f"only LoRA adapters are served, not {raw.get('peft_type') if isinstance(raw, dict) else raw!r}"
        )
    try:
        config = LoraConfig.from_pretrained(str(path))
    except Exception as exc:
        raise fail(f"{CONFIG_FILE} is not a valid LoRA config: {exc}") from exc
    rank = max([config.r, *(config.rank_pattern or {}).values()])
    if rank > max_rank:
        raise fail(f"rank {rank} is above the limit of {max_rank}")
    if config.use_dora:
        raise fail("DoRA adapters cannot be served in mixed-adapter batches")
    extras = [
        name
        for name in ("modules_to_save", "trainable_token_indices", "alora_invocation_tokens")
        if getattr(config, name, None)
    ]
    if extras:
        raise fail(f"{', '.join(extras)} is not supported for serving (LoRA weights only)")
    if target.base_model and base_model and target.base_model != base_model:
        raise fail(f"trained for base model {target.base_model!r}, but {base_model!r} is loaded")
    if module_names is not None and not any(check_target_module_exists(config, key) for key in module_names):
        raise fail(f"target modules {sorted(config.target_modules or [])} do not exist in the base model")
    recorded = target.meta.get("sha256")
    if recorded and sha256_file(path / WEIGHTS_FILE) != recorded:
        raise fail(f"{WEIGHTS_FILE} does not match the checksum in meta.json (changed or corrupt)")
    try:
        weights = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except Exception as exc:
        raise fail(f"{WEIGHTS_FILE} is corrupt or unreadable: {exc}") from exc
    if not weights:
        raise fail(f"{WEIGHTS_FILE} holds no tensors")
    bad = [k for k, t in weights.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise fail(f"non-finite values in {len(bad)} tensors (e.g. {bad[0]})")
    config.inference_mode = True
    return AdapterFiles(target, config, weights)


def loaded_tensor_bytes(target: AdapterVersion) -> int:
    """Bytes the adapter takes once loaded, from the file's tensor shapes (peft keeps adapters in float32)."""
    from safetensors import safe_open

    try:
        total = 0
        with safe_open(str(target.weights_path), framework="pt") as fh:
            for key in fh.keys():
                numel = 1
                for dim in fh.get_slice(key).get_shape():
                    numel *= dim
                total += numel * 4
        return total
    except Exception as exc:
        raise AdapterError(
            target.expert.value, f"{target.version}: cannot read {WEIGHTS_FILE}: {exc}"
        ) from exc


def ensure_initial_adapters(
    model: LoadedModel | PreTrainedModel,
    store: AdapterStore,
    experts: tuple[Expert, ...] = tuple(Expert),
) -> dict[Expert, AdapterVersion]:
    """Give every expert a ``v0`` (and serve it) when it has no version yet, so serving works before training.

    ``v0`` is a LoRA r=8 on q_proj,v_proj with peft's default init (B = 0): outputs equal the base model's
    until the adapter is trained. ``model`` is a ``LoadedModel`` or a plain transformers model that is not
    wrapped in peft yet (it is wrapped temporarily and restored). Returns what each expert serves now.
    """
    from peft import LoraConfig, get_peft_model

    base = getattr(model, "model", model)
    base_name = getattr(model, "name", None) or getattr(base.config, "name_or_path", None) or "unknown"
    if _has_lora_layers(base):
        raise ValueError(
            "ensure_initial_adapters needs the plain base model, before AdapterRegistry wraps it"
        )
    needed = [e for e in experts if not store.versions(e)]
    if needed:
        config = LoraConfig(
            r=INITIAL_RANK,
            lora_alpha=2 * INITIAL_RANK,
            target_modules=list(INITIAL_TARGETS),
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
        )
        was_training = base.training
        peft_model = get_peft_model(base, config, adapter_name="default")
        try:
            with _TempDir(store.root) as tmp:
                _save_peft_model(peft_model, tmp, "default")
                for expert in needed:
                    store.save_new(expert, tmp, {"base_model": base_name, "metrics": {}, "initial": True})
        finally:
            peft_model.unload()  # puts the original modules back: the base model is unchanged
            base.train(was_training)
    result: dict[Expert, AdapterVersion] = {}
    for expert in experts:
        current = store.serving(expert)
        if current is None:
            versions = store.versions(expert)
            current = store.promote(expert, versions[0].version)
        result[expert] = current
    return result


def _has_lora_layers(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


class _TempDir:
    """A scratch directory on the store's filesystem (so copies out of it are cheap), removed on exit."""

    def __init__(self, root: Path) -> None:
        self.path = root / f".scratch-{uuid.uuid4().hex}"

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
