"""The feedback store on a real SQLite file: WAL, one writer, durable commits, exact deletion."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from bot.storage import (
    SCHEMA_VERSION,
    FeedbackStore,
    StoreError,
    UnknownAnswer,
    database_path,
    open_store,
)
from bot.storage.database import scalar
from hexcore.settings import BotSettings, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Tick:
    """A store clock the test moves by hand (unix seconds)."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tick() -> Tick:
    return Tick()


@pytest.fixture
async def store(tmp_path: Path, tick: Tick):
    s = await FeedbackStore.open(tmp_path / "feedback.sqlite3", clock=tick)
    try:
        yield s
    finally:
        await s.close()


async def answer(
    store: FeedbackStore, answer_id: str, user_id: int = 1, question: str = "What is trample?"
) -> None:
    await store.answers.record(
        answer_id,
        10,
        20,
        user_id,
        "ask",
        question,
        f"answer {answer_id}",
        ["reason"],
        ["CR 702.19b (2026-01-16)"],
    )


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=5)


async def test_wal_mode_schema_version_and_pragmas(store: FeedbackStore):
    with raw(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"answers", "votes", "threads", "retrain_runs"} <= tables
    writer = store.db.writer
    assert writer is not None
    assert await scalar(writer, "PRAGMA foreign_keys") == 1
    assert await scalar(writer, "PRAGMA busy_timeout") == 5000
    assert await scalar(writer, "PRAGMA synchronous") == 2  # FULL
    stats = await store.stats()
    assert stats["journal_mode"] == "wal" and stats["schema_version"] == SCHEMA_VERSION


async def test_hundreds_of_concurrent_writers_lose_nothing(store: FeedbackStore):
    await asyncio.gather(*(answer(store, f"a{i}", user_id=i) for i in range(20)))
    votes = [(f"a{i}", u, 1 if (i + u) % 3 else -1) for i in range(20) for u in range(25)]
    await asyncio.gather(*(store.votes.record(a, u, v, "button") for a, u, v in votes))
    stats = await store.stats()
    assert stats["answers"] == 20 and stats["votes"] == len(votes) == 500
    assert stats["upvotes"] == sum(v > 0 for *_, v in votes)
    for i in (0, 7, 19):
        stored = {(v.user_id, v.value) for v in await store.votes.on_answer(f"a{i}")}
        assert stored == {(u, v) for a, u, v in votes if a == f"a{i}"}
    assert store.batches < 520, "concurrent writes were committed in shared transactions"


async def test_another_connection_holding_the_lock_is_waited_for(store: FeedbackStore):
    await answer(store, "a1")
    conn = raw(store.path)
    conn.isolation_level = None
    conn.execute("BEGIN IMMEDIATE")  # another process (say, the CLI) is writing
    conn.execute("INSERT INTO threads (thread_id, answer_id, created) VALUES (1, 'a1', 0)")
    vote = asyncio.create_task(store.votes.record("a1", 5, 1, "button"))
    await asyncio.sleep(0.3)
    assert not vote.done(), "the store waits for the lock (busy_timeout) instead of failing"
    conn.execute("COMMIT")
    conn.close()
    await asyncio.wait_for(vote, 10)
    assert [v.user_id for v in await store.votes.on_answer("a1")] == [5]
    assert await store.db.value("SELECT answer_id FROM threads WHERE thread_id = 1") == "a1"


async def test_a_changed_vote_replaces_the_old_one(store: FeedbackStore, tick: Tick):
    await answer(store, "a1")
    await store.votes.record("a1", 7, 1, "reaction:👍")
    tick.now += 60
    await store.votes.record("a1", 7, -1, "button")
    votes = await store.votes.on_answer("a1")
    assert len(votes) == 1
    assert (votes[0].value, votes[0].source, votes[0].updated.timestamp()) == (-1, "button", tick.now)


async def test_remove_vote_only_by_the_source_that_cast_it(store: FeedbackStore):
    await answer(store, "a1")
    await store.votes.record("a1", 7, -1, "button")
    assert not await store.votes.remove("a1", 7, source="reaction:👍")
    assert len(await store.votes.on_answer("a1")) == 1
    assert await store.votes.remove("a1", 7, source="button")
    assert await store.votes.on_answer("a1") == []
    assert not await store.votes.remove("a1", 7)


async def test_invalid_votes_are_refused(store: FeedbackStore):
    with pytest.raises(UnknownAnswer):
        await store.votes.record("not-an-answer", 1, 1, "button")
    await answer(store, "a1")
    with pytest.raises(ValueError):
        await store.votes.record("a1", 1, 0, "button")
    with pytest.raises(ValueError):
        await store.votes.record("a1", 1, 1, "")
    # a failed operation does not spoil the others committed with it
    results = await asyncio.gather(
        store.votes.record("a1", 1, 1, "button"),
        store.votes.record("missing", 2, 1, "button"),
        store.votes.record("a1", 3, -1, "button"),
        return_exceptions=True,
    )
    assert isinstance(results[1], UnknownAnswer) and results[0] is None and results[2] is None
    assert {v.user_id for v in await store.votes.on_answer("a1")} == {1, 3}


async def test_answer_recorded_twice_keeps_its_votes(store: FeedbackStore):
    await answer(store, "a1")
    await store.votes.record("a1", 2, 1, "button")
    await store.answers.record(
        "a1", 10, 20, 1, "ask", "edited?", "new text", ["explain"], [], latency_ms=42.0
    )
    assert len(await store.votes.on_answer("a1")) == 1
    (example,) = await store.export_training_examples()
    assert example["question"] == "edited?" and example["answer"] == "new text"
    assert await store.answers.recent_latencies() == [42.0]


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from bot.storage import FeedbackStore

    async def main():
        store = await FeedbackStore.open(sys.argv[1])
        await store.answers.record("a1", 1, 2, 3, "ask", "q", "text", ["reason"], [])
        i = 0
        while True:
            await store.votes.record("a1", i, 1 if i % 2 else -1, "button")
            print(i, flush=True)  # acknowledged = committed
            i += 1

    asyncio.run(main())
    """
)


async def test_nothing_committed_is_lost_after_kill_9(tmp_path: Path):
    path = tmp_path / "feedback.sqlite3"
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(path),
        stdout=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    acknowledged = -1
    try:
        async with asyncio.timeout(60):
            while acknowledged < 150:
                line = await proc.stdout.readline()
                assert line, "the writer died on its own"
                acknowledged = int(line)
        proc.send_signal(signal.SIGKILL)  # mid-write: it keeps writing until the signal lands
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert Path(str(path) + "-wal").exists(), "killed before a checkpoint: recovery replays the WAL"
    reopened = await FeedbackStore.open(path)
    try:
        users = {v.user_id for v in await reopened.votes.on_answer("a1")}
        assert set(range(acknowledged + 1)) <= users, "every acknowledged vote survived"
        assert await reopened.db.value("PRAGMA integrity_check") == "ok"
    finally:
        await reopened.close()


async def test_delete_user_data_removes_exactly_that_users_data(store: FeedbackStore):
    alice, bob, carol = 1, 2, 3
    await answer(store, "alice-1", alice)
    await answer(store, "alice-2", alice)
    await answer(store, "bob-1", bob)
    await store.votes.record("alice-1", bob, 1, "button")  # bob on alice's answer: goes with the answer
    await store.votes.record("alice-1", alice, 1, "button")
    await store.votes.record("bob-1", alice, -1, "reaction:👎")
    await store.votes.record("bob-1", carol, 1, "button")
    with raw(store.path) as conn:  # thread rows an older Hexcore wrote go with their answers
        conn.executemany(
            "INSERT INTO threads (thread_id, answer_id, session_id, created) VALUES (?, ?, ?, 0)",
            [(900, "alice-2", "alice-2"), (901, "bob-1", "bob-1")],
        )
    assert await store.users.count(alice) == {"answers": 2, "votes": 2}

    counts = await store.users.delete(alice)

    assert counts == {"votes": 2, "answers": 2, "votes_on_answers": 1, "threads": 1}
    with raw(store.path) as conn:
        assert conn.execute("SELECT answer_id FROM answers").fetchall() == [("bob-1",)]
        assert conn.execute("SELECT answer_id, user_id FROM votes").fetchall() == [("bob-1", carol)]
        assert conn.execute("SELECT COUNT(*) FROM votes WHERE user_id = ?", (alice,)).fetchone()[0] == 0
    assert [tuple(r) for r in await store.db.rows("SELECT thread_id, answer_id FROM threads")] == [
        (901, "bob-1")
    ]
    assert await store.users.count(alice) == {"answers": 0, "votes": 0}
    assert await store.users.delete(alice) == {
        "votes": 0,
        "answers": 0,
        "votes_on_answers": 0,
        "threads": 0,
    }


async def test_export_training_examples(store: FeedbackStore, tick: Tick):
    for name in ("good", "bad", "even", "silent"):
        await answer(store, name, question=f"{name}?")
    await store.votes.record("good", 1, 1, "button")
    await store.votes.record("good", 2, 1, "reaction:✅")
    await store.votes.record("good", 3, -1, "button")
    await store.votes.record("bad", 1, -1, "button")
    await store.votes.record("even", 1, 1, "button")
    await store.votes.record("even", 2, -1, "button")
    examples = {e["answer_id"]: e for e in await store.export_training_examples()}
    assert set(examples) == {"good", "bad"}, "unvoted and tied answers are not examples"
    good, bad = examples["good"], examples["bad"]
    assert (good["score"], good["upvotes"], good["downvotes"], good["negative"], good["label"]) == (
        1,
        2,
        1,
        False,
        "positive",
    )
    assert (bad["score"], bad["negative"], bad["label"]) == (-1, True, "negative")
    assert good["question"] == "good?" and good["answer"] == "answer good"
    assert good["experts"] == ["reason"] and good["citations"] == ["CR 702.19b (2026-01-16)"]
    # since: only answers voted on at or after that time
    cut = tick.now + 100
    tick.now += 200
    await store.votes.record("bad", 9, -1, "button")
    assert [e["answer_id"] for e in await store.export_training_examples(since=cut)] == ["bad"]
    # the rows are what the training side reads
    examples_mod = pytest.importorskip("training.examples")
    rows = [examples_mod.TrainingExample.from_row(e) for e in await store.export_training_examples()]
    assert {(r.question, r.label) for r in rows} == {("good?", "positive"), ("bad?", "negative")}


async def test_retraining_runs(tmp_path: Path, tick: Tick):
    path = tmp_path / "f.sqlite3"
    async with await FeedbackStore.open(path, clock=tick) as s:
        assert await s.runs.last() is None
        first = await s.runs.start(None, "nightly", examples=12)
        tick.now += 30
        await s.runs.finish(first, "promoted", {"experts": {"reason": {"promoted": True}}})
        tick.now += 30
        await s.runs.start(["teach"], "manual")  # cut off by a crash: left running
    async with await FeedbackStore.open(path, clock=tick) as s:
        last = await s.runs.last()
        assert last.status == "interrupted" and last.experts == ["teach"] and last.trigger == "manual"
        done = await s.runs.last(finished=True)
        assert done.id == first and done.status == "promoted" and done.examples == 12
        assert done.validation == {"experts": {"reason": {"promoted": True}}}
        assert done.finished.timestamp() - done.started.timestamp() == 30
        assert [r.status for r in await s.runs.recent()] == ["promoted", "interrupted"]


async def test_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "f.sqlite3"
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this Hexcore"):
        await FeedbackStore.open(path)


async def test_close_finishes_queued_writes_then_refuses(store: FeedbackStore):
    await answer(store, "a1")
    pending = [asyncio.create_task(store.votes.record("a1", u, 1, "button")) for u in range(50)]
    await asyncio.sleep(0)
    await store.close()
    await asyncio.gather(*pending)
    with raw(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 50
    with pytest.raises(StoreError, match="closed"):
        await store.votes.record("a1", 99, 1, "button")
    with pytest.raises(StoreError, match="closed"):
        await store.votes.on_answer("a1")


async def test_open_store_path_from_settings(tmp_path: Path, settings: Settings):
    assert database_path(settings) == settings.paths.state_dir / "feedback.sqlite3"
    custom = Settings(
        paths=settings.paths, bot=BotSettings(_env_file=None, database=tmp_path / "x" / "fb.db")
    )
    s = await open_store(custom)
    try:
        assert s.path == tmp_path / "x" / "fb.db" and s.path.exists()
    finally:
        await s.close()
