"""A worker test kit: ``SpellRunner`` spells out text token by token as a generator would (batched, step by
step, polling the cancel flag), and fixtures that build ``EngineWorker``s and check no thread is left behind.
Shared by test_worker.py and test_worker_supervision.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from engine.errors import InvalidRequest
from engine.streaming import WorkItem
from engine.worker import Admit, EngineWorker

_names = itertools.count()
LONG = " ".join(f"t{i}" for i in range(200))
"""An answer long enough to be stopped part-way."""


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
