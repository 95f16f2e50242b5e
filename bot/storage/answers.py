"""The ``answers`` table: every answer the bot posted (what was asked, what it said, how long it took)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import aiosqlite

from bot.storage.database import Database


class AnswerRepository:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    async def record(
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

        await self.db.write(op)

    async def exists(self, answer_id: str | int) -> bool:
        return await self.db.value("SELECT 1 FROM answers WHERE answer_id = ?", (str(answer_id),)) is not None

    async def recent_latencies(self, limit: int = 500) -> list[float]:
        """Latencies (ms) of the most recent answers that recorded one, oldest first."""
        rows = await self.db.rows(
            "SELECT latency_ms FROM answers WHERE latency_ms IS NOT NULL ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [r[0] for r in reversed(rows)]
