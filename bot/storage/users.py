"""One user's stored data across the tables, for ``/forgetme``."""

from __future__ import annotations

import aiosqlite

from bot.storage.database import Database


class UserData:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def count(self, user_id: int) -> dict[str, int]:
        """What :meth:`delete` would delete (shown before the user confirms)."""
        uid = int(user_id)
        answers = await self.db.value("SELECT COUNT(*) FROM answers WHERE user_id = ?", (uid,))
        votes = await self.db.value("SELECT COUNT(*) FROM votes WHERE user_id = ?", (uid,))
        return {"answers": answers, "votes": votes}

    async def delete(self, user_id: int) -> dict[str, int]:
        """Delete the user's votes and the answers they asked for (with their threads and the votes on them).

        Returns counts: ``votes`` (their own), ``answers``, ``votes_on_answers`` (others' votes on those
        answers, meaningless without them) and ``threads`` (rows an older Hexcore wrote). One transaction:
        all or nothing.
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

        return await self.db.write(op)
