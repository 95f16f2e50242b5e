"""The feedback database's schema, versioned by ``PRAGMA user_version``.

:data:`MIGRATIONS` are applied in order, each in its own transaction, and a database from a newer
Hexcore is refused rather than guessed at. Migrations are never edited once released: old databases
must still open (the ``threads`` table is kept for them; the bot no longer writes it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiosqlite

from bot.storage.errors import StoreError

log = logging.getLogger(__name__)

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


async def schema_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: aiosqlite.Connection, path: Path) -> None:
    """Bring the database on ``conn`` (autocommit) up to :data:`SCHEMA_VERSION`."""
    version = await schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {version}, newer than this Hexcore understands "
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
        log.info("feedback database %s migrated to schema version %d", path, target)
