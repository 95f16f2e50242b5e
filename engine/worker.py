"""The engine worker: one dedicated thread that owns the model, fed by a bounded admission queue.

Everything slow (model load, prefill, decoding) runs in this thread; the event loop only enqueues
requests and reads their streams (``engine.streaming``). The worker knows nothing about models: it runs
whatever ``Runner`` its factory builds, in batches.

Admission control happens before queueing (vLLM style): a full queue answers ``EngineOverloaded`` at
once with how many requests are ahead; a worker that is not serving (starting, restarting after a crash,
failed, closed) answers ``EngineDead`` at once. There is never an unbounded backlog: at most
``queue_size`` requests wait and at most ``batch_size`` run.

Supervision (Red-DiscordBot style): if ``runner.run`` raises (CUDA error, out of memory, a bug), every
request of that batch fails with ``GenerationError``, every queued request fails with ``EngineDead``
(failing them fast beats holding users through a model reload that may itself fail), the runner is
discarded and the factory is called again after an exponential backoff, for as long as it takes. A
request failed by the runner itself (``item.fail``) affects only that request. If the factory fails on
the very first start, ``start()`` raises that error and the worker stops: a missing model should stop
the program with one clear line, not retry forever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from engine.errors import EngineDead, EngineOverloaded, GenerationError, RequestCancelled
from engine.streaming import RequestStream, WorkItem

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Processes batches in the worker thread. Built by the worker's ``runner_factory`` in that thread.

    ``run`` must settle each item (``finish`` or ``fail``) and should poll ``item.cancelled`` between
    steps; items it leaves unsettled are failed for it. Raising from ``run`` counts as a crash of the
    whole runner. Optional methods, used when present: ``compatible(a, b) -> bool`` (may ``b`` share a
    batch led by ``a``; default: any item may) and ``close() -> None`` (free the model when discarded).
    A ``run(items, *, admit)`` may take more requests while it runs (see ``Admit``); it settles those too.
    """

    def run(self, items: list[WorkItem]) -> None: ...


Admit = Callable[[int], list[WorkItem]]
"""``admit(n)``: up to ``n`` more queued requests for the running batch (compatible with its leader, already
counted in flight); ``[]`` when none wait or the worker is closing. Passed to a runner whose ``run`` takes an
``admit`` keyword, so requests that arrive mid-batch join it between decode steps instead of waiting for
the whole batch to end (continuous batching)."""


class WorkerState(StrEnum):
    STOPPED = "stopped"
    """Not started yet."""
    STARTING = "starting"
    """The first runner is loading."""
    READY = "ready"
    RESTARTING = "restarting"
    """A crash or failed reload; waiting out the backoff or reloading the runner."""
    FAILED = "failed"
    """The first load failed, or the thread died; nothing will be served."""
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    state: WorkerState
    alive: bool
    """True when new requests are admitted (state is READY)."""
    restarts: int
    """Runner reloads attempted after a crash or a failed reload."""
    consecutive_failures: int
    """Crashes and failed reloads since the last batch that completed; drives the backoff."""
    backoff_s: float
    """The current (or last) restart delay; 0 once a batch completes after a restart."""
    last_error: str | None
    queue_depth: int
    queue_capacity: int
    in_flight: int
    batch_size: int
    processed: int
    """Requests finished successfully."""
    failed: int
    cancelled: int
    batches: int


class EngineWorker:
    """A supervised worker thread running batches of requests through a ``Runner``.

    ``await start()`` before submitting; ``await close()`` when done. ``submit`` and ``run`` must be
    called from a running event loop (any loop: each request remembers its own).
    """

    def __init__(
        self,
        runner_factory: Callable[[], Runner],
        *,
        queue_size: int,
        batch_size: int,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        name: str = "hexcore-engine",
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        base, cap = restart_backoff
        if not 0 < base <= cap:
            raise ValueError("restart_backoff must be (base, cap) with 0 < base <= cap")
        self._factory = runner_factory
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._backoff_base, self._backoff_cap = base, cap
        self._name = name

        # One condition guards every field below; it is never held while a runner runs.
        self._cond = threading.Condition()
        self._queue: deque[WorkItem] = deque()
        self._in_flight: list[WorkItem] = []
        self._state = WorkerState.STOPPED
        self._closing = False
        self._drain = False
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._restarts = 0
        self._consecutive_failures = 0
        self._backoff_s = 0.0
        self._last_error: str | None = None
        self._counts = {"done": 0, "error": 0, "cancelled": 0}
        self._counts_lock = threading.Lock()
        self._batches = 0

    # ---- lifecycle (event loop side) ----

    async def start(self) -> None:
        """Start the thread and wait until the first runner is built; raises the factory's error."""
        with self._cond:
            if self._closing:
                raise EngineDead("the engine worker is closed")
            if self._thread is None:
                self._state = WorkerState.STARTING
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
        # shield: a cancelled start() must not cancel the shared readiness future.
        await asyncio.shield(asyncio.wrap_future(self._ready))

    async def close(self, *, drain: bool = False, timeout: float | None = 30.0) -> None:
        """Stop admitting, then stop the thread and join it (idempotent).

        ``drain=False`` fails queued and running requests with ``EngineDead`` at once and flags the
        running ones cancelled so the runner stops; ``drain=True`` lets them all finish first. The join
        runs off the loop; a runner stuck past ``timeout`` is left behind (the thread is a daemon).
        """
        queued: list[WorkItem] = []
        with self._cond:
            if not self._closing:
                self._closing = True
                self._drain = drain
                if not drain:
                    queued = list(self._queue)
                    self._queue.clear()
                    for item in self._in_flight:
                        # Answer the consumer now (first settle wins) and make the runner stop.
                        item.fail(EngineDead("the engine shut down before finishing this answer"))
                        item.cancel_event.set()
                if self._thread is None:
                    self._state = WorkerState.CLOSED
                self._cond.notify_all()
            thread = self._thread
        for item in queued:
            item.fail(EngineDead("the engine is shutting down"))
        if thread is not None and thread is not threading.current_thread():
            await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive():
                log.warning(
                    "engine worker %r did not stop within %ss; leaving it (daemon)", self._name, timeout
                )

    # ---- requests (event loop side) ----

    async def submit(self, payload: Any) -> RequestStream:
        """Admit ``payload`` and return its stream, or raise at once.

        Raises ``EngineOverloaded(ahead)`` when the queue is full and ``EngineDead`` when the worker is
        not serving. Nothing here blocks: the worker holds the lock only for queue bookkeeping (and the
        runner's ``compatible`` checks), never while a batch runs.
        """
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closing or self._state is not WorkerState.READY or not self._thread_alive():
                raise EngineDead(self._not_serving_reason())
            ahead = len(self._queue) + len(self._in_flight)
            if len(self._queue) >= self._queue_size:
                raise EngineOverloaded(ahead=ahead)
            item = WorkItem(payload, loop, ahead=ahead, on_cancel=self._drop_if_queued, on_settle=self._count)
            self._queue.append(item)
            self._cond.notify()
        return RequestStream(item)

    async def stream(self, payload: Any) -> AsyncIterator[Any]:
        """``submit`` as one async generator: yields the events; closing it aborts the request."""
        async with await self.submit(payload) as stream:
            async for event in stream:
                yield event

    async def run(self, payload: Any) -> Any:
        """Submit, wait for the end, and return the runner's result (events are discarded)."""
        async with await self.submit(payload) as stream:
            async for _ in stream:
                pass
            return stream.result

    def status(self) -> WorkerStatus:
        with self._counts_lock:
            counts = dict(self._counts)
        with self._cond:
            return WorkerStatus(
                state=self._state,
                alive=self._state is WorkerState.READY and not self._closing,
                restarts=self._restarts,
                consecutive_failures=self._consecutive_failures,
                backoff_s=self._backoff_s,
                last_error=self._last_error,
                queue_depth=len(self._queue),
                queue_capacity=self._queue_size,
                in_flight=len(self._in_flight),
                batch_size=self._batch_size,
                processed=counts["done"],
                failed=counts["error"],
                cancelled=counts["cancelled"],
                batches=self._batches,
            )

    @property
    def alive(self) -> bool:
        return self.status().alive

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _not_serving_reason(self) -> str:
        if self._closing or self._state is WorkerState.CLOSED:
            return "the engine is shut down"
        if self._state is WorkerState.STOPPED:
            return "the engine has not been started"
        if self._state is WorkerState.STARTING:
            return "the engine is still starting"
        if self._state is WorkerState.RESTARTING:
            return f"the engine is restarting after an error ({self._last_error})"
        return f"the engine is down ({self._last_error})"

    def _drop_if_queued(self, item: WorkItem) -> None:
        """Cancel hook: a cancelled request that has not started leaves the queue at once."""
        with self._cond:
            try:
                self._queue.remove(item)
            except ValueError:
                return  # running (the runner sees the flag) or already settled
        item.fail(RequestCancelled("cancelled before it started"))

    def _count(self, item: WorkItem) -> None:
        """Tally an item as it settles (``on_settle``: exactly once, before its consumer sees the outcome)."""
        # Its own lock: the item's lock is held here, and close() settles items while holding _cond.
        with self._counts_lock:
            self._counts[item.outcome] += 1

    # ---- the thread ----

    def _main(self) -> None:
        try:
            self._supervise()
        except BaseException as exc:  # a bug in the worker itself, or SystemExit in the thread
            log.critical("engine worker %r died", self._name, exc_info=exc)
            with self._cond:
                self._last_error = f"worker thread died: {type(exc).__name__}: {exc}"
        finally:
            with self._cond:
                self._state = WorkerState.CLOSED if self._closing else WorkerState.FAILED
                leftovers = list(self._in_flight) + list(self._queue)
                self._in_flight, reason = [], self._not_serving_reason()
                self._queue.clear()
            for item in leftovers:
                item.fail(EngineDead(reason))
            self._resolve_ready(EngineDead(reason))

    def _supervise(self) -> None:
        first = True
        while True:
            with self._cond:
                if self._closing:
                    return
                if not first:
                    self._restarts += 1
            try:
                runner = self._factory()
            except Exception as exc:
                self._record_failure(exc, "loading the runner failed")
                if first:
                    self._resolve_ready(exc)
                    return
                self._backoff_wait()
                continue
            try:
                with self._cond:
                    if self._closing:
                        return
                    self._state = WorkerState.READY
                first = False
                self._resolve_ready(None)
                try:
                    self._serve(runner)
                    return  # closing
                except Exception as exc:
                    self._crashed(exc)
                    self._backoff_wait()
            finally:
                close = getattr(runner, "close", None)
                if callable(close):
                    try:
                        close()
                    except Exception:
                        log.exception("closing the engine runner failed")
                del runner

    def _serve(self, runner: Runner) -> None:
        compatible = getattr(runner, "compatible", None)
        takes_admit = "admit" in inspect.signature(runner.run).parameters
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing and not (self._drain and self._queue):
                    return
                batch, dropped = self._take_batch(compatible, self._batch_size)
                self._in_flight = batch
            for item in dropped:
                item.fail(RequestCancelled("cancelled before it started"))
            if not batch:
                continue
            if takes_admit:
                runner.run(batch, admit=functools.partial(self._admit, batch[0], compatible))
            else:
                runner.run(batch)  # a raise here is a crash: _supervise handles the batch
            with self._cond:
                batch = list(self._in_flight)  # with the requests admitted while it ran
            for item in batch:
                if item.cancelled:
                    item.fail(RequestCancelled("cancelled"))
                else:  # a no-op when the runner settled it, as it should
                    item.fail(GenerationError("the engine returned no answer for this request"))
            with self._cond:
                self._in_flight = []
                self._batches += 1
                self._consecutive_failures = 0
                self._backoff_s = 0.0

    def _admit(
        self, leader: WorkItem, compatible: Callable[[WorkItem, WorkItem], bool] | None, n: int
    ) -> list[WorkItem]:
        """``Admit`` for the batch led by ``leader`` (called from the runner, in this thread)."""
        with self._cond:
            if n < 1 or not self._queue or (self._closing and not self._drain):
                return []
            more, dropped = self._take_batch(compatible, n, leader=leader)
            self._in_flight.extend(more)
        for item in dropped:
            item.fail(RequestCancelled("cancelled before it started"))
        return more

    def _take_batch(
        self,
        compatible: Callable[[WorkItem, WorkItem], bool] | None,
        limit: int,
        leader: WorkItem | None = None,
    ) -> tuple[list[WorkItem], list[WorkItem]]:
        """Called with the lock held: up to ``limit`` items compatible with ``leader`` (default: the oldest
        queued, which then leads), in queue order; and the cancelled ones met on the way."""
        batch: list[WorkItem] = []
        dropped: list[WorkItem] = []
        for item in self._queue:
            if len(batch) >= limit:
                break
            if item.cancelled:
                dropped.append(item)
            elif leader is None and not batch:
                batch.append(item)
            elif compatible is None or compatible(leader or batch[0], item):
                batch.append(item)
        taken = {id(item) for item in batch} | {id(item) for item in dropped}
        self._queue = deque(item for item in self._queue if id(item) not in taken)
        now = time.monotonic()
        for item in batch:
            item.started_at = now
        return batch, dropped

    def _crashed(self, exc: Exception) -> None:
        summary = f"{type(exc).__name__}: {exc}"
        self._record_failure(exc, "the runner crashed")
        with self._cond:
            in_flight, self._in_flight = self._in_flight, []
            queued = list(self._queue)
            self._queue.clear()
        for item in in_flight:
            error = GenerationError(f"the engine crashed while answering ({summary}); it is restarting")
            error.__cause__ = exc
            item.fail(error)
        for item in queued:
            item.fail(EngineDead(f"the engine crashed ({summary}) and is restarting"))

    def _record_failure(self, exc: Exception, what: str) -> None:
        with self._cond:
            self._consecutive_failures += 1
            self._last_error = f"{what}: {type(exc).__name__}: {exc}"
            starting = self._state is WorkerState.STARTING
            self._state = WorkerState.FAILED if starting else WorkerState.RESTARTING
        log.error("engine worker %r: %s", self._name, self._last_error, exc_info=exc)

    def _backoff_wait(self) -> None:
        """Sleep base * 2**(failures-1), capped; close() interrupts it."""
        with self._cond:
            delay = min(self._backoff_base * 2 ** (self._consecutive_failures - 1), self._backoff_cap)
            self._backoff_s = delay
            deadline = time.monotonic() + delay
            while not self._closing and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)

    def _resolve_ready(self, error: BaseException | None) -> None:
        if self._ready.done():
            return
        try:
            if error is None:
                self._ready.set_result(None)
            else:
                self._ready.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass
