"""EngineWorker with real threads and a real runner that spells out text token by token.

Nothing is mocked: ``SpellRunner`` does the work a generator does (batched, step by step, polling the
cancel flag, emitting tokens), so the tests observe streaming, batching, cancellation and crashes
through what it actually produced. Waits poll observable state; there are no timing assertions except
the loop-lag test, which compares the loop's responsiveness with the work's own duration.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from engine.errors import EngineDead, EngineOverloaded, GenerationError, InvalidRequest, RequestCancelled
from engine.streaming import WorkItem
from engine.worker import Admit, EngineWorker, WorkerState

_names = itertools.count()


@dataclass
class Job:
    text: str
    delay: float = 0.0
    """Seconds per decoding step (the slowest item of a batch sets the pace)."""
    gate: threading.Event | None = None
    """The runner waits for this before decoding (holds a batch in flight)."""
    group: str = "a"
    """Only items of the same group share a batch (like requests for different base models)."""
    crash: bool = False
    bad: bool = False


@dataclass
class SpellRunner:
    """Emits each job's words one decoding step at a time, the whole batch in lockstep."""

    batches: list[list[str]] = field(default_factory=list)
    produced: Counter = field(default_factory=Counter)
    closed: int = 0
    widest: int = 0
    """The most items decoded together (with admission)."""

    def compatible(self, a: WorkItem, b: WorkItem) -> bool:
        return a.payload.group == b.payload.group

    def run(self, items: list[WorkItem]) -> None:
        self.batches.append([item.payload.text for item in items])
        self._decode(items)

    def _decode(self, items: list[WorkItem], admit: Admit | None = None, rows: int = 0) -> None:
        for item in items:
            if item.payload.gate is not None:
                item.payload.gate.wait(10)
            if item.payload.crash:
                raise RuntimeError("simulated CUDA error: out of memory")
            if item.payload.bad:
                item.fail(InvalidRequest("that question is malformed"))
        live = [item for item in items if not item.done]
        spelled = Counter[int]()  # words emitted per item (id): a newcomer starts at its first word
        while live:
            if admit is not None and len(live) < rows:
                joined = admit(rows - len(live))
                self.batches[-1].extend(item.payload.text for item in joined)
                live.extend(joined)
                self.widest = max(self.widest, len(live))
            for item in list(live):
                words = item.payload.text.split()
                if item.cancelled:
                    live.remove(item)  # the worker settles it as cancelled
                elif spelled[id(item)] == len(words):
                    item.finish(item.payload.text.upper())
                    live.remove(item)
                else:
                    item.emit(words[spelled[id(item)]])
                    spelled[id(item)] += 1
                    self.produced[item.payload.text] += 1
            delay = max((item.payload.delay for item in live), default=0.0)
            if delay:
                time.sleep(delay)

    def close(self) -> None:
        self.closed += 1


@dataclass
class AdmittingRunner(SpellRunner):
    """Takes queued requests into its running batch between steps (continuous batching), up to ``rows``."""

    rows: int = 3

    def run(self, items: list[WorkItem], *, admit: Admit) -> None:
        self.batches.append([item.payload.text for item in items])
        self._decode(items, admit, self.rows)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (without blocking the loop) until predicate() holds; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-worker-")]


@pytest.fixture
async def make_worker() -> AsyncIterator[Callable[..., EngineWorker]]:
    """Build workers (named test-worker-N); closes them and checks no worker thread is left behind."""
    workers: list[EngineWorker] = []

    def make(factory: Callable[[], object], **kwargs: object) -> EngineWorker:
        options: dict = {"queue_size": 8, "batch_size": 4, "restart_backoff": (0.01, 0.2)} | kwargs
        worker = EngineWorker(factory, name=f"test-worker-{next(_names)}", **options)  # type: ignore[arg-type]
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        await worker.close(timeout=5)
    assert worker_threads() == []


@pytest.fixture
async def spell(make_worker) -> tuple[EngineWorker, SpellRunner]:
    runner = SpellRunner()
    worker = make_worker(lambda: runner)
    await worker.start()
    return worker, runner


async def collect(worker: EngineWorker, job: Job) -> tuple[list[str], object]:
    stream = await worker.submit(job)
    events = [event async for event in stream]
    return events, stream.result


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

LONG = " ".join(f"t{i}" for i in range(200))


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
