"""The stream runner on its own: throttling, final delivery, caps, aborts and error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import discord
import pytest

from bot import errors
from bot.formatting import Page
from bot.streaming import SinkGone, StreamPolicy, run_answer
from engine.api import AnswerRequest
from engine.errors import EngineDead, EngineOverloaded, GenerationError, InvalidRequest, RequestCancelled
from knowledge.errors import UnknownCard, UnknownRule
from tests.bot.harness import http_error

REQUEST = AnswerRequest("How does trample work?", session_id="s1")


class RecordingSink:
    """Where answers go, recorded (the Discord side is covered by the harness tests)."""

    def __init__(self, gone_after: int | None = None) -> None:
        self.previews: list[str] = []
        self.delivered: list[Page] = []
        self.failures: list[str] = []
        self.gone_after = gone_after

    async def preview(self, text: str) -> None:
        if self.gone_after is not None and len(self.previews) >= self.gone_after:
            raise SinkGone
        self.previews.append(text)

    async def deliver(self, pages: Sequence[Page], view: discord.ui.View | None) -> discord.Message | None:
        self.delivered.extend(pages)
        return object()  # type: ignore[return-value]

    async def fail(self, text: str) -> None:
        self.failures.append(text)


def policy(clock, *, streaming: bool = True, interval: float = 1.0, timeout: float = 30.0) -> StreamPolicy:
    return StreamPolicy(streaming=streaming, edit_interval_s=interval, timeout_s=timeout, clock=clock)


@pytest.mark.parametrize(("step", "expected"), [(0.1, 3), (0.5, 15), (1.0, 30), (2.0, 30)])
async def test_previews_at_most_once_per_interval(engine, clock, step, expected):
    engine.answer_text = " ".join(f"w{i}" for i in range(30))
    engine.token_step_s = step
    sink = RecordingSink()
    outcome = await run_answer(engine, REQUEST, sink, policy(clock))
    assert outcome.status == "answered" and outcome.answer.text == engine.answer_text
    assert len(sink.previews) == expected + 1  # the deciding rule at once, then the progress edits
    description = sink.delivered[0].embeds[0].description
    assert description.startswith(f"**CR {outcome.answer.lead.passage.citation.id} ")  # the lead comes first
    assert engine.answer_text in description


async def test_previews_show_the_lead_at_once_and_never_the_unchecked_prose(engine, clock):
    engine.answer_text = "Unchecked prose that might be wrong."
    engine.token_step_s = 1.0
    sink = RecordingSink()
    await run_answer(engine, REQUEST, sink, policy(clock))
    assert sink.delivered and "**CR " in sink.previews[0] and "Writing an explanation" in sink.previews[0]
    assert all("Unchecked" not in preview and "might be wrong" not in preview for preview in sink.previews)


async def test_non_streaming_sends_only_the_final_answer(engine, clock):
    engine.token_step_s = 1.0
    sink = RecordingSink()
    outcome = await run_answer(engine, REQUEST, sink, policy(clock, streaming=False))
    assert outcome.status == "answered" and sink.previews == [] and len(sink.delivered) == 1


async def test_vanished_target_aborts_the_request(engine, clock):
    engine.token_step_s = 1.0
    sink = RecordingSink(gone_after=2)
    outcome = await run_answer(engine, REQUEST, sink, policy(clock))
    assert outcome.status == "gone" and engine.cancelled == [REQUEST]
    assert sink.delivered == [] and sink.failures == []


async def test_timeout_aborts_and_tells_the_user(engine, clock):
    engine.gate = asyncio.Event()
    sink = RecordingSink()
    outcome = await run_answer(engine, REQUEST, sink, policy(clock, timeout=0.02))
    assert outcome.status == "timeout" and engine.cancelled == [REQUEST]
    assert sink.failures == [errors.AnswerTimedOut.user_message]


async def test_cancelling_the_consumer_aborts_the_request(engine, clock):
    engine.gate = asyncio.Event()
    task = asyncio.create_task(run_answer(engine, REQUEST, RecordingSink(), policy(clock)))
    while not engine.requests:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.cancelled == [REQUEST]


async def test_engine_errors_are_reported_not_raised(engine, clock):
    engine.fail_with = EngineOverloaded(3)
    sink = RecordingSink()
    outcome = await run_answer(engine, REQUEST, sink, policy(clock))
    assert outcome.status == "error" and sink.failures == [EngineOverloaded(3).user_message]


async def test_request_cancelled_by_the_engine_is_quiet(engine, clock):
    engine.fail_with = RequestCancelled()
    sink = RecordingSink()
    outcome = await run_answer(engine, REQUEST, sink, policy(clock))
    assert outcome.status == "gone" and sink.failures == []


async def test_engine_that_never_answers_is_a_generation_error(clock):
    class Silent:
        async def generate(self, request):
            return
            yield

    sink = RecordingSink()
    outcome = await run_answer(Silent(), REQUEST, sink, policy(clock))  # type: ignore[arg-type]
    assert outcome.status == "error" and sink.failures == [GenerationError.user_message]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EngineDead(), EngineDead.user_message),
        (InvalidRequest("Too long."), "Too long."),
        (UnknownRule("1.2", ["1.1"]), "There is no rule 1.2 in the Comprehensive Rules. Nearest: 1.1."),
        (UnknownCard("X", []), "No card named “X”."),
        (errors.AnswerTimedOut(), errors.AnswerTimedOut.user_message),
        (RuntimeError("internal detail"), errors.GENERIC_MESSAGE),
    ],
)
def test_user_messages(error, expected):
    assert errors.user_message(error) == expected


def test_wrapped_errors_are_unwrapped():
    async def callback(interaction: discord.Interaction) -> None: ...

    command = discord.app_commands.Command(name="x", description="x", callback=callback)
    wrapped = discord.app_commands.CommandInvokeError(command, EngineDead())
    assert errors.user_message(wrapped) == EngineDead.user_message


def test_gone_errors():
    assert errors.is_gone(http_error(404, 10008, "Unknown Message"))
    assert errors.is_gone(http_error(401, 50027, "Invalid Webhook Token"))
    assert not errors.is_gone(http_error(403, 50013, "Missing Permissions"))
    assert not errors.is_gone(http_error(500, 0, "Server error"))
    assert not errors.is_gone(ValueError())
