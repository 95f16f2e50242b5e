"""EngineWorker's supervision: a request failed by the runner, crashes and restarts with backoff, a load error
at start, shutdown, and the event loop staying free while the worker computes. Real threads, a real runner
(``tests.engine.spell_runner``); no timing assertions except the loop-lag test, which compares the loop's
responsiveness with the work's own duration.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.errors import EngineDead, GenerationError, InvalidRequest
from engine.streaming import WorkItem
from engine.worker import EngineWorker, WorkerState
from tests.engine.spell_runner import (
    LONG,
    Job,
    SpellRunner,
    until,
    worker_threads,
)

# ---- errors and supervision ----


async def test_a_request_failed_by_the_runner_affects_only_itself(spell) -> None:
    worker, runner = spell
    gate = threading.Event()
    leader = await worker.submit(Job("leader", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    good = await worker.submit(Job("good one"))
    bad = await worker.submit(Job("bad one", bad=True))
    gate.set()
    assert [event async for event in leader] == ["leader"]
    with pytest.raises(InvalidRequest, match="malformed"):
        async for _ in bad:
            pass
    assert [event async for event in good] == ["good", "one"]
    assert runner.batches[1] == ["good one", "bad one"]  # same batch, only one failed
    status = worker.status()
    assert (status.restarts, status.failed, status.alive) == (0, 1, True)


async def test_crash_fails_in_flight_and_queued_then_restarts(make_worker) -> None:
    runners: list[SpellRunner] = []

    def factory() -> SpellRunner:
        runners.append(SpellRunner())
        return runners[-1]

    worker = make_worker(factory, batch_size=2)
    await worker.start()
    gate = threading.Event()
    leader = await worker.submit(Job("leader", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    innocent = await worker.submit(Job("innocent bystander"))
    poison = await worker.submit(Job("poison", crash=True))
    waiting = await worker.submit(Job("still queued"))
    gate.set()
    assert [event async for event in leader] == ["leader"]

    for stream in (innocent, poison):  # the crashed batch
        with pytest.raises(GenerationError, match="crashed.*out of memory") as error:
            async for _ in stream:
                pass
        assert isinstance(error.value.__cause__, RuntimeError)
    with pytest.raises(EngineDead, match="restarting"):
        async for _ in waiting:
            pass

    await until(lambda: worker.status().alive)
    status = worker.status()
    assert status.restarts == 1
    assert "out of memory" in (status.last_error or "")
    assert len(runners) == 2 and runners[0].closed == 1  # the crashed runner was discarded
    assert await worker.run(Job("after the crash")) == "AFTER THE CRASH"
    await until(lambda: worker.status().consecutive_failures == 0)  # reset once a batch completes


async def test_failing_reloads_fail_fast_and_back_off_exponentially(make_worker) -> None:
    calls: list[float] = []  # backoff_s the worker reported when each load began
    reload_failures = 3

    def factory() -> SpellRunner:
        calls.append(worker.status().backoff_s)
        if 1 < len(calls) <= 1 + reload_failures:
            raise OSError(f"model file unreadable (attempt {len(calls)})")
        return SpellRunner()

    worker = make_worker(factory, restart_backoff=(0.02, 1.0))
    await worker.start()
    crash = await worker.submit(Job("poison", crash=True))
    with pytest.raises(GenerationError):
        async for _ in crash:
            pass

    rejected = 0
    while not worker.status().alive:
        with pytest.raises(EngineDead, match="restarting"):
            await worker.submit(Job("while down"))
        rejected += 1
        await asyncio.sleep(0.005)
        assert len(calls) <= 5, "the worker should have recovered"
    assert rejected > 0
    assert calls == [0.0, 0.02, 0.04, 0.08, 0.16]  # doubles with each consecutive failure
    status = worker.status()
    assert status.restarts == 4
    assert "model file unreadable (attempt 4)" in (status.last_error or "")
    assert await worker.run(Job("recovered")) == "RECOVERED"
    await until(lambda: worker.status().backoff_s == 0.0)


async def test_start_raises_the_load_error_and_stops(make_worker) -> None:
    def factory() -> SpellRunner:
        raise FileNotFoundError("model weights not found at /nowhere")

    worker = make_worker(factory)
    with pytest.raises(FileNotFoundError, match="/nowhere"):
        await worker.start()
    await until(lambda: worker.thread is not None and not worker.thread.is_alive())
    status = worker.status()
    assert status.state is WorkerState.FAILED and not status.alive
    assert "weights not found" in (status.last_error or "")
    with pytest.raises(EngineDead, match="down"):
        await worker.submit(Job("anyone?"))


# ---- shutdown ----


async def test_close_cancels_work_joins_the_thread_and_is_idempotent(spell) -> None:
    worker, runner = spell
    running = await worker.submit(Job(LONG, delay=0.005))
    async for _ in running:
        break  # it is running now
    gate = threading.Event()
    blocked = [await worker.submit(Job(f"queued {i}", gate=gate)) for i in range(2)]

    await worker.close()
    assert worker.thread is not None and not worker.thread.is_alive()
    assert worker_threads() == []
    for stream in blocked:
        with pytest.raises(EngineDead, match="shutting down"):
            async for _ in stream:
                pass
    with pytest.raises(EngineDead, match="shut down before finishing"):
        async for _ in running:
            pass
    assert runner.produced[LONG] < 200
    assert runner.closed == 1
    await worker.close()  # idempotent
    assert worker.status().state is WorkerState.CLOSED


async def test_close_with_drain_finishes_pending_requests(spell) -> None:
    worker, _ = spell
    streams = [await worker.submit(Job(f"drain me {i}", delay=0.002)) for i in range(6)]
    await worker.close(drain=True)
    assert worker_threads() == []
    for i, stream in enumerate(streams):
        assert [event async for event in stream] == ["drain", "me", str(i)]
    assert worker.status().processed == 6


# ---- the event loop stays free ----


class BusyRunner:
    """Pure-Python CPU work that holds the GIL as much as Python allows, until the loop proves it ran.

    It computes in chunks and stops once the event loop has run a task *during* the computation
    (``loop_ran`` is set from the loop) or after a generous deadline. Had the work been run on the
    loop's own thread, the loop could never set the flag and ``saw_loop`` would stay False.
    """

    def __init__(self) -> None:
        self.computing = threading.Event()
        self.loop_ran = threading.Event()
        self.saw_loop = False
        self.chunks = 0

    def run(self, items: list[WorkItem]) -> None:
        deadline = time.monotonic() + 30
        for item in items:
            self.computing.set()
            total = 0
            while not self.loop_ran.is_set() and time.monotonic() < deadline:
                total = sum(i * i for i in range(20_000))
                self.chunks += 1
            self.saw_loop = self.loop_ran.is_set()
            item.finish(total)


async def test_event_loop_runs_while_the_worker_computes(make_worker) -> None:
    runner = BusyRunner()
    worker = make_worker(lambda: runner)
    await worker.start()

    async def watcher() -> None:
        while not runner.computing.is_set():
            await asyncio.sleep(0.001)
        runner.loop_ran.set()

    watching = asyncio.create_task(watcher())
    result = await worker.run(None)
    await watching

    assert result == sum(i * i for i in range(20_000))
    assert runner.saw_loop, "the loop never ran while the worker computed"
    assert runner.chunks >= 1


async def test_no_thread_is_left_behind_after_many_workers(make_worker) -> None:
    for _ in range(5):
        worker = make_worker(SpellRunner)
        await worker.start()
        assert await worker.run(Job("ping")) == "PING"
        await worker.close()
    assert worker_threads() == []


@pytest.mark.parametrize("kwargs", [{"queue_size": 0}, {"batch_size": 0}, {"restart_backoff": (1.0, 0.5)}])
def test_bad_configuration_is_rejected(kwargs: dict) -> None:
    options = {"queue_size": 1, "batch_size": 1} | kwargs
    with pytest.raises(ValueError):
        EngineWorker(SpellRunner, **options)
