"""One lock per state dir for the commands that write it (index build, train, adapters promote/rollback,
data update), so two of them never interleave their writes.

The lock is an ``fcntl.flock`` on ``<state_dir>/.hexcore.lock``, taken without waiting. The file also holds
the holder's pid, command and start time, so the one turned away is told who holds it ("another index build
is running (pid 1234, since ...)"). The kernel drops a flock when its process ends, however it ends (kill -9
included), so a lock left by a dead process is never in force: the next command simply gets the flock and
overwrites the stale holder record ("taking over"). Nothing is decided from the pid alone, so a reused pid
can neither block a command nor let two run at once. The file itself is never deleted: deleting a locked
path lets a third process lock a new file of the same name while the first still runs.

Reentrant within a process (``train --all`` may promote while it holds the lock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hexcore.errors import HexcoreError

log = logging.getLogger(__name__)

LOCK_FILE = ".hexcore.lock"

_held: dict[Path, tuple[int, int]] = {}
"""Locks this process holds: path -> (file descriptor, depth)."""
_held_guard = threading.Lock()


@dataclass(frozen=True, slots=True)
class LockHolder:
    pid: int | None
    action: str
    started: str
    host: str

    @classmethod
    def parse(cls, raw: bytes) -> LockHolder | None:
        try:
            data = json.loads(raw.decode("utf-8"))
            return cls(int(data["pid"]), str(data["action"]), str(data["started"]), str(data["host"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class StateLocked(HexcoreError):
    """Another process holds the state dir's lock. The message names it and says what to do."""

    def __init__(self, state_dir: Path, action: str, holder: LockHolder | None) -> None:
        self.state_dir = state_dir
        self.holder = holder
        if holder is None:
            who = "another hexcore command is writing"
        else:
            who = f"another {holder.action} is running (pid {holder.pid}, since {holder.started})"
        super().__init__(f"{who} on the state dir {state_dir}; wait for it to finish and try again.")
        self.action = action


class StateDirUnwritable(HexcoreError):
    """The state dir cannot be created or written."""

    def __init__(self, state_dir: Path, exc: OSError) -> None:
        super().__init__(
            f"cannot write to the state dir {state_dir} ({exc.strerror or exc}); "
            "set HEXCORE_STATE_DIR to a writable folder."
        )


def _read(fd: int) -> bytes:
    return os.pread(fd, 4096, 0)


def _open(state_dir: Path) -> int:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        return os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateDirUnwritable(state_dir, exc) from exc


def _take(fd: int, state_dir: Path, action: str) -> None:
    """Lock ``fd`` without waiting and record this process as the holder; StateLocked when held."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        holder = LockHolder.parse(_read(fd))
        os.close(fd)
        raise StateLocked(state_dir, action, holder) from None
    stale = LockHolder.parse(_read(fd))
    if stale is not None and stale.pid != os.getpid():
        log.info(
            "taking over the state-dir lock left by pid %s (%s), which has ended", stale.pid, stale.action
        )
    record = {
        "pid": os.getpid(),
        "action": action,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": socket.gethostname(),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)


@contextmanager
def state_lock(state_dir: Path, action: str) -> Iterator[None]:
    """Hold ``state_dir``'s lock for ``action`` (e.g. "index build"); raises StateLocked at once if held."""
    path = Path(state_dir).expanduser().resolve()
    with _held_guard:
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
        else:
            fd = _open(path)
            _take(fd, path, action)
            _held[path] = (fd, 1)
    try:
        yield
    finally:
        with _held_guard:
            fd, depth = _held[path]
            if depth > 1:
                _held[path] = (fd, depth - 1)
            else:
                del _held[path]
                _release(fd)


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # no holder record: a reader sees the dir is free
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def holder(state_dir: Path) -> LockHolder | None:
    """Who holds ``state_dir``'s lock now, or None when it is free (``/status``, diagnostics)."""
    path = Path(state_dir).expanduser().resolve() / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return LockHolder.parse(_read(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
