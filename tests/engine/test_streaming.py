"""WorkItem and RequestStream: events in order across threads, finish/fail/cancel, how iteration ends."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from engine.errors import GenerationError, RequestCancelled
from engine.streaming import RequestStream, WorkItem


def make_item(**kwargs: object) -> WorkItem[str, int, str]:
    return WorkItem("payload", asyncio.get_running_loop(), **kwargs)  # type: ignore[arg-type]


def in_thread(work: object) -> threading.Thread:
    """Run ``work`` on another thread, as the engine's worker does."""
    thread = threading.Thread(target=work)  # type: ignore[arg-type]
    thread.start()
    return thread


async def test_events_arrive_in_order_then_the_result() -> None:
    item = make_item(ahead=2)
    stream = RequestStream(item)
    assert (stream.id, stream.ahead, stream.item, item.payload) == (item.id, 2, item, "payload")

    def work() -> None:
        for i in range(50):
            item.emit(i)
        assert item.finish("answer")

    thread = in_thread(work)
    assert [event async for event in stream] == list(range(50))
    thread.join()
    assert stream.result == "answer" and item.outcome == "done" and item.done
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()  # an ended stream stays ended


async def test_fail_raises_the_error_to_the_consumer_after_the_events() -> None:
    item = make_item()
    stream = RequestStream(item)
    seen: list[int] = []
    in_thread(lambda: (item.emit(1), item.emit(2), item.fail(GenerationError("boom")))).join()
    with pytest.raises(GenerationError, match="boom"):
        async for event in stream:
            seen.append(event)
    assert seen == [1, 2] and item.outcome == "error" and stream.result is None


async def test_the_first_settlement_wins() -> None:
    settled: list[str | None] = []
    item = make_item(on_settle=lambda it: settled.append(it.outcome))
    stream = RequestStream(item)
    assert item.fail(RequestCancelled("cancelled"))
    assert not item.finish("late") and not item.fail(GenerationError("late"))
    item.emit(99)  # after the end: ignored
    with pytest.raises(RequestCancelled):
        await stream.__anext__()
    assert item.outcome == "cancelled" and settled == ["cancelled"]  # on_settle ran once, before the consumer


async def test_cancel_sets_the_flag_once_and_calls_the_hook() -> None:
    hooked: list[WorkItem[str, int, str]] = []
    item = make_item(on_cancel=hooked.append)
    stream = RequestStream(item)
    assert not item.cancelled
    stream.cancel()
    stream.cancel()
    assert item.cancelled and item.cancel_event.is_set() and hooked == [item]
    item.fail(RequestCancelled("cancelled"))  # what the runner or worker does on seeing the flag
    with pytest.raises(RequestCancelled):
        await stream.__anext__()


async def test_a_cancelled_consumer_task_cancels_the_request() -> None:
    item = make_item()
    stream = RequestStream(item)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await stream.__anext__()  # nothing is ever emitted
    assert item.cancelled
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


async def test_leaving_early_cancels_but_a_finished_stream_is_left_alone() -> None:
    item = make_item()
    item.emit(1)
    item.emit(2)
    async with RequestStream(item) as stream:
        async for _ in stream:
            break
    assert item.cancelled

    done = make_item()
    done.finish("answer")
    async with RequestStream(done) as stream:
        assert [event async for event in stream] == []
    assert not done.cancelled and stream.result == "answer"


async def test_aclose_and_dropping_the_stream_cancel() -> None:
    closed, dropped = make_item(), make_item()
    await RequestStream(closed).aclose()
    assert closed.cancelled
    stream = RequestStream(dropped)
    del stream
    gc.collect()
    assert dropped.cancel_event.is_set()


def test_reports_after_the_loop_closed_stop_the_work() -> None:
    loop = asyncio.new_event_loop()
    item: WorkItem[str, int, str] = WorkItem("payload", loop)
    loop.close()
    item.emit(1)  # nobody listens any more
    assert item.cancelled and item.queue_wait_s is None
