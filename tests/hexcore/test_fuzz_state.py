"""Every file the state dir holds, damaged five ways, under the commands that read and write it.

Invariants, besides assert_clean: nothing committed is lost (adapter versions, other experts' pointers, the
data folder are byte-for-byte the same), and a damaged derived file is rebuilt, moved aside to
``<name>.damaged``, or left as it was: never just deleted. Knowledge files must also heal: after the
commands ran, a search answers again (exit 0).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.hexcore.conftest import Hexcore, assert_clean
from tests.hexcore.state_support import ENCODER, snapshot
from tests.reliability import CASES

NPZ = f"index/embeddings/{ENCODER.model_id}.npz"
KNOWLEDGE_FILES = [
    "index/graph.json.gz",
    "index/vectors/manifest.json",
    "index/vectors/passages.jsonl",
    "index/vectors/rule.faiss",
    NPZ,
]
ADAPTER_FILES = [
    "adapters/reason/serving.json",
    "adapters/reason/v0/meta.json",
    "adapters/reason/v0/adapter_config.json",
]
LOCK = ".hexcore.lock"


def _wrong_version(path: Path, raw: bytes) -> bytes:
    """The file's own format with a version or shape this code never wrote."""
    if path.name == "graph.json.gz":
        return gzip.compress(json.dumps({"graph": {"format": 999}, "nodes": [], "edges": []}).encode())
    if path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.zeros((3, 7), np.uint8), vectors=np.zeros((2, 5), np.float32))
        return buffer.getvalue()
    if path.name == "passages.jsonl":
        return b"\n".join(raw.splitlines()[:-3]) + b"\n"  # fewer passages than vectors
    if path.suffix == ".json" or path.name == LOCK:
        return json.dumps({"format_version": 999, "serving": 5, "history": "v0", "pid": "x"}).encode()
    return raw[:16] + bytes(64) + raw[80:]  # a FAISS header with zeros where its sizes are


DAMAGES: dict[str, Callable[[Path, bytes], bytes | None]] = {
    "truncated": lambda path, raw: raw[: max(1, len(raw) // 2)],
    "empty": lambda path, raw: b"",
    "garbage": lambda path, raw: random.Random(len(raw)).randbytes(max(64, min(len(raw), 4096))),
    "wrong-version": _wrong_version,
    "unreadable": lambda path, raw: None,  # replaced by a folder (root reads any file: chmod proves nothing)
}


def _damage(path: Path, how: str) -> bytes | None:
    raw = path.read_bytes() if path.is_file() else b"{}"
    damaged = DAMAGES[how](path, raw)
    if path.exists():
        path.unlink()
    if damaged is None:
        path.mkdir()
        (path / "inside").write_text("not the file")
    else:
        path.write_bytes(damaged)
    return damaged


def _committed(state: Path, data_dir: Path, damaged: str) -> dict[str, bytes]:
    """What must survive any command: adapter versions and pointers (but the damaged one), data."""
    kept = {
        f"adapters/{k}": v
        for k, v in snapshot(state / "adapters").items()
        if not f"adapters/{k}".startswith(damaged) and ".damaged" not in k
    }
    kept.pop("adapters/reason/serving.json", None)  # promote may rewrite it: checked on its own
    return kept


def _check_not_deleted(path: Path, damaged: bytes | None) -> None:
    """The damaged bytes are still somewhere: in place, in ``<file>.damaged``, or in the moved-aside folder
    (``vectors.damaged/<file>``); or the file was rebuilt in place."""
    if damaged is None:
        return
    for aside in (
        path.with_name(path.name + ".damaged"),
        path.parent.with_name("vectors.damaged") / path.name,
    ):
        if aside.is_file() and aside.read_bytes() == damaged:
            return
    assert path.is_file(), f"{path} was deleted without a copy"


FULL = int(os.environ.get("HEXCORE_FUZZ_EXAMPLES", "12")) > 12
"""CI runs every damage of the graph and the embedding cache, and three of each vector-index file (they share
one loader); HEXCORE_FUZZ_EXAMPLES above 12 runs the whole matrix."""
KNOWLEDGE_CASES = [
    (name, how)
    for name in KNOWLEDGE_FILES
    for how in DAMAGES
    if FULL or "vectors/" not in name or how in ("truncated", "garbage", "unreadable")
]


@pytest.mark.parametrize(("name", "how"), KNOWLEDGE_CASES)
def test_damaged_knowledge_files_are_rebuilt_or_kept_aside(hexcore: Hexcore, name: str, how: str) -> None:
    path = hexcore.state / name
    before = _committed(hexcore.state, hexcore.data_dir, name)
    data_before = snapshot(hexcore.data_dir / "rules")
    damaged = _damage(path, how)
    CASES["damaged-state runs"] += 1
    search = hexcore("search", "trample", "--json")  # the reader rebuilds what it cannot load
    assert_clean(search, codes=(0,))
    assert json.loads(search.stdout)[0]["id"].startswith("702.19")
    _check_not_deleted(path, damaged)
    CASES["damaged-state runs"] += 1
    build = hexcore("index", "build")
    assert_clean(build)
    if build.exit_code == 1:  # only a damage that blocks writing may fail a build: it must say so
        assert how == "unreadable" and "cannot write" in build.stderr, build.stderr
    _check_not_deleted(path, damaged)
    if how == "truncated":  # saved again: a load that builds nothing finds it all
        CASES["damaged-state runs"] += 1
        assert_clean(hexcore("index", "stats"), codes=(0,))
    assert _committed(hexcore.state, hexcore.data_dir, name) == before
    assert snapshot(hexcore.data_dir / "rules") == data_before


@pytest.mark.parametrize("how", list(DAMAGES))
@pytest.mark.parametrize("name", ADAPTER_FILES)
def test_damaged_adapter_files(hexcore: Hexcore, name: str, how: str) -> None:
    path = hexcore.state / name
    before = _committed(hexcore.state, hexcore.data_dir, name)
    damaged = _damage(path, how)
    results = {}
    for args in (
        ("adapters", "list"),
        ("adapters", "rollback", "reason"),
        ("adapters", "promote", "reason", "v0"),
    ):
        CASES["damaged-state runs"] += 1
        results[args[1]] = result = hexcore(*args)
        assert_clean(result)
        _check_not_deleted(path, damaged)
    if name.endswith("serving.json"):
        if results["list"].exit_code == 1:
            assert "hexcore adapters promote reason VERSION" in results["list"].stderr
        if how != "unreadable":  # a folder in its place is not repaired by moving it: the message says where
            assert results["promote"].exit_code == 0, results["promote"].stderr
            assert json.loads(path.read_text())["serving"] == "v0"
    assert _committed(hexcore.state, hexcore.data_dir, name) == before


@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_lock_file_never_blocks_a_writer(hexcore: Hexcore, how: str) -> None:
    path = hexcore.state / LOCK
    path.write_text("{}")
    _damage(path, how)
    for args in (("index", "build"), ("adapters", "promote", "reason", "v0")):
        CASES["damaged-state runs"] += 1
        result = hexcore(*args)
        assert_clean(result)
        if how == "unreadable":  # a folder where the lock goes: one line naming the state dir
            assert result.exit_code == 1 and str(hexcore.state) in result.stderr
        else:
            assert result.exit_code == 0, result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_graph_is_rebuilt_in_memory(hexcore: Hexcore) -> None:
    path = hexcore.state / "index" / "graph.json.gz"
    path.chmod(0)
    try:
        assert_clean(hexcore("search", "trample"), codes=(0,))
    finally:
        path.chmod(0o644)
