"""The bot's one answer flow: admission, the streamed answer, what is remembered of it, follow-up threads.

``HexcoreBot`` builds one :class:`AnswerService` (``bot.answers``); the answers cog (slash commands and
the answer buttons), the threads cog (follow-up messages, thread lifecycle) and the feedback cog
(``/forgetme``) call it and hold no answer state of their own.

* **Admission**: the engine alive and not full, then the user's lock and cooldown (``bot.gate``); a
  refusal is a message for the user, and the user's slot is held until the answer is done.
* **Responding**: the answer is streamed into Discord (``bot.streaming``) with the answer buttons, then
  remembered (message id -> :class:`AnswerRecord`, bounded) and stored in the background.
* **Sessions**: an answer's engine session id is its message id, which is also the id of a thread later
  opened from it, so a follow-up thread continues that very session (and the engine's KV cache). Threads
  the bot opened are kept in memory (bounded); after a restart a thread the bot owns is still recognised
  and continues with ``session_id = thread id`` (the engine keeps conversations on disk).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import discord
from cachetools import Cache, LRUCache

from bot import formatting, limits
from bot.errors import send_ephemeral
from bot.streaming import AnswerSink, ChannelSink, InteractionSink, Outcome, StreamPolicy, run_answer
from bot.views import AnswerView
from engine.api import AnswerRequest, Expert
from engine.errors import EngineDead, EngineError, EngineOverloaded

if TYPE_CHECKING:
    from bot.limits import Clock, UserGate
    from bot.storage import FeedbackStore
    from bot.tasks import BackgroundTasks
    from engine.api import Engine
    from hexcore.settings import Settings

log = logging.getLogger(__name__)

RECORDS_KEPT = 4096
"""Recent answers remembered in memory (message id -> session, question) for opening threads."""
THREADS_KEPT = 10_000
"""Threads the bot opened, remembered in memory (thread id -> engine session)."""
THREAD_ALREADY_CREATED = 160004
INTRO = "Ask your follow-up questions here: I keep the context of the answer above."
NO_MENTIONS = discord.AllowedMentions.none()


class AnswerHost(Protocol):
    """What the service uses of the bot (``bot.client.HexcoreBot``; a Protocol keeps the import one-way).

    ``store`` is read at each answer: it may be None (nothing stored) or replaced while running.
    """

    engine: Engine
    settings: Settings
    store: FeedbackStore | None
    clock: Clock
    gate: UserGate
    background: BackgroundTasks

    @property
    def user(self) -> discord.ClientUser | None: ...


@dataclass(frozen=True, slots=True)
class AnswerRecord:
    answer_id: str
    session_id: str | None
    question: str
    user_id: int


@dataclass(frozen=True, slots=True)
class Where:
    """Who asked where, as the answer is stored (``command``: the slash command, or ``thread``)."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    command: str


class AnswerService:
    def __init__(self, host: AnswerHost) -> None:
        self.host = host
        self.records: LRUCache[int, AnswerRecord] = LRUCache(RECORDS_KEPT)
        """Answer message id -> what was asked, for opening threads on it."""
        self.sessions: LRUCache[int, str] = LRUCache(THREADS_KEPT)
        """Thread id -> engine session id, for threads the bot opened."""
        self.threads_enabled = False
        """Whether follow-ups in threads are answered: set by the threads cog while it is loaded (an extension
        may fail to load), so no thread is opened whose questions nobody would answer."""

    # ------------------------------------------------------------------------------- admission

    @contextlib.contextmanager
    def admission(self, user_id: int) -> Iterator[str | None]:
        """Yield None when the question may start (the user's slot is held until exit), else why not."""
        status = self.host.engine.status()
        if not status.alive:
            yield EngineDead.user_message
            return
        if status.queue_depth >= status.queue_capacity:
            yield EngineOverloaded(status.queue_depth).user_message
            return
        rejection = self.host.gate.try_acquire(user_id)
        if rejection is not None:
            yield rejection.message
            return
        try:
            yield None
        finally:
            self.host.gate.release(user_id)

    def policy(self) -> StreamPolicy:
        cfg = self.host.settings.bot
        return StreamPolicy(
            streaming=cfg.streaming,
            edit_interval_s=cfg.stream_edit_interval_s,
            timeout_s=cfg.answer_timeout_s,
            clock=self.host.clock,
        )

    def request(
        self, question: str, experts: tuple[Expert, ...] | None, session_id: str | None, user_id: int
    ) -> AnswerRequest:
        max_tokens = min(self.host.settings.engine.max_new_tokens, limits.MAX_ANSWER_TOKENS)
        return AnswerRequest(question, experts, session_id, max_tokens, str(user_id))

    # -------------------------------------------------------------------------------- the flows

    async def answer_interaction(
        self,
        interaction: discord.Interaction,
        prompt: str,
        *,
        title: str,
        experts: tuple[Expert, ...] | None,
        command: str,
    ) -> None:
        """A slash command's answer: admission (refusal: private reply), ``defer()`` at once, then stream."""
        with self.admission(interaction.user.id) as refusal:
            if refusal is not None:
                await send_ephemeral(interaction, refusal)
                return
            await interaction.response.defer(thinking=True)
            session_id = await self._session_for(interaction)
            in_thread = isinstance(interaction.channel, discord.Thread)
            await self.respond(
                self.request(prompt, experts, session_id, interaction.user.id),
                InteractionSink(interaction, self.host.clock),
                Where(interaction.user.id, interaction.guild_id, interaction.channel_id, command),
                title=title,
                thread_button=not in_thread,
            )

    async def answer_follow_up(self, message: discord.Message, session_id: str) -> None:
        """A message in a follow-up thread, answered as a reply in the thread's session."""
        with self.admission(message.author.id) as refusal:
            if refusal is not None:
                await message.reply(refusal, mention_author=False, allowed_mentions=NO_MENTIONS)
                return
            guild_id = message.guild.id if message.guild else None
            await self.respond(
                self.request(message.content.strip(), None, session_id, message.author.id),
                ChannelSink(message.channel, reply_to=message),
                Where(message.author.id, guild_id, message.channel.id, "thread"),
                title=message.content.strip(),
                thread_button=False,
            )

    async def respond(
        self, request: AnswerRequest, sink: AnswerSink, where: Where, *, title: str, thread_button: bool
    ) -> Outcome:
        """Generate into ``sink``, then remember the answer and store it in the background."""
        view = AnswerView.rendered(thread_button=thread_button)
        outcome = await run_answer(self.host.engine, request, sink, self.policy(), view=view, title=title)
        if outcome.answer is None or outcome.message is None:
            return outcome
        record = AnswerRecord(str(outcome.message.id), request.session_id, title, where.user_id)
        self.records[outcome.message.id] = record
        store = self.host.store
        if store is not None:
            # In the background: a slow database must not hold the user's slot or the reply.
            answer = outcome.answer
            write = store.answers.record(
                record.answer_id,
                where.guild_id,
                where.channel_id,
                where.user_id,
                where.command,
                title,
                answer.text,
                [e.value for e in answer.experts],
                [c.label() for c in answer.citations],
                latency_ms=answer.timings_ms.get("total"),
            )
            self.host.background.spawn(write, name=f"store-answer-{record.answer_id}")
        return outcome

    async def _session_for(self, interaction: discord.Interaction) -> str | None:
        """The engine session: the thread's in a follow-up thread, else the answer message's id."""
        if isinstance(interaction.channel, discord.Thread):
            session = self.session_for(interaction.channel)
            if session is not None:
                return session
        try:
            return str((await interaction.original_response()).id)
        except discord.HTTPException:
            return f"interaction-{interaction.id}"

    def forget_user(self, user_id: int) -> None:
        """Drop the remembered answers of this user (``/forgetme``), leaving the others' recency as it was."""
        peek = Cache.__getitem__  # reads without refreshing the LRU order (LRUCache.__getitem__ does)
        for key in [k for k in list(self.records) if peek(self.records, k).user_id == user_id]:
            del self.records[key]

    # ---------------------------------------------------------------------------------- threads

    def register_thread(self, thread_id: int, session_id: str) -> None:
        self.sessions[thread_id] = session_id

    def session_for(self, thread: discord.Thread) -> str | None:
        """The session a thread continues, or None when the bot did not open it."""
        session = self.sessions.get(thread.id)
        me = self.host.user
        if session is None and me is not None and thread.owner_id == me.id:
            session = str(thread.id)  # ours, opened before a restart
            self.register_thread(thread.id, session)
        return session

    async def end_thread(self, thread_id: int, *, forget: bool) -> None:
        """End the thread's engine session (archived: kept as ours; deleted: forgotten too)."""
        session = self.sessions.pop(thread_id, None) if forget else self.sessions.get(thread_id)
        if session is None:
            return
        try:
            await self.host.engine.end_session(session)
        except EngineError as exc:  # the engine's TTL ends it anyway
            log.warning("could not end session %s: %s", session, exc)

    async def open_thread(self, interaction: discord.Interaction) -> None:
        """The answer's "Open thread" button: a thread on the answer message, continuing its session."""
        if not self.threads_enabled:
            await send_ephemeral(interaction, "Follow-up threads are not available right now.")
            return
        message = interaction.message
        if message is None or not isinstance(interaction.channel, discord.TextChannel):
            await send_ephemeral(
                interaction, "Threads can be opened from answers in a server text channel only."
            )
            return
        if message.id in self.sessions:
            await send_ephemeral(interaction, f"This answer already has a thread: <#{message.id}>")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        record = self.records.get(message.id)
        title = record.question if record else (message.embeds[0].title if message.embeds else None)
        name = formatting.truncate(" ".join((title or "Follow-up").split()), limits.THREAD_NAME_LIMIT)
        try:
            thread = await message.create_thread(name=name, auto_archive_duration=1440)
        except discord.HTTPException as exc:
            if exc.code == THREAD_ALREADY_CREATED:
                await send_ephemeral(interaction, f"This answer already has a thread: <#{message.id}>")
            else:
                log.warning("could not open a thread on %s: %s", message.id, exc)
                await send_ephemeral(interaction, "I couldn't open a thread here (missing permission?).")
            return
        session = record.session_id if record and record.session_id else str(thread.id)
        self.register_thread(thread.id, session)
        await thread.send(INTRO, allowed_mentions=NO_MENTIONS)
        await send_ephemeral(interaction, f"Thread opened: {thread.mention}")
