"""The ``retrain_runs`` table: each retraining run, its trigger, outcome and validation summary."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiosqlite

from bot.storage.database import Database, Op, to_seconds, to_time


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


def _run(row: aiosqlite.Row) -> RetrainRun:
    return RetrainRun(
        id=row["id"],
        started=to_time(row["started"]),  # type: ignore[arg-type]
        finished=to_time(row["finished"]),
        experts=row["expert"].split(",") if row["expert"] else None,
        trigger=row["trigger"],
        status=row["status"],
        examples=row["examples"],
        validation=json.loads(row["validation"]) if row["validation"] else None,
    )


def mark_interrupted(clock: Callable[[], float]) -> Op:
    """The open-time write: a run still marked running was cut off by a crash or restart."""

    async def op(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "UPDATE retrain_runs SET status = 'interrupted', finished = ? WHERE status = 'running'",
            (clock(),),
        )

    return op


class RunRepository:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    async def start(self, experts: Sequence[str] | None, trigger: str, *, examples: int | None = None) -> int:
        """A retraining run began; returns its id for :meth:`finish`."""
        return await self.record(
            started=self.clock(), experts=experts, trigger=trigger, status="running", examples=examples
        )

    async def finish(self, run_id: int, status: str, validation: dict | None = None) -> None:
        params = (self.clock(), status, json.dumps(validation) if validation is not None else None, run_id)

        async def op(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "UPDATE retrain_runs SET finished = ?, status = ?, validation = ? WHERE id = ?", params
            )

        await self.db.write(op)

    async def record(
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
            to_seconds(started),
            to_seconds(finished),
            ",".join(experts) if experts else None,
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

        return await self.db.write(op)

    async def last(self, *, finished: bool = False) -> RetrainRun | None:
        """The latest retraining run (``finished=True``: the latest one that completed successfully)."""
        where = "WHERE status IN ('promoted', 'kept', 'finished')" if finished else ""
        rows = await self.db.rows(
            f"SELECT * FROM retrain_runs {where} ORDER BY started DESC, id DESC LIMIT 1"
        )
        return _run(rows[0]) if rows else None

    async def recent(self, limit: int = 30) -> list[RetrainRun]:
        """The latest runs, oldest first (for training curves)."""
        rows = await self.db.rows(
            "SELECT * FROM retrain_runs ORDER BY started DESC, id DESC LIMIT ?", (limit,)
        )
        return [_run(r) for r in reversed(rows)]
