"""The ``votes`` table (one vote per user per answer, changeable) and the training examples it yields."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite

from bot.storage.database import Database, to_seconds, to_time
from bot.storage.errors import UnknownAnswer


@dataclass(frozen=True, slots=True)
class Vote:
    answer_id: str
    user_id: int
    value: int
    source: str
    updated: dt.datetime


class VoteRepository:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    async def record(self, answer_id: str | int, user_id: int, value: int, source: str) -> None:
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

        await self.db.write(op)

    async def remove(self, answer_id: str | int, user_id: int, *, source: str | None = None) -> bool:
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

        return await self.db.write(op)

    async def on_answer(self, answer_id: str | int) -> list[Vote]:
        rows = await self.db.rows(
            "SELECT * FROM votes WHERE answer_id = ? ORDER BY updated, user_id", (str(answer_id),)
        )
        return [
            Vote(r["answer_id"], r["user_id"], r["value"], r["source"], to_time(r["updated"]))  # type: ignore[arg-type]
            for r in rows
        ]

    async def training_examples(self, since: dt.datetime | float | None = None) -> list[dict]:
        """Voted answers as training examples: net score > 0 positive, < 0 flagged ``negative``.

        Rows carry the fields ``training.examples.TrainingExample.from_row`` reads (question, answer,
        experts, label, source) plus the vote figures.

        Answers whose votes cancel out are left out. ``since`` keeps answers voted on at or after it
        (new feedback since the last retraining).
        """
        rows = await self.db.rows(
            """SELECT a.*, SUM(v.value) AS score, SUM(v.value > 0) AS up, SUM(v.value < 0) AS down,
                      MAX(v.updated) AS voted
               FROM answers a JOIN votes v ON v.answer_id = a.answer_id
               GROUP BY a.answer_id
               HAVING score != 0 AND (? IS NULL OR voted >= ?)
               ORDER BY a.created, a.answer_id""",
            (to_seconds(since), to_seconds(since)),
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
                "created": to_time(r["created"]).isoformat(),  # type: ignore[union-attr]
                "voted": to_time(r["voted"]).isoformat(),  # type: ignore[union-attr]
            }
            for r in rows
        ]
