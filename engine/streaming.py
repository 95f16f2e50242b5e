"""The bridge between the engine's worker thread and one request's asyncio consumer.

A ``WorkItem`` is what the worker thread (and the runner inside it) sees: the payload, ``emit`` /
``finish`` / ``fail`` to report, and a cancel flag to poll. Every report crosses to the event loop with
``loop.call_soon_threadsafe`` into a per-request ``asyncio.Queue``, so the thread never waits on the loop
and the loop never waits on the thread. ``RequestStream`` is the consumer's side: an async iterator of
the emitted events that ends with the result (``stream.result``) or raises the item's error.

Cancellation is one flag (a ``threading.Event``) set from the loop side when the consumer stops caring:
its task is cancelled (including ``asyncio.timeout``), it calls ``aclose()``/``cancel()``, leaves an
``async with`` block early, or drops the stream (garbage collected). The runner polls the flag between
tokens; the worker drops a cancelled item that is still queued without running it.

The per-request queue is unbounded on purpose: a request's events are bounded by its token budget,
and a bounded queue would force the thread to block on a slow consumer.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from engine.errors import RequestCancelled

_EVENT, _DONE, _ERROR = "event", "done", "error"
_ids = itertools.count(1)

PayloadT = TypeVar("PayloadT")
"""What was submitted (the worker does not look inside)."""
EventT = TypeVar("EventT")
"""What ``emit`` streams (the local engine: ``engine.api.Event``)."""
ResultT = TypeVar("ResultT")
"""What ``finish`` ends with (the local engine: ``engine.api.Answer``)."""


class WorkItem(Generic[PayloadT, EventT, ResultT]):
    """One request as the worker thread sees it. ``emit``/``finish``/``fail`` are thread-safe.

    The first of ``finish``/``fail`` wins; later reports (and events after it) are ignored, so a runner
    and the worker's clean-up can both try to settle an item without racing.
    """

    __slots__ = (
        "payload",
        "id",
        "enqueued_at",
        "started_at",
        "ahead",
        "cancel_event",
        "outcome",
        "_loop",
        "_queue",
        "_lock",
        "_on_cancel",
        "_on_settle",
    )

    def __init__(
        self,
        payload: PayloadT,
        loop: asyncio.AbstractEventLoop,
        *,
        ahead: int = 0,
        on_cancel: Callable[[WorkItem[PayloadT, EventT, ResultT]], None] | None = None,
        on_settle: Callable[[WorkItem[PayloadT, EventT, ResultT]], None] | None = None,
    ) -> None:
        self.payload = payload
        self.id = next(_ids)
        self.enqueued_at = time.monotonic()
        self.started_at: float | None = None
        """When the worker handed it to the runner (monotonic); None while queued."""
        self.ahead = ahead
        """Requests queued or running ahead of this one when it was admitted."""
        self.cancel_event = threading.Event()
        """Set when the consumer gave up; runners poll ``cancelled`` or wait on this (``wait(delay)``)."""
        self.outcome: str | None = None
        """None while pending, then ``done``, ``error`` or ``cancelled``."""
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, EventT | ResultT | BaseException | None]] = asyncio.Queue()
        self._lock = threading.Lock()
        self._on_cancel = on_cancel
        self._on_settle = on_settle
        """Called once, on the settling thread, before the consumer can see the outcome."""

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def queue_wait_s(self) -> float | None:
        """Seconds spent queued before the runner got it (None while still queued)."""
        return None if self.started_at is None else self.started_at - self.enqueued_at

    def emit(self, event: EventT) -> None:
        """Stream one event (e.g. a ``TokenDelta``) to the consumer. Never blocks."""
        with self._lock:
            if self.outcome is None:
                self._post(_EVENT, event)

    def finish(self, result: ResultT | None = None) -> bool:
        """End the stream successfully with ``result``. False if the item was already settled."""
        return self._settle(_DONE, result, "done")

    def fail(self, exc: BaseException) -> bool:
        """End the stream by raising ``exc`` in the consumer. False if the item was already settled."""
        return self._settle(_ERROR, exc, "cancelled" if isinstance(exc, RequestCancelled) else "error")

    def cancel(self) -> None:
        """Ask for the request to stop (idempotent). Queued items are dropped by the worker's hook."""
        if self.cancel_event.is_set():
            return
        self.cancel_event.set()
        if self._on_cancel is not None:
            self._on_cancel(self)

    def _settle(self, kind: str, value: ResultT | BaseException | None, outcome: str) -> bool:
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = outcome
            if self._on_settle is not None:
                self._on_settle(self)
            self._post(kind, value)
            return True

    def _post(self, kind: str, value: EventT | ResultT | BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:
            # The consumer's loop is closed: nobody is listening any more, so stop the work.
            self.cancel_event.set()

    def __repr__(self) -> str:
        return f"<WorkItem #{self.id} {self.outcome or ('cancelled' if self.cancelled else 'pending')}>"


class RequestStream(Generic[PayloadT, EventT, ResultT]):
    """The consumer's side of one request: ``async for event in stream`` then ``stream.result``.

    Raises the request's typed error (``engine.errors``) from the iteration. Use ``async with stream``
    (or ``contextlib.aclosing``) to guarantee the engine stops working on it if the consumer leaves early.
    """

    def __init__(self, item: WorkItem[PayloadT, EventT, ResultT]) -> None:
        self._item = item
        self._finished = False
        self.result: ResultT | None = None
        """The value the runner passed to ``finish``; set once the iteration has ended normally."""

    @property
    def id(self) -> int:
        return self._item.id

    @property
    def ahead(self) -> int:
        """How many requests were queued or running ahead of this one when it was admitted."""
        return self._item.ahead

    @property
    def item(self) -> WorkItem[PayloadT, EventT, ResultT]:
        return self._item

    def __aiter__(self) -> RequestStream[PayloadT, EventT, ResultT]:
        return self

    async def __anext__(self) -> EventT:
        if self._finished:
            raise StopAsyncIteration
        try:
            kind, value = await self._item._queue.get()
        except asyncio.CancelledError:
            # The consuming task was cancelled (or timed out): abort the request in the engine.
            self._finished = True
            self._item.cancel()
            raise
        if kind == _EVENT:
            return cast(EventT, value)
        self._finished = True
        if kind == _DONE:
            self.result = cast("ResultT | None", value)
            raise StopAsyncIteration
        raise cast(BaseException, value)

    def cancel(self) -> None:
        """Stop the request. A consumer still iterating gets ``RequestCancelled`` (or the final result
        if the runner had already finished)."""
        self._item.cancel()

    async def aclose(self) -> None:
        """Stop consuming; the engine aborts the request if it has not finished."""
        if not self._finished:
            self._finished = True
            self._item.cancel()

    async def __aenter__(self) -> RequestStream[PayloadT, EventT, ResultT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without being finished (e.g. `break` out of `async for` in a function that returned):
        # only set the flag here (no locks at GC time); the runner stops and the worker drops it if queued.
        if not self._finished:
            self._item.cancel_event.set()
