"""``FeedbackStore``: the feedback database opened once, with one repository per table.

Callers use the repositories: ``store.answers``, ``store.votes``, ``store.runs`` and ``store.users``
(one user's data across tables, for ``/forgetme``). The store itself only opens and closes the file and
answers the few questions that span it (:meth:`stats`, :meth:`export_training_examples`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.storage.answers import AnswerRepository
from bot.storage.database import Database
from bot.storage.runs import RunRepository, mark_interrupted
from bot.storage.users import UserData
from bot.storage.votes import VoteRepository

if TYPE_CHECKING:
    from hexcore.settings import Settings


class FeedbackStore:
    """Open with ``await FeedbackStore.open(path)`` (or ``async with``); close with :meth:`close`."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.path = db.path
        self.clock = clock
        self.answers = AnswerRepository(db, clock)
        self.votes = VoteRepository(db, clock)
        self.runs = RunRepository(db, clock)
        self.users = UserData(db)

    @classmethod
    async def open(cls, path: Path | str, *, clock: Callable[[], float] = time.time) -> FeedbackStore:
        db = await Database.open(Path(path), setup=[mark_interrupted(clock)])
        return cls(db, clock=clock)

    async def close(self) -> None:
        """Finish every queued write, then close the file. Idempotent."""
        await self.db.close()

    async def __aenter__(self) -> FeedbackStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def batches(self) -> int:
        """Transactions committed by the writer (group commits); for tests and the bench."""
        return self.db.batches

    async def export_training_examples(self, since: dt.datetime | float | None = None) -> list[dict]:
        """Voted answers as training examples (:meth:`VoteRepository.training_examples`)."""
        return await self.votes.training_examples(since)

    async def stats(self) -> dict[str, Any]:
        row = (
            await self.db.rows(
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
        out["schema_version"] = await self.db.value("PRAGMA user_version")
        out["journal_mode"] = await self.db.value("PRAGMA journal_mode")
        out["size_bytes"] = sum(
            p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists()
        )
        return out


def database_path(settings: Settings) -> Path:
    """``settings.bot.database``, else ``state_dir/feedback.sqlite3``."""
    configured = settings.bot.database
    return Path(configured).expanduser() if configured else settings.paths.state_dir / "feedback.sqlite3"


async def open_store(settings: Settings) -> FeedbackStore:
    """The bot's store at :func:`database_path` (what ``hexcore bot`` opens)."""
    return await FeedbackStore.open(database_path(settings))
