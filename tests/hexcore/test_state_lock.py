"""The state-dir lock: one writer at a time, a clear message naming the holder, stale locks taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hexcore.state_lock import LOCK_FILE, StateDirUnwritable, StateLocked, holder, state_lock

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from pathlib import Path
from hexcore.state_lock import state_lock
with state_lock(Path(sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _holding_process(state: Path, action: str) -> subprocess.Popen:
    """A real process holding ``state``'s lock (returns once it holds it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state), action],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_lock_refuses_others_and_names_the_holder(tmp_path: Path) -> None:
    proc = _holding_process(tmp_path, "index build")
    try:
        with pytest.raises(StateLocked) as info, state_lock(tmp_path, "adapters promote"):
            pass
        message = str(info.value)
        assert f"another index build is running (pid {proc.pid}" in message
        assert "wait for it to finish and try again" in message and str(tmp_path) in message
        assert info.value.exit_code == 1
        assert holder(tmp_path).pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    proc = _holding_process(tmp_path, "index build")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = json.loads((tmp_path / LOCK_FILE).read_text())
    assert stale["pid"] == proc.pid  # the record outlives the process...
    assert holder(tmp_path) is None  # ...but the lock does not
    with state_lock(tmp_path, "hexcore train"):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert (record["pid"], record["action"]) == (os.getpid(), "hexcore train")
    assert holder(tmp_path) is None
    assert (tmp_path / LOCK_FILE).exists()  # never deleted: see the module's docs


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path: Path) -> None:
    with state_lock(tmp_path, "hexcore train"), state_lock(tmp_path, "adapters promote"):
        assert holder(tmp_path) is not None
    assert holder(tmp_path) is None
    with state_lock(tmp_path, "index build"):  # free again
        pass


def test_a_garbage_lock_file_is_not_in_the_way(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_bytes(b"\x00\xffnot json")
    with state_lock(tmp_path, "index build"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_state_dir_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StateDirUnwritable, match="set HEXCORE_STATE_DIR to a writable folder"):
        with state_lock(blocker / "state", "index build"):
            pass


@pytest.mark.parametrize(
    "args",
    [
        ("index", "build"),
        ("adapters", "promote", "reason", "v0"),
        ("adapters", "rollback", "reason"),
        ("train", "--router"),
        ("data", "update"),
    ],
    ids=" ".join,
)
def test_writing_commands_take_the_lock(hexcore, args: tuple[str, ...]) -> None:
    from tests.hexcore.conftest import assert_clean

    proc = _holding_process(hexcore.state, "index build")
    try:
        before = (hexcore.state / "adapters" / "reason" / "serving.json").read_bytes()
        result = hexcore(*args, env={"HEXCORE_DATA_DIR": str(hexcore.state.parent / "data")})
        assert_clean(result, codes=(1,))
        assert f"another index build is running (pid {proc.pid}" in result.stderr
        assert "wait for it to finish and try again" in result.stderr
        assert (hexcore.state / "adapters" / "reason" / "serving.json").read_bytes() == before
    finally:
        proc.kill()
        proc.wait()


def test_nightly_retraining_takes_the_lock_too(tmp_path: Path) -> None:
    from bot.scheduler import default_retrain
    from hexcore.settings import PathSettings, Settings

    proc = _holding_process(tmp_path, "training run")
    try:
        settings = Settings(paths=PathSettings(state_dir=tmp_path, data_dir=tmp_path / "data"))
        with pytest.raises(StateLocked, match=f"another training run is running \\(pid {proc.pid}"):
            default_retrain(settings, None, [])
    finally:
        proc.kill()
        proc.wait()
