"""Driving a runner as the worker does, without the worker thread: ``WorkItem``s made on the running loop,
then each item's stream read back as its consumer would (events, then the answer or the error)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.api import AnswerRequest
from engine.pipeline import validate_request
from engine.streaming import RequestStream, WorkItem


class Payload:
    """What ``LocalEngine`` submits to its worker: the validated request and when it was submitted."""

    def __init__(self, request: AnswerRequest) -> None:
        self.request = request
        self.submitted_at = time.perf_counter()


def items_for(*requests: AnswerRequest, max_new_tokens: int = 12) -> list[WorkItem]:
    loop = asyncio.get_running_loop()
    return [WorkItem(Payload(validate_request(r, max_new_tokens)), loop) for r in requests]


async def drain(item: WorkItem) -> tuple[list[Any], Any]:
    """Everything the item's consumer sees: its events, then the answer or the error."""
    events: list[Any] = []
    stream = RequestStream(item)
    try:
        async for event in stream:
            events.append(event)
    except BaseException as exc:  # noqa: BLE001 - the item's error is what the test looks at
        return events, exc
    return events, stream.result
