"""Feedback storage: answers, votes, bot threads and retraining runs in one SQLite file (aiosqlite).

Why it is built this way:

* **One writer.** Every write goes through a queue to a single writer task that owns the only write
  connection, so two coroutines never interleave inside one transaction and "database is locked" never
  reaches a caller. The writer commits whatever is queued in one transaction (group commit); each
  operation runs in its own SAVEPOINT, so one failing operation does not undo the others.
* **Durable.** WAL journal with ``synchronous=FULL``: a write is acknowledged only after its commit is
  in the WAL on disk, so nothing acknowledged is lost to ``kill -9`` (or power loss). Readers use a
  second, read-only connection and never block the writer. ``busy_timeout`` covers another process
  (``hexcore`` CLI) holding the lock for a moment.
* **Versioned.** ``PRAGMA user_version`` is the schema version; :data:`MIGRATIONS` are applied in order,
  each in its own transaction, and a database from a newer Hexcore is refused rather than guessed at.

Times are stored as UTC unix seconds (REAL) and returned as aware ``datetime``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[[aiosqlite.Connection], Awaitable[Any]]

BUSY_TIMEOUT_MS = 5000
MAX_BATCH = 256
"""Operations committed together at most; bounds how long one transaction holds the write lock."""

MIGRATIONS: tuple[str, ...] = (
    # v1
    """
    CREATE TABLE answers (
        answer_id   TEXT PRIMARY KEY,          -- the bot's answer message id (snowflake)
        guild_id    INTEGER,
        channel_id  INTEGER,
        user_id     INTEGER NOT NULL,          -- who asked
        command     TEXT NOT NULL,
        question    TEXT NOT NULL,
        answer_text TEXT NOT NULL,
        experts     TEXT NOT NULL DEFAULT '[]',  -- JSON list of expert names
        citations   TEXT NOT NULL DEFAULT '[]',  -- JSON list of citation labels
        latency_ms  REAL,
        created     REAL NOT NULL
    );
    CREATE INDEX answers_user ON answers(user_id);
    CREATE INDEX answers_created ON answers(created);
    CREATE TABLE votes (
        answer_id TEXT NOT NULL REFERENCES answers(answer_id) ON DELETE CASCADE,
        user_id   INTEGER NOT NULL,
        value     INTEGER NOT NULL CHECK (value IN (-1, 1)),
        source    TEXT NOT NULL,              -- 'button' or 'reaction:<emoji>'
        updated   REAL NOT NULL,
        UNIQUE (answer_id, user_id)           -- one vote per user per answer, changeable
    );
    CREATE INDEX votes_user ON votes(user_id);
    CREATE INDEX votes_updated ON votes(updated);
    CREATE TABLE threads (
        thread_id  INTEGER PRIMARY KEY,
        answer_id  TEXT NOT NULL,
        session_id TEXT,
        created    REAL NOT NULL
    );
    CREATE INDEX threads_answer ON threads(answer_id);
    CREATE TABLE retrain_runs (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        started    REAL NOT NULL,
        finished   REAL,
        expert     TEXT,                      -- comma-separated experts, NULL = all
        trigger    TEXT NOT NULL,             -- 'nightly' or 'manual'
        status     TEXT NOT NULL,             -- running, promoted, kept, finished, failed, interrupted
        examples   INTEGER,
        validation TEXT                       -- JSON validation summary (RetrainReport.to_json())
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The feedback database cannot be used (closed, newer schema, writer failed)."""


class UnknownAnswer(StoreError):
    """A vote or thread refers to a message that is not a stored answer."""

    def __init__(self, answer_id: str) -> None:
        self.answer_id = answer_id
        super().__init__(f"no stored answer {answer_id}")


@dataclass(frozen=True, slots=True)
class Vote:
    answer_id: str
    user_id: int
    value: int
    source: str
    updated: dt.datetime


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    thread_id: int
    answer_id: str
    session_id: str | None
    created: dt.datetime


@dataclass(frozen=True, slots=True)
class RetrainRun:
    id: int
    started: dt.datetime
    finished: dt.datetime | None
    experts: list[str] | None
    """None = all experts."""
    trigger: str
    status: str
    examples: int | None
    validation: dict | None


@dataclass(frozen=True, slots=True)
class _Pending:
    op: Op
    future: asyncio.Future


def _time(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def _seconds(value: dt.datetime | float | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    return value.timestamp()


def _experts_text(experts: Sequence[str] | None) -> str | None:
    return ",".join(experts) if experts else None


def _run(row: aiosqlite.Row) -> RetrainRun:
    return RetrainRun(
        id=row["id"],
        started=_time(row["started"]),  # type: ignore[arg-type]
        finished=_time(row["finished"]),
        experts=row["expert"].split(",") if row["expert"] else None,
        trigger=row["trigger"],
        status=row["status"],
        examples=row["examples"],
        validation=json.loads(row["validation"]) if row["validation"] else None,
    )


class FeedbackStore:
    """Open with ``await FeedbackStore.open(path)`` (or ``async with``); close with :meth:`close`."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.batches = 0
        """Transactions committed by the writer (group commits); for tests and the bench."""

    # ------------------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, path: Path | str, *, clock: Callable[[], float] = time.time) -> FeedbackStore:
        store = cls(Path(path), clock=clock)
        await store._open()
        return store

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = await self._scalar(writer, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            await writer.execute("PRAGMA synchronous = FULL")
            await writer.execute("PRAGMA foreign_keys = ON")
            await self._migrate(writer)
            # A run still marked running was cut off by a crash or restart.
            await writer.execute(
                "UPDATE retrain_runs SET status = 'interrupted', finished = ? WHERE status = 'running'",
                (self.clock(),),
            )
        except BaseException:
            await writer.close()
            raise
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await reader.execute("PRAGMA query_only = ON")
        reader.row_factory = aiosqlite.Row
        writer.row_factory = aiosqlite.Row
        self._writer, self._reader = writer, reader
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="feedback-writer")

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        version = int(await self._scalar(conn, "PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this Hexcore understands "
                f"({SCHEMA_VERSION}); upgrade Hexcore or point HEXCORE_BOT_DATABASE elsewhere"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            body = MIGRATIONS[target - 1].strip().rstrip(";")
            script = f"BEGIN IMMEDIATE;\n{body};\nPRAGMA user_version = {target};\nCOMMIT;"
            try:
                await conn.executescript(script)
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
            log.info("feedback database %s migrated to schema version %d", self.path, target)

    async def close(self) -> None:
        """Finish every queued write, then close both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(Exception):
                await self._task
        for conn in (self._reader, self._writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def __aenter__(self) -> FeedbackStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------- the writer

    async def _write(self, op: Op) -> Any:
        """Queue ``op`` for the writer and wait until it is committed (or failed)."""
        if self._closed or self._task is None or self._task.done():
            raise StoreError("the feedback store is closed")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(op, future))
        return await future

    async def _write_loop(self) -> None:
        stop = False
        try:
            while not stop:
                first = await self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                await self._commit(batch)
        finally:
            # Whatever is still queued (raced in after close, or the writer died) fails instead of hanging.
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None and not item.future.done():
                    item.future.set_exception(StoreError("the feedback store is closed"))

    async def _commit(self, batch: list[_Pending]) -> None:
        conn = self._writer
        assert conn is not None
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        try:
            await conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                await conn.execute("SAVEPOINT op")
                try:
                    result = await item.op(conn)
                except Exception as exc:
                    await conn.execute("ROLLBACK TO op")
                    await conn.execute("RELEASE op")
                    outcomes.append((item, None, exc))
                else:
                    await conn.execute("RELEASE op")
                    outcomes.append((item, result, None))
            await conn.execute("COMMIT")
            self.batches += 1
        except Exception as exc:  # the transaction itself failed: nothing in it was committed
            log.exception("feedback write transaction failed")
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            error = StoreError(f"write failed: {exc}")
            error.__cause__ = exc
            outcomes = [(item, None, error) for item in batch]
        for item, result, error in outcomes:
            if item.future.done():  # the caller gave up waiting; the write stands
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(result)

    # ------------------------------------------------------------------------------------ reads

    @staticmethod
    async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        async with conn.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        if self._closed or self._reader is None:
            raise StoreError("the feedback store is closed")
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._rows(sql, params)
        return rows[0][0] if rows else None

    # ---------------------------------------------------------------------------------- answers

    async def record_answer(
        self,
        answer_id: str | int,
        guild_id: int | None,
        channel_id: int | None,
        user_id: int,
        command: str,
        question: str,
        answer_text: str,
        experts: Sequence[str],
        citations: Sequence[str],
        *,
        latency_ms: float | None = None,
    ) -> None:
        """Store an answer the bot posted (again: its content is updated, its votes kept)."""
        row = (
            str(answer_id),
            guild_id,
            channel_id,
            int(user_id),
            command,
            question,
            answer_text,
            json.dumps(list(experts)),
            json.dumps(list(citations)),
            latency_ms,
            self.clock(),
        )

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                """INSERT INTO answers (answer_id, guild_id, channel_id, user_id, command, question,
                       answer_text, experts, citations, latency_ms, created)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (answer_id) DO UPDATE SET
                       question = excluded.question, answer_text = excluded.answer_text,
                       experts = excluded.experts, citations = excluded.citations,
                       latency_ms = COALESCE(excluded.latency_ms, answers.latency_ms)""",
                row,
            )

        await self._write(op)

    async def is_answer(self, answer_id: str | int) -> bool:
        return await self._value("SELECT 1 FROM answers WHERE answer_id = ?", (str(answer_id),)) is not None

    async def recent_latencies(self, limit: int = 500) -> list[float]:
        """Latencies (ms) of the most recent answers that recorded one, oldest first."""
        rows = await self._rows(
            "SELECT latency_ms FROM answers WHERE latency_ms IS NOT NULL ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [r[0] for r in reversed(rows)]

    # ------------------------------------------------------------------------------------ votes

    async def record_vote(self, answer_id: str | int, user_id: int, value: int, source: str) -> None:
        """Set ``user_id``'s vote on an answer (+1 helpful, -1 not), replacing their earlier vote.

        Raises :class:`UnknownAnswer` when ``answer_id`` is not a stored answer.
        """
        if value not in (-1, 1):
            raise ValueError(f"vote value must be -1 or +1, not {value!r}")
        if not source:
            raise ValueError("vote source must not be empty")
        key = str(answer_id)
        params = (key, int(user_id), value, source, self.clock(), key)

        async def op(conn: aiosqlite.Connection) -> None:
            cursor = await conn.execute(
                """INSERT INTO votes (answer_id, user_id, value, source, updated)
                   SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM answers WHERE answer_id = ?)
                   ON CONFLICT (answer_id, user_id) DO UPDATE SET
                       value = excluded.value, source = excluded.source, updated = excluded.updated""",
                params,
            )
            if cursor.rowcount == 0:
                raise UnknownAnswer(key)

        await self._write(op)

    async def remove_vote(self, answer_id: str | int, user_id: int, *, source: str | None = None) -> bool:
        """Remove the user's vote; with ``source``, only if that is what cast it (True when removed).

        A removed 👍 reaction must not delete a vote the user has since changed with a button.
        """
        sql = "DELETE FROM votes WHERE answer_id = ? AND user_id = ?"
        params: tuple = (str(answer_id), int(user_id))
        if source is not None:
            sql += " AND source = ?"
            params += (source,)

        async def op(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount > 0

        return await self._write(op)

    async def votes(self, answer_id: str | int) -> list[Vote]:
        rows = await self._rows(
            "SELECT * FROM votes WHERE answer_id = ? ORDER BY updated, user_id", (str(answer_id),)
        )
        return [
            Vote(r["answer_id"], r["user_id"], r["value"], r["source"], _time(r["updated"]))  # type: ignore[arg-type]
            for r in rows
        ]

    # --------------------------------------------------------------------------------- training

    async def export_training_examples(self, since: dt.datetime | float | None = None) -> list[dict]:
        """Voted answers as training examples: net score > 0 positive, < 0 flagged ``negative``.

        Rows carry the fields ``training.examples.TrainingExample.from_row`` reads (question, answer,
        experts, label, source) plus the vote figures.

        Answers whose votes cancel out are left out. ``since`` keeps answers voted on at or after it
        (new feedback since the last retraining).
        """
        rows = await self._rows(
            """SELECT a.*, SUM(v.value) AS score, SUM(v.value > 0) AS up, SUM(v.value < 0) AS down,
                      MAX(v.updated) AS voted
               FROM answers a JOIN votes v ON v.answer_id = a.answer_id
               GROUP BY a.answer_id
               HAVING score != 0 AND (? IS NULL OR voted >= ?)
               ORDER BY a.created, a.answer_id""",
            (_seconds(since), _seconds(since)),
        )
        return [
            {
                "answer_id": r["answer_id"],
                "command": r["command"],
                "question": r["question"],
                "answer": r["answer_text"],
                "experts": json.loads(r["experts"]),
                "citations": json.loads(r["citations"]),
                "score": r["score"],
                "upvotes": r["up"],
                "downvotes": r["down"],
                "negative": r["score"] < 0,
                "label": "negative" if r["score"] < 0 else "positive",
                "source": f"feedback:{r['answer_id']}",
                "created": _time(r["created"]).isoformat(),  # type: ignore[union-attr]
                "voted": _time(r["voted"]).isoformat(),  # type: ignore[union-attr]
            }
            for r in rows
        ]

    # ------------------------------------------------------------------------------ user data

    async def count_user_data(self, user_id: int) -> dict[str, int]:
        """What :meth:`delete_user_data` would delete (shown before the user confirms)."""
        uid = int(user_id)
        answers = await self._value("SELECT COUNT(*) FROM answers WHERE user_id = ?", (uid,))
        votes = await self._value("SELECT COUNT(*) FROM votes WHERE user_id = ?", (uid,))
        return {"answers": answers, "votes": votes}

    async def delete_user_data(self, user_id: int) -> dict[str, int]:
        """Delete the user's votes and the answers they asked for (with their threads and the votes on them).

        Returns counts: ``votes`` (their own), ``answers``, ``votes_on_answers`` (others' votes on those
        answers, meaningless without them) and ``threads``. One transaction: all or nothing.
        """
        uid = int(user_id)

        async def op(conn: aiosqlite.Connection) -> dict[str, int]:
            own = await conn.execute("DELETE FROM votes WHERE user_id = ?", (uid,))
            others = await conn.execute(
                "DELETE FROM votes WHERE answer_id IN (SELECT answer_id FROM answers WHERE user_id = ?)",
                (uid,),
            )
            threads = await conn.execute(
                "DELETE FROM threads WHERE answer_id IN (SELECT answer_id FROM answers WHERE user_id = ?)",
                (uid,),
            )
            answers = await conn.execute("DELETE FROM answers WHERE user_id = ?", (uid,))
            return {
                "votes": own.rowcount,
                "answers": answers.rowcount,
                "votes_on_answers": others.rowcount,
                "threads": threads.rowcount,
            }

        return await self._write(op)

    # ---------------------------------------------------------------------------------- threads

    async def record_thread(
        self, thread_id: int, answer_id: str | int, session_id: str | None = None
    ) -> None:
        """Remember that the bot opened ``thread_id`` on an answer (survives restarts)."""
        params = (int(thread_id), str(answer_id), session_id, self.clock())

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                """INSERT INTO threads (thread_id, answer_id, session_id, created) VALUES (?, ?, ?, ?)
                   ON CONFLICT (thread_id) DO UPDATE SET answer_id = excluded.answer_id,
                       session_id = excluded.session_id""",
                params,
            )

        await self._write(op)

    async def thread(self, thread_id: int) -> ThreadRecord | None:
        rows = await self._rows("SELECT * FROM threads WHERE thread_id = ?", (int(thread_id),))
        if not rows:
            return None
        r = rows[0]
        return ThreadRecord(r["thread_id"], r["answer_id"], r["session_id"], _time(r["created"]))  # type: ignore[arg-type]

    async def forget_thread(self, thread_id: int) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            cursor = await conn.execute("DELETE FROM threads WHERE thread_id = ?", (int(thread_id),))
            return cursor.rowcount > 0

        return await self._write(op)

    # ------------------------------------------------------------------------------ retraining

    async def start_run(
        self, experts: Sequence[str] | None, trigger: str, *, examples: int | None = None
    ) -> int:
        """A retraining run began; returns its id for :meth:`finish_run`."""
        return await self.record_run(
            started=self.clock(), experts=experts, trigger=trigger, status="running", examples=examples
        )

    async def finish_run(self, run_id: int, status: str, validation: dict | None = None) -> None:
        params = (self.clock(), status, json.dumps(validation) if validation is not None else None, run_id)

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE retrain_runs SET finished = ?, status = ?, validation = ? WHERE id = ?", params
            )

        await self._write(op)

    async def record_run(
        self,
        *,
        started: dt.datetime | float,
        status: str,
        trigger: str = "manual",
        finished: dt.datetime | float | None = None,
        experts: Sequence[str] | None = None,
        examples: int | None = None,
        validation: dict | None = None,
    ) -> int:
        """Insert a retraining run as given; returns its id."""
        params = (
            _seconds(started),
            _seconds(finished),
            _experts_text(experts),
            trigger,
            status,
            examples,
            json.dumps(validation) if validation is not None else None,
        )

        async def op(conn: aiosqlite.Connection) -> int:
            cursor = await conn.execute(
                """INSERT INTO retrain_runs (started, finished, expert, trigger, status, examples, validation)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                params,
            )
            return int(cursor.lastrowid or 0)

        return await self._write(op)

    async def last_run(self, *, finished: bool = False) -> RetrainRun | None:
        """The latest retraining run (``finished=True``: the latest one that completed successfully)."""
        where = "WHERE status IN ('promoted', 'kept', 'finished')" if finished else ""
        rows = await self._rows(f"SELECT * FROM retrain_runs {where} ORDER BY started DESC, id DESC LIMIT 1")
        return _run(rows[0]) if rows else None

    async def runs(self, limit: int = 30) -> list[RetrainRun]:
        """The latest runs, oldest first (for training curves)."""
        rows = await self._rows("SELECT * FROM retrain_runs ORDER BY started DESC, id DESC LIMIT ?", (limit,))
        return [_run(r) for r in reversed(rows)]

    # ------------------------------------------------------------------------------------ stats

    async def stats(self) -> dict[str, Any]:
        row = (
            await self._rows(
                """SELECT (SELECT COUNT(*) FROM answers) AS answers,
                          (SELECT COUNT(*) FROM votes) AS votes,
                          (SELECT COUNT(*) FROM votes WHERE value > 0) AS upvotes,
                          (SELECT COUNT(*) FROM votes WHERE value < 0) AS downvotes,
                          (SELECT COUNT(DISTINCT user_id) FROM votes) AS voters,
                          (SELECT COUNT(*) FROM threads) AS threads,
                          (SELECT COUNT(*) FROM retrain_runs) AS runs"""
            )
        )[0]
        out: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
        out["schema_version"] = await self._value("PRAGMA user_version")
        out["journal_mode"] = await self._value("PRAGMA journal_mode")
        out["size_bytes"] = sum(
            p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists()
        )
        return out


def database_path(settings: Any) -> Path:
    """``settings.bot.database``, else ``state_dir/feedback.sqlite3``."""
    configured = settings.bot.database
    return Path(configured).expanduser() if configured else settings.paths.state_dir / "feedback.sqlite3"


async def open_store(settings: Any) -> FeedbackStore:
    """The bot's store at :func:`database_path` (what ``hexcore bot`` opens)."""
    return await FeedbackStore.open(database_path(settings))
