"""The SQLite file behind the feedback store: two connections and the one serialized writer.

* **One writer.** Every write goes through a queue to a single writer task that owns the only write
  connection, so two coroutines never interleave inside one transaction and "database is locked" never
  reaches a caller. The writer commits whatever is queued in one transaction (group commit); each
  operation runs in its own SAVEPOINT, so one failing operation does not undo the others.
* **Durable.** WAL journal with ``synchronous=FULL``: a write is acknowledged only after its commit is
  in the WAL on disk, so nothing acknowledged is lost to ``kill -9`` (or power loss). Readers use a
  second, read-only connection and never block the writer. ``busy_timeout`` covers another process
  (``hexcore`` CLI) holding the lock for a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from bot.storage.errors import StoreError
from bot.storage.schema import migrate

log = logging.getLogger(__name__)

Op = Callable[[aiosqlite.Connection], Awaitable[Any]]
"""A write: runs on the writer connection inside the writer's transaction."""

BUSY_TIMEOUT_MS = 5000
MAX_BATCH = 256
"""Operations committed together at most; bounds how long one transaction holds the write lock."""


def to_time(value: float | None) -> dt.datetime | None:
    """Stored UTC unix seconds as an aware ``datetime``."""
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def to_seconds(value: dt.datetime | float | None) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    return value.timestamp()


async def scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    async with conn.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class _Pending:
    op: Op
    future: asyncio.Future


class Database:
    """Open with ``await Database.open(path)``; :meth:`write` queues, :meth:`rows` reads; :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: aiosqlite.Connection | None = None
        self.reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.batches = 0
        """Transactions committed by the writer (group commits); for tests and the bench."""

    @classmethod
    async def open(cls, path: Path, *, setup: Sequence[Op] = ()) -> Database:
        """Connect, migrate and run ``setup`` (each in autocommit, before any queued write), then serve."""
        db = cls(path)
        await db._open(setup)
        return db

    async def _open(self, setup: Sequence[Op]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = await scalar(writer, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            await writer.execute("PRAGMA synchronous = FULL")
            await writer.execute("PRAGMA foreign_keys = ON")
            await migrate(writer, self.path)
            for op in setup:
                await op(writer)
        except BaseException:
            await writer.close()
            raise
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await reader.execute("PRAGMA query_only = ON")
        reader.row_factory = aiosqlite.Row
        writer.row_factory = aiosqlite.Row
        self.writer, self.reader = writer, reader
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="feedback-writer")

    async def close(self) -> None:
        """Finish every queued write, then close both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(Exception):
                await self._task
        for conn in (self.reader, self.writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    # ------------------------------------------------------------------------------------ reads

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        if self._closed or self.reader is None:
            raise StoreError("the feedback store is closed")
        async with self.reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self.rows(sql, params)
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------------------- the writer

    async def write(self, op: Op) -> Any:
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
        conn = self.writer
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
