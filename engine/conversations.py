"""Chat history per session id (a Discord thread or channel), so a follow-up turn sees the earlier ones.

The history is what the next prompt repeats (engine.prompts): text, a few KB a conversation. It is kept in
SQLite, in a file for the bot (``<state_dir>/conversations.sqlite3``: a thread keeps its context across a
restart or a deploy, and for days, not just while its KV cache lives) or in memory for the CLI and tests.
The KV caches themselves (engine.sessions) stay in memory: after a restart the next turn recomputes once.

Bounded (FAILURE-MODES "unbounded per-channel state"): at most ``max_sessions`` conversations, the least
recently used dropped first, and each forgotten after ``ttl_s`` without a turn. Writes are one small
transaction each (WAL, ``busy_timeout``), so a kill -9 loses at most the turn being written. A file that is
not a readable database is moved aside (kept, not deleted) and a new one started: losing old context must
never stop answers.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.prompts import Message

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    session_id TEXT PRIMARY KEY,
    history    TEXT NOT NULL,
    used       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_used ON conversations(used);
"""


class ConversationStore:
    """Thread-safe history store: ``get``, ``put``, ``end``; ``path=None`` keeps it in memory."""

    def __init__(
        self,
        max_sessions: int,
        ttl_s: float,
        path: Path | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if max_sessions < 1 or ttl_s <= 0:
            raise ValueError("max_sessions must be at least 1 and ttl_s positive")
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.path = path
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._db = self._open()

    # ---- opening ----

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            return self._connect(":memory:")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect(str(self.path))
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            log.error(
                "conversation store %s is unreadable (%s); moved to %s, starting a new one",
                self.path,
                exc,
                aside,
            )
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._connect(str(self.path))

    def _connect(self, target: str) -> sqlite3.Connection:
        db = sqlite3.connect(
            target, check_same_thread=False, timeout=self._busy_timeout_s, isolation_level=None
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM conversations").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- the store ----

    def get(self, session_id: str | None) -> list[Message]:
        """The conversation so far (oldest first), or ``[]`` for a new, expired or forgotten one."""
        if session_id is None:
            return []
        with self._lock:
            row = self._db.execute(
                "SELECT history FROM conversations WHERE session_id = ? AND used >= ?",
                (session_id, self._clock() - self.ttl_s),
            ).fetchone()
        if row is None:
            return []
        try:
            history = json.loads(row[0])
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in history]
        except (ValueError, TypeError, KeyError):
            log.warning("conversation %s has an unreadable history; starting it afresh", session_id)
            return []

    def put(self, session_id: str, history: Sequence[Message]) -> bool:
        """Replace the conversation's history; drop expired ones and the least recently used over the cap.

        False (logged) when the database cannot be written (locked past its timeout, disk full): the next
        turn then lacks this one's context, but the answer being delivered is never lost over it.
        """
        now = self._clock()
        text = json.dumps([{"role": m["role"], "content": m["content"]} for m in history], ensure_ascii=False)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                log.error("could not store conversation %s: %s", session_id, exc)
                return False
            try:
                self._db.execute(
                    "INSERT INTO conversations (session_id, history, used) VALUES (?, ?, ?) "
                    "ON CONFLICT(session_id) DO UPDATE SET history = excluded.history, used = excluded.used",
                    (session_id, text, now),
                )
                self._db.execute("DELETE FROM conversations WHERE used < ?", (now - self.ttl_s,))
                self._db.execute(
                    "DELETE FROM conversations WHERE session_id IN (SELECT session_id FROM conversations "
                    "ORDER BY used DESC LIMIT -1 OFFSET ?)",
                    (self.max_sessions,),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                log.error("could not store conversation %s: %s", session_id, exc)
                return False
        return True

    def end(self, session_id: str) -> bool:
        """Forget a conversation (its thread was archived or deleted); True when there was one."""
        with self._lock:
            return (
                self._db.execute("DELETE FROM conversations WHERE session_id = ?", (session_id,)).rowcount > 0
            )

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM conversations WHERE used >= ?", (self._clock() - self.ttl_s,)
            ).fetchone()
        return int(row[0])
