"""Consume ``engine.generate`` and show it: throttled streaming edits, one final message, every failure handled.

A *sink* is where an answer goes: an interaction (slash command: edit the deferred response, followups)
or a channel (thread follow-ups, and the fallback when the 15-minute interaction token runs out). The
runner is the same for both:

* edits at most once per ``stream_edit_interval_s`` while tokens arrive, and always one final edit;
* a wall-time cap; past it the request is aborted in the engine;
* the message deleted (or thread gone) mid-stream: the engine request is aborted, nothing is raised;
* engine errors become their ``user_message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import discord

from bot import formatting, limits
from bot.errors import AnswerTimedOut, is_gone
from bot.formatting import Page
from engine.api import Answer, AnswerRequest, Engine, Event, LeadFound, TokenDelta
from engine.errors import EngineError, GenerationError, RequestCancelled
from knowledge.lead import Lead

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()


class SinkGone(Exception):
    """The message or channel the answer was being written to no longer exists."""


class AnswerSink(Protocol):
    async def preview(self, text: str) -> None:
        """Show the text so far. Raises :class:`SinkGone` when the target vanished."""
        ...

    async def deliver(self, pages: Sequence[Page], view: discord.ui.View | None) -> discord.Message | None:
        """Send the final answer; return the message carrying ``view`` (None if it could not be sent)."""
        ...

    async def fail(self, text: str) -> None:
        """Tell the user the answer failed (privately where possible)."""
        ...


class ChannelSink:
    """Writes into a channel or thread: a placeholder message edited while streaming, then the answer."""

    def __init__(self, channel: discord.abc.Messageable, *, reply_to: discord.Message | None = None) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.message: discord.Message | None = None

    async def _send(
        self, page: Page, view: discord.ui.View | None = None, *, first: bool = False
    ) -> discord.Message:
        kwargs: dict = {"content": page.content, "embeds": page.embeds, "allowed_mentions": NO_MENTIONS}
        if view is not None:
            kwargs["view"] = view
        if first and self.reply_to is not None:
            kwargs["reference"] = self.reply_to.to_reference(fail_if_not_exists=False)
            kwargs["mention_author"] = False
        return await self.channel.send(**kwargs)

    async def preview(self, text: str) -> None:
        content = formatting.stream_preview(text)
        try:
            if self.message is None:
                self.message = await self._send(Page(content=content), first=True)
            else:
                await self.message.edit(content=content, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            if is_gone(exc):
                raise SinkGone from exc
            raise

    async def deliver(self, pages: Sequence[Page], view: discord.ui.View | None) -> discord.Message | None:
        carrier: discord.Message | None = None
        try:
            for i, page in enumerate(pages):
                if i == 0 and self.message is not None:
                    edit_kwargs: dict = {
                        "content": page.content,
                        "embeds": page.embeds,
                        "allowed_mentions": NO_MENTIONS,
                    }
                    if view is not None:
                        edit_kwargs["view"] = view
                    carrier = await self.message.edit(**edit_kwargs)
                else:
                    sent = await self._send(page, view if i == 0 else None, first=i == 0)
                    carrier = carrier or sent
        except discord.HTTPException as exc:
            if not is_gone(exc):
                raise
            log.info("answer target vanished before the final message: %s", exc)
        return carrier

    async def fail(self, text: str) -> None:
        try:
            if self.message is not None:
                await self.message.edit(content=text, embeds=[], allowed_mentions=NO_MENTIONS)
            else:
                await self._send(Page(content=text), first=True)
        except discord.HTTPException as exc:
            if not is_gone(exc):
                raise


class InteractionSink:
    """Writes through a deferred interaction; falls back to a channel message when its token runs out."""

    def __init__(self, interaction: discord.Interaction, clock: limits.Clock) -> None:
        self.interaction = interaction
        self.clock = clock
        self.fallback: ChannelSink | None = None

    def _token_ok(self) -> bool:
        return limits.token_usable(self.interaction, self.clock)

    def _channel_sink(self) -> ChannelSink:
        if self.fallback is None:
            channel = self.interaction.channel
            if not isinstance(channel, discord.abc.Messageable):
                raise SinkGone("interaction has no channel to fall back to")
            self.fallback = ChannelSink(channel)
        return self.fallback

    async def preview(self, text: str) -> None:
        if not self._token_ok():
            return  # no more streaming edits; the final answer goes to the channel
        try:
            await self.interaction.edit_original_response(
                content=formatting.stream_preview(text), allowed_mentions=NO_MENTIONS
            )
        except discord.HTTPException as exc:
            if is_gone(exc) and self._token_ok():
                raise SinkGone from exc
            if not is_gone(exc):
                raise

    async def deliver(self, pages: Sequence[Page], view: discord.ui.View | None) -> discord.Message | None:
        if self._token_ok():
            try:
                return await self._deliver_by_token(pages, view)
            except discord.HTTPException as exc:
                if not is_gone(exc):
                    raise
                if self._token_ok():  # the response message was deleted: nothing to answer into
                    log.info("answer message deleted before the final edit: %s", exc)
                    return None
        return await self._deliver_to_channel(pages, view)

    async def _deliver_by_token(self, pages: Sequence[Page], view: discord.ui.View | None) -> discord.Message:
        first, *rest = pages
        kwargs: dict = {"content": first.content, "embeds": first.embeds, "allowed_mentions": NO_MENTIONS}
        if view is not None:
            kwargs["view"] = view
        carrier = await self.interaction.edit_original_response(**kwargs)
        try:
            for page in rest:
                await self.interaction.followup.send(
                    content=page.content or discord.utils.MISSING,
                    embeds=page.embeds,
                    allowed_mentions=NO_MENTIONS,
                    wait=True,
                )
        except discord.HTTPException as exc:  # the first part (with the buttons) is out: keep it
            if not is_gone(exc):
                raise
            log.info("could not post the rest of an answer: %s", exc)
        return carrier

    async def _deliver_to_channel(
        self, pages: Sequence[Page], view: discord.ui.View | None
    ) -> discord.Message | None:
        """The token expired: post in the channel, naming (not pinging) who asked."""
        user = self.interaction.user
        first = pages[0]
        note = f"Answer for {user.mention} (the original reply timed out):"
        pages = [
            Page(content=note if not first.content else f"{note}\n{first.content}", embeds=first.embeds),
            *pages[1:],
        ]
        return await self._channel_sink().deliver(pages, view)

    async def fail(self, text: str) -> None:
        """Replace the public "thinking" placeholder by a private note."""
        if not self._token_ok():
            return
        try:
            await self.interaction.delete_original_response()
        except discord.HTTPException as exc:
            if not is_gone(exc):
                log.warning("could not remove the placeholder: %s", exc)
        try:
            await self.interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            if not is_gone(exc):
                raise


Status = Literal["answered", "gone", "timeout", "error"]


@dataclass(slots=True)
class Outcome:
    status: Status
    answer: Answer | None = None
    message: discord.Message | None = None
    """The message carrying the answer's buttons (None when it could not be posted)."""
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    streaming: bool
    edit_interval_s: float
    timeout_s: float
    clock: limits.Clock


async def _close(events: AsyncIterator[Event]) -> None:
    """Closing the generator aborts the request in the engine (a no-op when it already finished)."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _consume(events: AsyncIterator[Event], sink: AnswerSink, policy: StreamPolicy) -> Answer:
    """The engine's answer. A streaming reply shows the deciding rule as soon as it is found, then how far
    the explanation has got (at most one edit per ``edit_interval_s``). The prose itself is not previewed:
    it is shown only if it passes the support check, so nothing a user reads is taken back."""
    lead: Lead | None = None
    words = 0
    last_edit: float | None = None
    async for event in events:
        if isinstance(event, Answer):
            return event
        if not policy.streaming:
            continue
        if isinstance(event, LeadFound):
            lead = event.lead
        elif isinstance(event, TokenDelta):
            words += len(event.text.split())
        now = policy.clock.monotonic()
        if last_edit is None or now - last_edit >= policy.edit_interval_s:
            last_edit = now
            await sink.preview(formatting.progress_preview(lead, words))
    raise GenerationError("the engine finished without an answer")


async def run_answer(
    engine: Engine,
    request: AnswerRequest,
    sink: AnswerSink,
    policy: StreamPolicy,
    *,
    view: discord.ui.View | None = None,
    title: str | None = None,
) -> Outcome:
    """Generate one answer into ``sink``; never raises for expected failures (see the module doc)."""
    events = engine.generate(request)
    try:
        async with asyncio.timeout(policy.timeout_s):
            answer = await _consume(events, sink, policy)
    except TimeoutError:
        await _close(events)
        log.warning("answer timed out after %.0f s (session %s)", policy.timeout_s, request.session_id)
        await sink.fail(AnswerTimedOut.user_message)
        return Outcome("timeout")
    except SinkGone:
        await _close(events)
        log.info("answer target vanished mid-stream; request aborted (session %s)", request.session_id)
        return Outcome("gone")
    except RequestCancelled as exc:
        return Outcome("gone", error=exc)
    except EngineError as exc:
        await _close(events)
        await sink.fail(exc.user_message)
        return Outcome("error", error=exc)
    finally:
        await _close(events)
    pages = formatting.answer_pages(answer, title=title)
    message = await sink.deliver(pages, view)
    return Outcome("answered" if message is not None else "gone", answer=answer, message=message)
