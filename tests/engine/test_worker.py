"""EngineWorker with real threads and a real runner that spells out text token by token.

Nothing is mocked: ``SpellRunner`` does the work a generator does (batched, step by step, polling the
cancel flag, emitting tokens), so the tests observe streaming, batching, cancellation and crashes
through what it actually produced. Waits poll observable state; there are no timing assertions except
the loop-lag test, which compares the loop's responsiveness with the work's own duration.
"""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from engine.errors import EngineDead, EngineOverloaded, RequestCancelled
from engine.worker import WorkerState
from tests.engine.spell_runner import (
    LONG,
    AdmittingRunner,
    Job,
    SpellRunner,
    collect,
    until,
)

# ---- streaming ----


async def test_stream_yields_tokens_in_order_then_result(spell) -> None:
    worker, _ = spell
    events, result = await collect(worker, Job("when a creature dies"))
    assert events == ["when", "a", "creature", "dies"]
    assert result == "WHEN A CREATURE DIES"
    assert await worker.run(Job("lifelink")) == "LIFELINK"
    assert [event async for event in worker.stream(Job("first strike"))] == ["first", "strike"]
    status = worker.status()  # counted as each settled, before its consumer saw the result
    assert (status.processed, status.failed, status.cancelled) == (3, 0, 0)
    await until(lambda: worker.status().in_flight == 0)


async def test_concurrent_requests_each_get_their_own_stream(spell) -> None:
    worker, _ = spell
    texts = [f"job{i} " + " ".join(f"w{i}.{k}" for k in range(6)) for i in range(7)]
    results = await asyncio.gather(*(collect(worker, Job(text, delay=0.001)) for text in texts))
    for text, (events, result) in zip(texts, results, strict=True):
        assert events == text.split()
        assert result == text.upper()


# ---- admission control ----


async def test_full_queue_answers_busy_at_once_with_requests_ahead(make_worker) -> None:
    runner = SpellRunner()
    worker = make_worker(lambda: runner, queue_size=2, batch_size=1)
    await worker.start()
    gate = threading.Event()
    running = await worker.submit(Job("held", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    queued = [await worker.submit(Job(f"queued {i}")) for i in range(2)]
    assert [stream.ahead for stream in queued] == [1, 2]

    with pytest.raises(EngineOverloaded) as busy:
        await worker.submit(Job("one too many"))
    assert busy.value.ahead == 3
    assert "3 questions ahead" in busy.value.user_message
    assert worker.status().queue_depth == 2  # the rejected request was never queued

    gate.set()
    for stream in [running, *queued]:
        assert [event async for event in stream]
    assert await worker.run(Job("after the rush")) == "AFTER THE RUSH"
    assert "one too many" not in runner.produced


async def test_submit_before_start_and_after_close_fails_fast(make_worker) -> None:
    worker = make_worker(SpellRunner)
    with pytest.raises(EngineDead, match="not been started"):
        await worker.submit(Job("too early"))
    await worker.start()
    await worker.close()
    with pytest.raises(EngineDead, match="shut down"):
        await worker.submit(Job("too late"))
    assert worker.status().state is WorkerState.CLOSED


# ---- cancellation ----


async def test_cancelling_the_consumer_task_stops_the_runner(spell) -> None:
    worker, runner = spell
    seen: list[str] = []

    async def consume() -> None:
        async for event in await worker.submit(Job(LONG, delay=0.005)):
            seen.append(event)

    task = asyncio.create_task(consume())
    await until(lambda: len(seen) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: worker.status().cancelled == 1)
    await until(lambda: worker.status().in_flight == 0)
    assert runner.produced[LONG] < 100  # stopped early; it would have produced 200
    assert await worker.run(Job("still serving")) == "STILL SERVING"


async def test_timeout_around_the_consumer_cancels_the_request(spell) -> None:
    worker, runner = spell
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            async for _ in await worker.submit(Job(LONG, delay=0.005)):
                pass
    await until(lambda: worker.status().cancelled == 1)
    assert runner.produced[LONG] < 200


async def test_aclose_stops_the_runner(spell) -> None:
    worker, runner = spell
    stream = await worker.submit(Job(LONG, delay=0.005))
    events = []
    async for event in stream:
        events.append(event)
        if len(events) == 3:
            break
    await stream.aclose()
    await until(lambda: worker.status().cancelled == 1)
    assert events == ["t0", "t1", "t2"]
    assert runner.produced[LONG] < 100


async def test_breaking_out_and_dropping_the_stream_stops_the_runner(spell) -> None:
    worker, runner = spell

    async def first_token() -> str:
        async for event in await worker.submit(Job(LONG, delay=0.005)):
            return event  # the stream is dropped here, never closed explicitly
        raise AssertionError("no token")

    assert await first_token() == "t0"
    gc.collect()
    await until(lambda: worker.status().cancelled == 1)
    assert runner.produced[LONG] < 100


async def test_cancelled_queued_request_is_dropped_without_running(make_worker) -> None:
    runner = SpellRunner()
    worker = make_worker(lambda: runner, queue_size=4, batch_size=1)
    await worker.start()
    gate = threading.Event()
    held = await worker.submit(Job("held", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    doomed = await worker.submit(Job("never runs"))
    assert worker.status().queue_depth == 1

    await doomed.aclose()
    assert worker.status().queue_depth == 0  # the slot is free at once
    gate.set()
    assert [event async for event in held] == ["held"]
    assert await worker.run(Job("next")) == "NEXT"
    assert all("never runs" not in batch for batch in runner.batches)
    assert worker.status().cancelled == 1

    stopped = await worker.submit(Job(LONG, delay=0.005))
    stopped.cancel()  # a consumer that keeps reading after cancel() learns why it ended
    with pytest.raises(RequestCancelled):
        async for _ in stopped:
            pass


# ---- batching ----


async def test_queued_requests_run_together_up_to_batch_size(spell) -> None:
    worker, runner = spell  # batch_size=4
    gate = threading.Event()
    first = await worker.submit(Job("leader", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    rest = [await worker.submit(Job(f"follower {i}")) for i in range(6)]
    gate.set()
    for stream in [first, *rest]:
        assert [event async for event in stream]
    assert [len(batch) for batch in runner.batches] == [1, 4, 2]
    assert runner.batches[1] == [f"follower {i}" for i in range(4)]
    await until(lambda: worker.status().batches == 3)  # tallied once the runner returns


async def test_only_compatible_requests_share_a_batch(spell) -> None:
    worker, runner = spell
    gate = threading.Event()
    first = await worker.submit(Job("leader", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    groups = ["a", "b", "a", "b", "a"]
    rest = [await worker.submit(Job(f"{g} {i}", group=g)) for i, g in enumerate(groups)]
    gate.set()
    for stream in [first, *rest]:
        assert [event async for event in stream]
    assert runner.batches[1:] == [["a 0", "a 2", "a 4"], ["b 1", "b 3"]]


async def test_requests_queued_mid_batch_join_the_running_batch(make_worker) -> None:
    runner = AdmittingRunner(rows=3)
    worker = make_worker(lambda: runner, batch_size=3)
    await worker.start()
    gate = threading.Event()
    first = await worker.submit(Job("a long leader answer of many words", gate=gate, delay=0.01))
    await until(lambda: worker.status().in_flight == 1)
    rest = [await worker.submit(Job(f"{g} {i} words", group=g)) for i, g in enumerate("abaaa")]
    gate.set()
    results = [[event async for event in stream] for stream in [first, *rest]]
    # Every answer is whole: a newcomer starts at its own first word, not at the batch's step.
    assert results[0] == "a long leader answer of many words".split()
    assert results[1:] == [[g, str(i), "words"] for i, g in enumerate("abaaa")]
    # Group "a" joined the leader's run as rows freed up (never more than 3 at once); "b" waited its turn.
    assert runner.batches[0] == ["a long leader answer of many words"] + [
        f"a {i} words" for i in (0, 2, 3, 4)
    ]
    assert runner.batches[1:] == [["b 1 words"]]
    assert runner.widest == 3
    await until(lambda: worker.status().batches == 2 and worker.status().processed == 6)
    assert worker.status().in_flight == 0


async def test_a_cancelled_request_is_not_admitted_and_closing_admits_nothing(make_worker) -> None:
    runner = AdmittingRunner(rows=4)
    worker = make_worker(lambda: runner, batch_size=4)
    await worker.start()
    gate = threading.Event()
    first = await worker.submit(Job("leader", gate=gate))
    await until(lambda: worker.status().in_flight == 1)
    dropped = await worker.submit(Job("never runs"))
    kept = await worker.submit(Job("runs"))
    dropped.cancel()
    gate.set()
    assert [event async for event in first] == ["leader"]
    assert [event async for event in kept] == ["runs"]
    with pytest.raises(RequestCancelled):
        [event async for event in dropped]
    assert runner.produced["never runs"] == 0 and runner.batches == [["leader", "runs"]]
    # Closing without drain: the running batch takes nothing more from the queue.
    slow = await worker.submit(Job("slow " * 50, delay=0.01))
    await until(lambda: runner.produced["slow " * 50] > 0)
    late = await worker.submit(Job("late"))
    await worker.close()
    for stream in (slow, late):
        with pytest.raises(EngineDead):
            [event async for event in stream]
    assert runner.produced["late"] == 0
