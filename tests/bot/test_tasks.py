"""Fire-and-forget tasks are kept alive until done and their failures are logged."""

from __future__ import annotations

import asyncio
import gc
import logging

from bot.tasks import BackgroundTasks


async def test_failures_are_logged(caplog):
    tasks = BackgroundTasks()

    async def boom() -> None:
        raise ValueError("lost otherwise")

    tasks.spawn(boom(), name="boom")
    await tasks.wait(1)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        failures and "boom" in failures[0].getMessage() and "lost otherwise" in repr(failures[0].exc_info[1])
    )


async def test_tasks_are_referenced_until_done():
    tasks = BackgroundTasks()
    done = asyncio.Event()

    async def work() -> None:
        await asyncio.sleep(0.01)
        done.set()

    tasks.spawn(work(), name="work")
    gc.collect()
    assert len(tasks) == 1
    await tasks.wait(1)
    assert done.is_set() and len(tasks) == 0


async def test_cancel_all_and_wait_for_spawned_children():
    tasks = BackgroundTasks()
    results = []

    async def parent() -> None:
        tasks.spawn(child(), name="child")

    async def child() -> None:
        await asyncio.sleep(0)
        results.append("child")

    tasks.spawn(parent(), name="parent")
    await tasks.wait(1)
    assert results == ["child"]
    forever = tasks.spawn(asyncio.sleep(3600), name="forever")
    await tasks.cancel_all()
    assert forever.cancelled() and len(tasks) == 0
